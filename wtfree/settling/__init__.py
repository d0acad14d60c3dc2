"""Settling rules: credit assignment by letting activities settle over inner steps.

Each rule is ``rule(model, params, feedback, x, loss_fn, config, *, state=None, rng=None)
-> Result`` (``result.Result``): pure JAX, jittable with the config static, over a layered
model (``network.Layer``: a linear op f(x, W) and an activation), or for ar and pc over a
chain of blocks (``blocks.Block``: any node, a residual block among them). The error goes down
through any ``wtfree.rules`` matrix (``config.feedback``: bp's W, fa's B, usf's sign(W)...).
"""

import dataclasses
from collections.abc import Callable

from wtfree.settling import blocks
from wtfree.settling.ar import ARConfig, activation_relaxation
from wtfree.settling.blocks import Block
from wtfree.settling.di import (
    DIConfig,
    check_stable,
    dynamic_inversion,
    neg_transpose,
)
from wtfree.settling.network import (
    Layer,
    Model,
    backward_errors,
    dense,
    flatten_dense,
    forward,
    identity,
    init_params,
    make_conv,
)
from wtfree.settling.pal import PALConfig, phaseless_alignment
from wtfree.settling.pc import PCConfig, init_error_weights, predictive_coding
from wtfree.settling.relax import settle
from wtfree.settling.result import Result


@dataclasses.dataclass(frozen=True)
class SettlingRule:
    """A settling rule: its function and its config class (whose defaults are the authors')."""

    name: str
    apply: Callable[..., Result]
    config: type


RULES: dict[str, SettlingRule] = {
    r.name: r
    for r in [
        SettlingRule("ar", activation_relaxation, ARConfig),
        SettlingRule("pc", predictive_coding, PCConfig),
        SettlingRule("di", dynamic_inversion, DIConfig),
        SettlingRule("pal", phaseless_alignment, PALConfig),
    ]
}


def get(name: str) -> SettlingRule:
    """The settling rule called ``name``; raises ValueError naming the known ones otherwise."""
    if name not in RULES:
        raise ValueError(f"unknown settling rule {name!r}; known: {', '.join(sorted(RULES))}")
    return RULES[name]


__all__ = [
    "RULES",
    "ARConfig",
    "Block",
    "blocks",
    "DIConfig",
    "Layer",
    "Model",
    "PALConfig",
    "PCConfig",
    "Result",
    "SettlingRule",
    "activation_relaxation",
    "backward_errors",
    "check_stable",
    "dense",
    "dynamic_inversion",
    "flatten_dense",
    "forward",
    "get",
    "identity",
    "init_error_weights",
    "init_params",
    "make_conv",
    "neg_transpose",
    "phaseless_alignment",
    "predictive_coding",
    "settle",
]
