"""Optax chains for W and B: B frozen, or (Kolen-Pollack) moved exactly as W is."""

from typing import Any

import jax
import optax
from flax import traverse_util

TRAIN = "train"
FROZEN = "frozen"
ALIGN = "align"  # B moved by the gradient of its alignment loss: W's chain without weight decay
# The leaves, beside a B's name, that mark it in `trained_feedback` (wtfree.layers sows them at
# init): TRAIN (Kolen-Pollack: B gets W's gradient) or ALIGN. Names of their own, not B's: under
# nnx.bridge every collection of a module shares one namespace.
BY_GRADIENT = "by_gradient"
BY_ALIGNMENT_LOSS = "by_alignment_loss"


def make_schedule(
    name: str,
    learning_rate: float,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    boundaries: tuple[float, ...] = (),
    decay_factor: float = 0.1,
) -> optax.Schedule:
    """Returns a learning-rate schedule.

    Args:
      name: ``constant``, ``cosine`` (to 0 at ``total_steps``) or ``step`` (times
        ``decay_factor`` at each fraction of ``total_steps`` in ``boundaries``, as ResNet's
        epochs 30/60/80 of 90).
      learning_rate: the peak rate.
      total_steps: the run's length.
      warmup_steps: linear warm-up from 0 first.
      boundaries: for ``step``, fractions of ``total_steps``.
      decay_factor: for ``step``.
    """
    if name == "constant":
        main = optax.constant_schedule(learning_rate)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(learning_rate, max(1, total_steps - warmup_steps))
    elif name == "step":
        steps = {int(b * total_steps) - warmup_steps: decay_factor for b in boundaries}
        main = optax.piecewise_constant_schedule(learning_rate, steps)
    else:
        raise ValueError(f"unknown schedule {name!r}; known: constant, cosine, step")
    if warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


# The leaf names of the weights weight decay applies to: W ("kernel", as every Flax linear layer
# names it) and a trained B ("feedback_kernel", layers.FEEDBACK_KERNEL). Biases,
# normalization scales, a ViT's class token and position embeddings are not decayed, whatever
# their rank.
DECAYED = ("kernel", "feedback_kernel")


def decay_mask(tree: Any) -> Any:
    """True at the leaves weight decay applies to: the kernels, W and B (``DECAYED``)."""

    def decayed(path, leaf) -> bool:
        del leaf
        last = path[-1] if path else None
        return getattr(last, "key", None) in DECAYED

    return jax.tree_util.tree_map_with_path(decayed, tree)


def rank_decay_mask(tree: Any) -> Any:
    """True at every leaf of rank 2 or more: the mask before ``decay_mask`` (commit db475b5).
    It decays the same leaves as ``decay_mask`` in every wtfree model but the ViT, whose
    attention biases (2-D per head), class token and position embeddings it decays too."""
    return jax.tree.map(lambda x: x.ndim > 1, tree)


# ``config.optimizer.weight_decay_mask``: which leaves weight decay applies to.
DECAY_MASKS = {"kernels": decay_mask, "rank": rank_decay_mask}


