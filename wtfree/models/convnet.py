"""A LeNet-5-style convnet whose conv and dense layers learn by a rule."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from wtfree import layers, rules
from wtfree.models.mlp import get_activation

# Both convs are followed by max pooling of this window and stride.
POOL = (2, 2)


def prepare_input(model: "Model", x: jax.Array) -> jax.Array:
    """The model's fixed input transform: resize to ``input_size`` (bilinear), standardize.

    A function of the model's fields, so that code computing the layers itself (the settling
    rules' chain) transforms the input as the model does.
    """
    if model.input_size is not None and x.shape[1:3] != (model.input_size,) * 2:
        size = (x.shape[0], model.input_size, model.input_size, x.shape[3])
        x = jax.image.resize(x, size, method="bilinear")
    if (model.input_mean, model.input_std) != (0.0, 1.0):
        x = (x - model.input_mean) / model.input_std
    return x


class Model(nn.Module):
    """LeNet-5: conv 5x5 6, max pool 2x2, conv 5x5 16, max pool 2x2, dense 120, dense 84, logits.

    With "VALID" convs a 32x32 input (CIFAR) reaches the dense layers as 5x5x16 as in LeCun et
    al. 1998; a 28x28 one (MNIST) as 4x4x16. The dense layers take whatever size arrives.

    Attributes:
      num_classes: outputs.
      rule: the learning rule of every layer but the last.
      output_rule: the rule of the last layer (None: ``rule``).
      activation: ``relu``, ``sigmoid`` or ``tanh``.
      padding: of both convs, "VALID" or "SAME".
      kernel_scale, kernel_mode, kernel_distribution: the variance-scaling init of W and B
        (He's, for ReLU, by default; Glorot's uniform, biotorch's "xavier", is 1.0, "fan_avg",
        "uniform").
      input_size: resize the images (bilinear) to input_size x input_size first; None: as
        they come. biotorch's LeNet-MNIST takes MNIST resized to 32x32.
      input_mean, input_std: then standardize the pixels, (x - mean) / std (the data pipeline
        gives pixel / 255); biotorch uses MNIST's 0.1307 and 0.3081.
      mirror_noise, alignment_input: the mirror noise's distribution and what the alignment
        losses read (``layers.Dense``'s; ``wtfree.convert``'s options of the same names).
    """

    num_classes: int
    rule: str = "bp"
    output_rule: str | None = None
    activation: str = "relu"
    padding: str = "VALID"
    kernel_scale: float = 2.0
    kernel_mode: str = "fan_in"
    kernel_distribution: str = "truncated_normal"
    input_size: int | None = None
    input_mean: float = 0.0
    input_std: float = 1.0
    mirror_noise: str = "normal"
    alignment_input: str = "activations"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or batch norm
        act = get_activation(self.activation)
        direct = rules.get(self.rule).direct
        init = dict(
            kernel_scale=self.kernel_scale,
            kernel_mode=self.kernel_mode,
            kernel_distribution=self.kernel_distribution,
            dtype=self.dtype,
            mirror_noise=self.mirror_noise,
            alignment_input=self.alignment_input,
        )
        carrier = jnp.zeros((x.shape[0], self.num_classes), self.dtype or jnp.float32)
        hidden = 0
        x = prepare_input(self, x)

        def activate(x, carrier):
            nonlocal hidden
            x = act(x)
            if direct:
                x, carrier = layers.DirectFeedback(name=f"direct_{hidden}")(x, carrier)
            hidden += 1
            return x, carrier

        for i, features in enumerate((6, 16)):
            x = layers.Conv(
                features=features,
                kernel_size=(5, 5),
                padding=self.padding,
                rule=self.rule,
                name=f"conv_{i}",
                input_layer=i == 0,
                **init,
            )(x)
            x, carrier = activate(x, carrier)
            x = nn.max_pool(x, POOL, strides=POOL)
        x = x.reshape(x.shape[0], -1)
        for i, features in enumerate((120, 84)):
            x = layers.Dense(features=features, rule=self.rule, name=f"dense_{i}", **init)(x)
            x, carrier = activate(x, carrier)
        x = layers.Dense(
            features=self.num_classes, rule=self.output_rule or self.rule, name="output", **init
        )(x)
        if direct:
            x = rules.direct_feedback_output(x, carrier)
        return x
