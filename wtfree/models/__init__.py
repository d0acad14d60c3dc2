"""Models by name: each module exports `Model`."""

from wtfree.models import mlp

MODELS = {"mlp": mlp.Model}


def get(name: str):
    """Returns the model class called ``name``; raises ValueError naming the known models."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]
