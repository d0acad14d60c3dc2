"""Models by name: each module exports `Model`; ResNet presets fix its structural fields.

Every entry is called as ``MODELS[name](num_classes=..., rule=..., output_rule=..., dtype=...,
mirror_noise=..., alignment_input=..., **model_kwargs)``. wtfree's own models take the rule and
these options as fields; a model written with stock Flax layers only (``STOCK``) is built
without them and given them by ``wtfree.convert``.
"""

import dataclasses
import functools

import flax.linen as nn

from wtfree.linen import Options, convert
from wtfree.models import convnet, mlp, resnet, vit

# Models that know nothing of learning rules: plain linen modules, as a user would write them.
STOCK = {"vit": vit.Model}


def check_rule(name: str, rule: str, output_rule: str | None = None) -> None:
    """Raises ValueError in one line if the model called ``name`` cannot learn by ``rule``.

    wtfree's own models take every rule; a stock model (``STOCK``) every rule ``wtfree.convert``
    gives it (dfa included: train.py's step makes the first pass for the output error, as
    ``wtfree.make_train_step`` does), but not dfa_block: a converted model has no residual
    blocks to route the error between.
    """
    if name not in STOCK:
        return
    try:
        # outputs: the model's classes, which build_stock gives convert; any width checks here.
        Options(rule, output_rule=output_rule or None, outputs=1)
    except ValueError as e:
        raise ValueError(f"model={name!r} (stock Flax layers, through convert): {e}") from None


# ``wtfree.Options``' fields that ``build_stock`` passes to convert rather than to the model
# (``mirror_noise``, ``alignment_input``, ...: what ``kinds.Kind.convert_options`` gives).
_CONVERT_OPTIONS = frozenset(f.name for f in dataclasses.fields(Options)) - {"rule", "output_rule"}


def build_stock(
    model_cls: type[nn.Module],
    *,
    num_classes: int,
    rule: str = "bp",
    output_rule: str | None = None,
    **kwargs,
) -> nn.Module:
    """``model_cls(num_classes, **kwargs)``, computing with ``rule``'s backward pass: as it is
    under bp, else through ``wtfree.convert`` (a layer named ``output`` takes ``output_rule``;
    dfa's ``outputs`` is ``num_classes``). Keywords named as convert's options
    (``wtfree.Options``: ``mirror_noise``, ``alignment_input``, ...) go to convert, the others
    to ``model_cls``."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONVERT_OPTIONS}
    model = model_cls(num_classes=num_classes, **kwargs)
    if rule == "bp" and output_rule in (None, "", "bp"):
        return model
    options.setdefault("outputs", num_classes)  # dfa's B map the output error to each layer
    return convert(model, rule, output_rule=output_rule or None, **options)


MODELS = {
    "mlp": mlp.Model,
    "lenet": convnet.Model,
    "resnet8": resnet.ResNet8,
    "resnet20": resnet.ResNet20,
    "resnet56": resnet.ResNet56,
    "resnet18": resnet.ResNet18,
    "resnet50": resnet.ResNet50,
    **{name: functools.partial(build_stock, cls) for name, cls in STOCK.items()},
}


def get(name: str):
    """Returns the model class called ``name``; raises ValueError naming the known models."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]
