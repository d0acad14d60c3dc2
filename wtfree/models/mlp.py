"""A multilayer perceptron whose layers learn by a rule (the seed's 784-500-10 network)."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wtfree import layers, rules

ACTIVATIONS = {
    "sigmoid": nn.sigmoid,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    # A linear network (Lillicrap et al. 2016's 30-20-10 task); two names for the same thing.
    "identity": lambda x: x,
    "linear": lambda x: x,
}


def get_activation(name: str):
    """Returns the activation called ``name``; raises ValueError naming the known ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


class Model(nn.Module):
    """An MLP: flatten, hidden Dense layers with an activation, a Dense output of logits.

    Attributes:
      num_classes: outputs.
      widths: hidden layer widths.
      rule: the learning rule of every layer but the last.
      output_rule: the rule of the last layer (None: ``rule``). Some papers keep it ``bp``.
      activation: ``sigmoid``, ``relu``, ``tanh`` or ``identity`` (= ``linear``).
      kernel_scale, kernel_mode, kernel_distribution: the variance-scaling init of W and B.
      feedback_scale: a stored B is drawn like W, then multiplied by this.
      random_bias: draw biases like W (the seed does) instead of zeros.
      mirror_noise, alignment_input: the mirror noise's distribution and what the alignment
        losses read (``layers.Dense``'s; ``wtfree.convert``'s options of the same names).
    """

    num_classes: int
    widths: Sequence[int] = (500,)
    rule: str = "bp"
    output_rule: str | None = None
    activation: str = "sigmoid"
    kernel_scale: float = 1.0
    kernel_mode: str = "fan_in"
    kernel_distribution: str = "truncated_normal"
    feedback_scale: float = 1.0
    random_bias: bool = False
    mirror_noise: str = "normal"
    alignment_input: str = "activations"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or batch norm
        act = get_activation(self.activation)
        direct = rules.get(self.rule).direct
        x = x.reshape(x.shape[0], -1)
        carrier = jnp.zeros((x.shape[0], self.num_classes), self.dtype or jnp.float32)
        sizes = [*self.widths, self.num_classes]
        for i, width in enumerate(sizes):
            last = i == len(sizes) - 1
            rule = (self.output_rule or self.rule) if last else self.rule
            if self.random_bias:
                std = layers.init_std(self.kernel_scale, self.kernel_mode, (x.shape[-1], width))
                bias_init = nn.initializers.normal(std)
            else:
                bias_init = nn.initializers.zeros_init()
            x = layers.Dense(
                features=width,
                rule=rule,
                kernel_scale=self.kernel_scale,
                kernel_mode=self.kernel_mode,
                kernel_distribution=self.kernel_distribution,
                feedback_scale=self.feedback_scale,
                bias_init=bias_init,
                dtype=self.dtype,
                name="output" if last else f"hidden_{i}",
                input_layer=i == 0,
                mirror_noise=self.mirror_noise,
                alignment_input=self.alignment_input,
            )(x)
            if not last:
                x = act(x)
                if direct:
                    x, carrier = layers.DirectFeedback(name=f"direct_{i}")(x, carrier)
        if direct:
            x = rules.direct_feedback_output(x, carrier)
        return x
