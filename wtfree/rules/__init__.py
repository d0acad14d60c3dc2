"""The registry of learning rules: name -> Rule, and `get(name)` with a clear error."""

import dataclasses
import math
from collections.abc import Callable

import jax.numpy as jnp

from wtfree.rules._feedback import LinearFn, fan_in_and_positions, feedback_linear
from wtfree.rules.alignment import ALIGNMENTS, Alignment, alignment_feedback
from wtfree.rules.backprop import backprop
from wtfree.rules.direct_feedback import (
    direct_feedback,
    direct_feedback_input,
    direct_feedback_output,
)
from wtfree.rules.feedback_alignment import feedback_alignment
from wtfree.rules.kolen_pollack import kolen_pollack
from wtfree.rules.shallow import shallow
from wtfree.rules.sign_symmetry import (
    batchwise_random_magnitude_sign,
    fixed_random_magnitude_sign,
    uniform_sign,
)
from wtfree.rules.weight_mirror import NOISES as MIRROR_NOISES
from wtfree.rules.weight_mirror import (
    apply_hebbian,
    draw_noise,
    hebbian,
    mirror_batch_size,
    mirror_error,
    mirror_update,
    weight_mirror,
)

# What a rule does with its feedback weights B:
NONE = "none"  # stores no B (bp; sign rules derive it from W, given the layer's init std)
FIXED = "fixed"  # B drawn once, never trained (fa, frsf, dfa)
GRADIENT = "gradient"  # B gets W's gradient and moves with W in the optimizer (kp)
MIRROR = "mirror"  # B trained by the weight-mirror step (wm)
LOSS = "loss"  # B trained by the optimizer on its alignment loss (sa, aa, ia, wm_reg)
SETTLING = "settling"  # the error settles over inner steps; B by the rule (ar, pc, di, pal)


@dataclasses.dataclass(frozen=True)
class Rule:
    """A learning rule for linear layers.

    Attributes:
      name: the registry name.
      apply: ``apply(f, x, w, b, rng) -> f(x, w)`` with the rule's backward pass. ``b`` is the
        stored feedback weights, or for rules with ``feedback == NONE`` the layer's init std.
      feedback: what B is and how it learns: NONE, FIXED, GRADIENT, MIRROR, LOSS or SETTLING.
      direct: the error reaches hidden layers straight from the output (DFA): the layers train
        locally and the model routes the error with ``direct_feedback``.
      block_wise: with ``direct``, only the output of each residual block (and of the stem)
        gets the error straight from the output; the layers inside a block backpropagate it
        from the block's output (module-wise DFA, Han et al.). Models without blocks treat
        every layer as its own block, so there it is ``dfa``.
      needs_rng: the backward pass draws random numbers (brSF).
      matrix: ``matrix(w, b) -> B``, the matrix (shaped like W) the error goes down through,
        for measuring its angle to W; None for DFA, whose B is not shaped like W. For brSF, the
        expectation of B.
      alignment: for LOSS rules, the alignment loss B learns by (``rules.alignment``).
    """

    name: str
    apply: Callable
    feedback: str
    matrix: Callable | None
    direct: bool = False
    block_wise: bool = False
    needs_rng: bool = False
    alignment: Alignment | None = None

    @property
    def stores_feedback(self) -> bool:
        return self.feedback != NONE


def _stored(w, b):
    del w
    return b


RULES: dict[str, Rule] = {
    r.name: r
    for r in [
        Rule("bp", backprop, NONE, lambda w, b: w),
        Rule("fa", feedback_alignment, FIXED, _stored),
        Rule("dfa", backprop, FIXED, None, direct=True),
        # Han, Park, Ryu & Yoo 2020 (arXiv): DFA between modules, backprop inside them.
        Rule("dfa_block", backprop, FIXED, None, direct=True, block_wise=True),
        Rule("usf", uniform_sign, NONE, lambda w, b: b * jnp.sign(w)),
        Rule("frsf", fixed_random_magnitude_sign, FIXED, lambda w, b: jnp.abs(b) * jnp.sign(w)),
        Rule(
            "brsf",
            batchwise_random_magnitude_sign,
            NONE,
            lambda w, b: b * math.sqrt(2 / math.pi) * jnp.sign(w),
            needs_rng=True,
        ),
        Rule("kp", kolen_pollack, GRADIENT, _stored),
        Rule("wm", weight_mirror, MIRROR, _stored),
        # Sends no error down, so there is no matrix to compare with W.
        Rule("shallow", shallow, NONE, None),
        *(
            Rule(name, alignment_feedback, LOSS, _stored, alignment=a)
            for name, a in ALIGNMENTS.items()
        ),
        # The settling rules (wtfree.settling) have a train step of their own
        # (wtfree.kinds.settling): their layers compute forward passes only. The matrix the
        # error goes down through is config.settling.feedback's, measured by that step.
        *(Rule(name, backprop, SETTLING, None) for name in ("ar", "pc", "di", "pal")),
    ]
}
ALIASES = {"ss": "usf"}


def names() -> list[str]:
    """The known rule names, aliases included."""
    return sorted([*RULES, *ALIASES])


def get(name: str) -> Rule:
    """Returns the rule called ``name``; raises ValueError naming the known rules otherwise."""
    key = ALIASES.get(name, name)
    if key not in RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(names())}")
    return RULES[key]


def feedback_kinds(rule: str, output_rule: str | None = None) -> set[str]:
    """How the B of a model's layers learn (``Rule.feedback``) under ``rule``, with
    ``output_rule`` (default ``rule``) at the output layer."""
    return {get(name).feedback for name in (rule, output_rule or rule)}


__all__ = [
    "FIXED",
    "GRADIENT",
    "LOSS",
    "MIRROR",
    "MIRROR_NOISES",
    "NONE",
    "RULES",
    "SETTLING",
    "Alignment",
    "LinearFn",
    "fan_in_and_positions",
    "Rule",
    "apply_hebbian",
    "direct_feedback",
    "direct_feedback_input",
    "direct_feedback_output",
    "draw_noise",
    "feedback_linear",
    "feedback_kinds",
    "get",
    "hebbian",
    "mirror_batch_size",
    "mirror_error",
    "mirror_update",
    "names",
]