def make_optimizer(
    learning_rate: float | optax.Schedule,
    trained_feedback: Any,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    alignment_scale: float = 1.0,
    alignment_momentum: float | None = None,
    weight_decay_mask: str = "kernels",
) -> optax.GradientTransformation:
    r"""SGD with weight decay for W, the same for trained B, nothing for fixed B.

    The transform acts on ``{"params": ..., "feedback": ...}``. Every parameter gets

    .. math::
      u = g + \lambda W \;(\text{kernels only: } \texttt{decay\_mask}), \qquad
      m \leftarrow \mu m + u, \qquad W \leftarrow W - \eta_t m

    (Nesterov optional). A B marked in ``trained_feedback`` (Kolen-Pollack) goes through the
    very same transform: same :math:`\eta_t`, :math:`\mu`, :math:`\lambda`. Since KP gives B
    W's gradient, plain SGD then shrinks their difference by :math:`(1 - \eta\lambda)` a step.
    A B marked by a ``by_alignment_loss`` leaf (the alignment rules sa, aa, ia, wm_reg, whose
    B gets the gradient of an alignment loss and nothing from the task loss) goes through the
    same SGD with the same schedule and momentum but no weight decay: those losses carry their
    own decay primitive (:math:`\alpha(\|W\|^2 + \|B\|^2)`, gradient :math:`2\alpha B`) with the
    authors' coefficient, and the optimizer's decay on top would count it twice and move the
    loss's minimum (SA's :math:`B^* = \tfrac{\beta}{2\alpha}W` would become
    :math:`\tfrac{\beta}{2\alpha + \lambda}W`), and with its own step size
    :math:`s\,\eta_t` (``alignment_scale`` s times W's schedule): the alignment losses'
    coefficients set where B's minimum lies, s how fast B gets there (SA's B relaxes by
    :math:`2\alpha s\eta_t/(1-\mu)` a step). Every other B gets no update from the optimizer
    (fixed, or moved by the mirror step).

    Args:
      learning_rate: :math:`\eta`, or a schedule.
      trained_feedback: a nested dict whose leaves' paths mark the B the optimizer moves (as
        ``wtfree.layers`` sows them at init under ``trained_feedback``; only the paths matter,
        so ``jax.eval_shape`` of the init gives it): a leaf ``by_gradient`` beside B's
        ``feedback_kernel`` marks a B trained with W, ``by_alignment_loss`` one trained by its
        alignment loss. Every other B is left alone.
      momentum: :math:`\mu`; 0 for plain SGD.
      nesterov: Nesterov momentum.
      weight_decay: :math:`\lambda`.
      alignment_scale: s, the alignment-loss B's step size over W's; 1 moves them alike.
      alignment_momentum: the alignment-loss B's momentum; None: :math:`\mu`, W's. Heavy ball
        caps how fast B can follow its minimum: a quadratic of curvature h relaxes at best by
        :math:`1-\sqrt{\mu}` a step (critical damping, :math:`s\eta h = (1-\sqrt\mu)^2`), so
        at :math:`\mu = 0.9` B lags a moving minimum by 20 steps or more; without momentum
        :math:`s\eta h = 1` puts B on it in one step (the authors' code has an
        ``alignment_optimizer`` of its own for B).
      weight_decay_mask: the leaves :math:`\lambda` applies to (``DECAY_MASKS``):
        ``kernels`` (:func:`decay_mask`) or ``rank`` (:func:`rank_decay_mask`, the mask runs
        recorded before it kept).

    Returns:
      An optax transform for ``{"params": ..., "feedback": ...}``.

    References:
      Akrout, Wilson, Humphreys, Lillicrap & Tweed, *Deep Learning without Weight Transport*,
      NeurIPS 2019 (matched weight decay for W and B).
    """
    train = optax.chain(
        optax.add_decayed_weights(weight_decay, mask=DECAY_MASKS[weight_decay_mask]),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
    )

    def align_schedule(step):
        return alignment_scale * learning_rate(step)

    # A constant rate stays a number, so the optimizer state keeps its structure.
    align_rate = align_schedule if callable(learning_rate) else alignment_scale * learning_rate
    align_momentum = momentum if alignment_momentum is None else alignment_momentum
    align = optax.sgd(align_rate, momentum=align_momentum or None, nesterov=nesterov)

    flags = traverse_util.flatten_dict(dict(trained_feedback or {}))

    def label(path):
        if (*path[:-1], BY_GRADIENT) in flags:
            return TRAIN
        if (*path[:-1], BY_ALIGNMENT_LOSS) in flags:
            return ALIGN
        return FROZEN

    def labels(variables):
        feedback = traverse_util.flatten_dict(dict(variables.get("feedback", {})))
        feedback_labels = {k: label(k) for k in feedback}
        return {
            "params": jax.tree.map(lambda _: TRAIN, variables["params"]),
            "feedback": traverse_util.unflatten_dict(feedback_labels),
        }

    return optax.partition({TRAIN: train, ALIGN: align, FROZEN: optax.set_to_zero()}, labels)


def matched_decay_gap(
    learning_rate: float | optax.Schedule,
    steps: int,
    weight_decay: float,
    *,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> float:
    r"""The factor by which Kolen-Pollack's matched decay shrinks :math:`B - W` in ``steps`` steps.

    W and B receive the same gradient, so their difference :math:`D = B - W` sees only the
    decay: :math:`g_t = \lambda D_t`, :math:`v_{t+1} = g_t + \mu v_t`, and
    :math:`D_{t+1} = D_t - \eta_t v_{t+1}` (Nesterov: :math:`- \eta_t (g_t + \mu v_{t+1})`), the
    chain of :func:`make_optimizer`. The recursion is linear and the same for every entry, so
    :math:`D_T = c_T D_0`, whatever the data. Without momentum and at a constant rate,
    :math:`c_T = (1 - \eta\lambda)^T`; with momentum :math:`\mu`, roughly
    :math:`\exp(-\lambda \sum_t \eta_t / (1 - \mu))`.

    Args:
      learning_rate: :math:`\eta`, a float or an optax schedule of the step (counted from 0).
      steps: :math:`T`.
      weight_decay: :math:`\lambda`.
      momentum: :math:`\mu` (0: plain SGD).
      nesterov: whether the momentum is Nesterov's.

    Returns:
      :math:`c_T = \|B_T - W_T\| / \|B_0 - W_0\|` for every layer whose B is trained by KP.

    References:
      Akrout, Wilson, Humphreys, Lillicrap & Tweed, *Deep Learning without Weight Transport*,
      NeurIPS 2019.
    """
    rate = learning_rate if callable(learning_rate) else (lambda _: learning_rate)
    gap, velocity = 1.0, 0.0
    for t in range(steps):
        grad = weight_decay * gap
        velocity = grad + momentum * velocity
        gap -= float(rate(t)) * (grad + momentum * velocity if nesterov else velocity)
    return gap
