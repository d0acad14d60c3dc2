"""Models by name: each module exports `Model`; ResNet presets fix its structural fields."""

from wtfree.models import convnet, mlp, resnet

MODELS = {
    "mlp": mlp.Model,
    "lenet": convnet.Model,
    "resnet8": resnet.ResNet8,
    "resnet20": resnet.ResNet20,
    "resnet56": resnet.ResNet56,
    "resnet18": resnet.ResNet18,
    "resnet50": resnet.ResNet50,
}


def get(name: str):
    """Returns the model class called ``name``; raises ValueError naming the known models."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]
