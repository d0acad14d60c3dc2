"""The examples in examples/ run and learn (a few steps, on their synthetic data)."""

import importlib.util

import pytest
from etils import epath

EXAMPLES = epath.Path(__file__).parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, rule",
    [
        ("linen_own_model", "kp"),
        ("linen_own_model", "wm"),
        ("nnx_own_model", "fa"),
        ("nnx_own_model", "wm"),
        ("nnx_own_model", "sa"),
    ],
)
def test_example_learns(name, rule):
    # Four classes: chance is about 0.25.
    assert _load(name).main(rule, steps=60) > 0.6
