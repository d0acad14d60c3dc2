"""Models by name: each module exports `Model`; ResNet presets fix its structural fields.

Every entry is called as ``MODELS[name](num_classes=..., rule=..., output_rule=..., dtype=...,
**model_kwargs)``. wtfree's own models take the rule as a field; a model written with stock
Flax layers only (``STOCK``) is built without it and then given the rule from outside.
"""

import functools

import flax.linen as nn

from wtfree.models import convnet, mlp, resnet, vit

# Models that know nothing of learning rules: plain linen modules, as a user would write them.
STOCK = {"vit": vit.Model}


def check_rule(name: str, rule: str, output_rule: str | None = None) -> None:
    """Raises ValueError in one line if the model called ``name`` cannot learn by ``rule``.

    wtfree's own models take every rule; a stock model (``STOCK``) only bp for now: the other
    rules reach stock layers through ``wtfree.convert``, not yet on this branch.
    """
    if name not in STOCK:
        return
    for key, value in (("rule", rule), ("output_rule", output_rule)):
        if value not in (None, "", "bp"):
            raise ValueError(
                f"{key}={value!r} with model={name!r} (stock Flax layers); "
                "allowed: bp (other rules need wtfree.convert, not yet on this branch)"
            )


def build_stock(
    model_cls: type[nn.Module],
    *,
    num_classes: int,
    rule: str = "bp",
    output_rule: str | None = None,
    **kwargs,
) -> nn.Module:
    """``model_cls(num_classes, **kwargs)``, computing with ``rule``'s backward pass.

    Raises:
      ValueError: for any rule but bp, until ``wtfree.convert`` exists to apply it.
    """
    (name,) = (name for name, cls in STOCK.items() if cls is model_cls)
    check_rule(name, rule, output_rule)
    return model_cls(num_classes=num_classes, **kwargs)


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
