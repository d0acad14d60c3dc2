"""Losses, accuracy and alignment angles: pure, jittable functions of arrays."""

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

Array = jax.Array


def softmax_xent(logits: Array, labels: Array) -> Array:
    """Per-example softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def sigmoid_xent(logits: Array, labels: Array) -> Array:
    """Per-example sum over the outputs of the sigmoid cross-entropy with one-hot targets.

    The seed's loss: independent sigmoid output units, each against its one-hot target.
    """
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)


def squared_error(outputs: Array, targets: Array) -> Array:
    r"""Per-example squared error, averaged over the outputs:
    :math:`\frac{1}{K}\sum_k (y_k - y^*_k)^2`.

    For regression: ``targets`` are real vectors shaped like ``outputs``. The error it sends to
    the output units is :math:`\frac{2}{K}(y - y^*)`, i.e. Lillicrap et al.'s
    :math:`-e = y - y^*` up to the factor :math:`2/K`, which only rescales the learning rate.
    Integer class labels (one fewer axis) stand for their one-hot vectors (the settling rules'
    papers train MNIST on the squared error).
    """
    if targets.ndim == outputs.ndim - 1:
        targets = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    return jnp.mean(jnp.square(outputs - targets.astype(outputs.dtype)), axis=-1)


LOSSES = {
    "softmax_xent": softmax_xent,
    "sigmoid_xent": sigmoid_xent,
    "squared_error": squared_error,
}


def get_loss(name: str):
    """Returns the per-example loss called ``name``; raises ValueError naming the known ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def correct(logits: Array, labels: Array, k: int = 1) -> Array:
    """Per example, 1.0 where the label is among the top ``k`` logits."""
    if k == 1:
        return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    top = jax.lax.top_k(logits, k)[1]
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def normalized_squared_error(outputs: Array, targets: Array, mask: Array | None = None) -> Array:
    r"""The normalized squared error of a batch (NSE; Lillicrap et al. 2016, Fig. 1d):

    .. math::
      \mathrm{NSE} = \frac{\sum_i \|y_i - y^*_i\|^2}{\sum_i \|y^*_i\|^2},

    the squared error relative to that of always answering 0: 1 for a network whose outputs
    are ~0 (small initial weights), 0 for a perfect fit. ``mask`` (per example, 1 or 0) leaves
    padding out.
    """
    err = jnp.sum(jnp.square(outputs - targets.astype(outputs.dtype)), axis=-1)
    ref = jnp.sum(jnp.square(targets.astype(outputs.dtype)), axis=-1)
    if mask is not None:
        err, ref = err * mask, ref * mask
    return jnp.sum(err) / jnp.sum(ref)


def angle(a: Array, b: Array) -> Array:
    r"""The angle between two arrays taken as flat vectors, in degrees:
    :math:`\arccos(\langle a, b\rangle / \|a\|\|b\|)`."""
    a, b = a.ravel().astype(jnp.float32), b.ravel().astype(jnp.float32)
    cos = jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30)
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def layer_name(path: tuple[str, ...]) -> str:
    """A layer's name in measurement keys: its module path joined with '/'."""
    return "/".join(path)


def delta_angles(
    rule_deltas, bp_deltas, output_layers: tuple[str, ...] = ("output",)
) -> dict[str, Array]:
    """Per layer, the angle between the error the rule sends to a layer's output and backprop's.

    The network's output layer is left out: the error at the logits is the loss gradient under
    every rule, so its angle is 0 by construction and says nothing about the rule.

    Args:
      rule_deltas: gradients w.r.t. the ``perturbations`` collection under the rule.
      bp_deltas: the same under backprop, on the same batch and weights.
      output_layers: names of layers whose output is the network's (every wtfree model
        calls its last layer ``output``).

    Returns:
      ``{"align/delta_angle/<layer>": degrees}``.
    """
    rule_flat = traverse_util.flatten_dict(rule_deltas)
    bp_flat = traverse_util.flatten_dict(bp_deltas)
    return {
        f"align/delta_angle/{layer_name(path[:-1])}": angle(rule_flat[path], bp_flat[path])
        for path in rule_flat
        if layer_name(path[:-1]) not in output_layers
    }


def alignment(sown) -> dict[str, Array]:
    """Flattens what layers sow under ``alignment`` into measurement keys.

    Returns:
      ``{"align/weight_angle/<layer>": degrees, "align/norm_ratio/<layer>": ||B||/||W||,
      "align/weight_cosine/<layer>": cos(B, W)}``; the cosine is the alignment Song et al. 2021
      plot for the second layer of a two-layer network.
    """
    out = {
        f"align/{path[-1]}/{layer_name(path[:-1])}": value
        for path, value in traverse_util.flatten_dict(sown).items()
    }
    for key in [k for k in out if k.startswith("align/weight_angle/")]:
        out[key.replace("weight_angle", "weight_cosine", 1)] = jnp.cos(jnp.radians(out[key]))
    return out
