"""Dotted config keys ("mirror.batch_size") as the tests set and remove them."""

from typing import Any


def parent_and_name(tree, key: str) -> tuple[Any, str]:
    """The (Config)dict that holds the dotted ``key``, and the key's last part."""
    *path, name = key.split(".")
    for part in path:
        tree = tree[part]
    return tree, name


def override(config, overrides: dict[str, Any]):
    """``config`` with each dotted key set, keys the config does not have added."""
    with config.unlocked():
        for key, value in overrides.items():
            parent, name = parent_and_name(config, key)
            parent[name] = value
    return config
