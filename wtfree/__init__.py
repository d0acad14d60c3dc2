"""wtfree: deep learning without weight transport, for any Flax model.

The public surface, in the order a user meets it::

  model = wtfree.convert(MyModel(), "kp")          # any linen model; its layers learn by the rule
  variables = model.init(rng, x)                   # {"params", "feedback", ...}
  tx = wtfree.optimizer(optax.adamw(1e-3), variables)   # B frozen, with W, or by its loss
  state = wtfree.init_train_state(variables, tx)
  train_step = jax.jit(wtfree.make_train_step(model, tx, loss_fn))
  state, measurements = train_step(state, batch, rng)

``wtfree.mirror_step`` and ``wtfree.alignment_loss`` are the weight mirror's and the alignment
rules' pieces as plain functions; ``wtfree.nnx`` does the same for NNX models. See
docs/library.md.
"""

from wtfree import linen, nnx
from wtfree.learn import (
    Alignment,
    Mirror,
    alignment_loss,
    init_train_state,
    make_train_step,
    mirror_step,
    optimizer,
)
from wtfree.linen import Converted, Options, convert

__all__ = [
    "Alignment",
    "Converted",
    "Mirror",
    "Options",
    "alignment_loss",
    "convert",
    "init_train_state",
    "linen",
    "make_train_step",
    "mirror_step",
    "nnx",
    "optimizer",
]
