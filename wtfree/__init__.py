"""wtfree: deep learning without weight transport, for any Flax model.

The public surface::

  model = wtfree.convert(MyModel(), "kp")   # any linen model; its layers learn by the rule
  variables = model.init(rng, x)            # {"params", "feedback", ...}

See docs/library.md.
"""

from wtfree.convert import Converted, Options, convert

__all__ = ["Converted", "Options", "convert"]
