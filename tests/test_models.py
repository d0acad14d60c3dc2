"""Models: the standard parameter counts, where B lives, and the rule reaching every layer."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from wtfree import layers, models, rules
from wtfree.models import resnet

# Tiny models that still have every kind of layer: convs in blocks and projection shortcuts,
# bottleneck blocks behind the ImageNet stem, dense layers.
TINY = {
    "lenet": (lambda **kw: models.get("lenet")(num_classes=3, **kw), (2, 28, 28, 1)),
    "basic": (
        lambda **kw: resnet.Model(
            num_classes=3,
            stage_sizes=(1, 1),
            stem="cifar",
            width=4,
            shortcut="projection",
            **kw,
        ),
        (2, 8, 8, 3),
    ),
    "bottleneck": (
        lambda **kw: resnet.Model(
            num_classes=3, stage_sizes=(1,), block="bottleneck", width=4, **kw
        ),
        (2, 16, 16, 3),
    ),
}


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _init_shapes(model, x_shape):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(x_shape))


def _kernels(params) -> dict:
    flat = traverse_util.flatten_dict(params)
    return {path: leaf for path, leaf in flat.items() if path[-1] == "kernel"}


def _as_feedback(kernels: dict) -> dict:
    """W's paths (``<layer>/kernel``) as their B's (``<layer>/feedback_kernel``)."""
    return {(*path[:-1], layers.FEEDBACK_KERNEL): leaf for path, leaf in kernels.items()}


@pytest.mark.parametrize(
    "name,num_classes,size,expected",
    [
        ("resnet18", 1000, 224, 11_689_512),  # torchvision
        ("resnet50", 1000, 224, 25_557_032),  # torchvision
        ("resnet20", 10, 32, 269_722),  # He et al. 2016, Table 6: 0.27M
        ("resnet56", 10, 32, 853_018),  # He et al. 2016, Table 6: 0.85M
    ],
)
def test_bp_resnets_have_the_standard_parameter_counts(name, num_classes, size, expected):
    model = models.get(name)(num_classes=num_classes, rule="bp")
    variables = _init_shapes(model, (1, size, size, 3))
    assert layers.FEEDBACK not in variables
    assert _count(variables["params"]) == expected


def test_projection_shortcuts_add_two_1x1_convs_with_batch_norm_to_resnet20():
    """Option B instead of A at the two stage changes: 16->32 and 32->64 channels."""
    counts = {
        shortcut: _count(
            _init_shapes(models.get("resnet20")(num_classes=10, shortcut=shortcut), (1, 32, 32, 3))[
                "params"
            ]
        )
        for shortcut in ("pad", "projection")
    }
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert counts["projection"] - counts["pad"] == extra


def test_registry_names_the_known_models():
    for name in ("mlp", "lenet", "resnet20", "resnet56", "resnet18", "resnet50"):
        assert models.get(name)(num_classes=10).num_classes == 10
    with pytest.raises(ValueError, match="known models: lenet, mlp, resnet18"):
        models.get("resnet19")


def _dfa_shapes(name: str, model, x_shape) -> dict:
    """The expected B of every DirectFeedback, from the shapes of the layers' outputs: under
    per-layer dfa also every conv inside a block but the last (``direct_k`` in the block)."""
    c = model.num_classes
    if name == "lenet":  # 28x28: conv 24x24x6, conv 8x8x16, dense 120, dense 84
        sizes = [24 * 24 * 6, 8 * 8 * 16, 120, 84]
        return {(f"direct_{i}", "kernel"): (c, size) for i, size in enumerate(sizes)}

    per_layer = not rules.get(model.rule).block_wise

    def is_block(mdl, method_name):
        blocks = resnet.BasicBlock | resnet.BottleneckBlock
        return isinstance(mdl, blocks | layers.Conv) and method_name == "__call__"

    _, state = jax.eval_shape(
        lambda x: model.apply(
            model.init(jax.random.key(0), x), x, capture_intermediates=is_block, mutable=True
        ),
        jnp.zeros(x_shape),
    )
    captured = traverse_util.flatten_dict(state["intermediates"])
    shapes = {}
    last_conv = {"basic": "conv_1", "bottleneck": "conv_2"}[model.block]
    for path, value in captured.items():
        out = value[0][0] if isinstance(value[0], tuple) else value[0]  # (y, carrier) under dfa
        if len(path) == 2 and path[0].startswith("stage"):  # a block's output
            i, j = path[0].removeprefix("stage").split("_block")
            shapes[(f"direct_{i}_{j}", "kernel")] = (c, math.prod(out.shape[1:]))
        elif per_layer and len(path) == 3 and path[1].startswith("conv_") and path[1] != last_conv:
            k = path[1].removeprefix("conv_")
            shapes[(path[0], f"direct_{k}", "kernel")] = (c, math.prod(out.shape[1:]))
    stem = 8 * 8 * model.width if model.stem == "cifar" else 4 * 4 * model.width  # 16x16 /4
    shapes[("direct_init", "kernel")] = (c, stem)
    return shapes


@pytest.mark.parametrize("rule", sorted(rules.RULES))
@pytest.mark.parametrize("name", sorted(TINY))
def test_feedback_collection_holds_one_b_per_kernel_or_per_block(name, rule):
    make, x_shape = TINY[name]
    model = make(rule=rule)
    variables = _init_shapes(model, x_shape)
    feedback = traverse_util.flatten_dict(variables.get(layers.FEEDBACK, {}))
    kernels = _kernels(variables["params"])
    if rules.get(rule).direct:
        expected = _dfa_shapes(name, model, x_shape)
        assert {path: b.shape for path, b in feedback.items()} == expected
    elif rules.get(rule).stores_feedback:
        assert {path: b.shape for path, b in feedback.items()} == {
            path: w.shape for path, w in _as_feedback(kernels).items()
        }
    else:
        assert not feedback


def test_resnet20_under_dfa_block_has_a_b_after_the_stem_and_each_of_its_nine_blocks():
    model = models.get("resnet20")(num_classes=10, rule="dfa_block")
    feedback = _init_shapes(model, (1, 32, 32, 3))[layers.FEEDBACK]
    stage_sizes = [32 * 32 * 16, 16 * 16 * 32, 8 * 8 * 64]
    expected = {"direct_init": (10, 32 * 32 * 16)} | {
        f"direct_{i}_{j}": (10, stage_sizes[i]) for i in range(3) for j in range(3)
    }
    assert {k: v["kernel"].shape for k, v in feedback.items()} == expected


def test_resnet20_under_dfa_has_a_b_for_each_of_its_nineteen_hidden_convs():
    model = models.get("resnet20")(num_classes=10, rule="dfa")
    feedback = traverse_util.flatten_dict(_init_shapes(model, (1, 32, 32, 3))[layers.FEEDBACK])
    stage_sizes = [32 * 32 * 16, 16 * 16 * 32, 8 * 8 * 64]
    expected = {("direct_init", "kernel"): (10, 32 * 32 * 16)}
    for i in range(3):
        for j in range(3):
            expected[(f"direct_{i}_{j}", "kernel")] = (10, stage_sizes[i])
            expected[(f"stage{i}_block{j}", "direct_0", "kernel")] = (10, stage_sizes[i])
    assert {k: v.shape for k, v in feedback.items()} == expected
    assert resnet.direct_feedback_entries(model, (32, 32, 3)) == 10 * (
        32 * 32 * 16 + 6 * sum(stage_sizes)
    )


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_rule_bp_leaves_the_last_layer_without_b(name):
    make, x_shape = TINY[name]
    variables = _init_shapes(make(rule="fa", output_rule="bp"), x_shape)
    feedback = traverse_util.flatten_dict(variables[layers.FEEDBACK])
    kernels = _as_feedback(_kernels(variables["params"]))
    assert set(feedback) == set(kernels) - {("output", layers.FEEDBACK_KERNEL)}


def _variables(model, x_shape, seed: int = 0) -> dict:
    """Random variables shaped as ``model.init`` makes them, drawn by numpy.

    ``model.init`` is avoided on purpose: compiling jax.random's threefry on CPU takes seconds
    per distinct shape, so initializing every layer would dominate the test time.
    """
    np_rng = np.random.default_rng(seed)
    shapes = _init_shapes(model, x_shape)
    variables = {}
    for collection in ("params", "batch_stats", layers.FEEDBACK):
        flat = {}
        for path, leaf in traverse_util.flatten_dict(shapes.get(collection, {})).items():
            if path[-1] in ("kernel", layers.FEEDBACK_KERNEL):
                fan = math.prod(leaf.shape[:-1])
                value = np_rng.normal(size=leaf.shape) / math.sqrt(fan)
            elif path[-1] in ("scale", "var"):
                value = np_rng.uniform(0.5, 1.5, size=leaf.shape)
            else:  # bias, mean
                value = np_rng.normal(size=leaf.shape) * 0.1
            flat[path] = jnp.asarray(value, leaf.dtype)
        if flat:
            variables[collection] = traverse_util.unflatten_dict(flat)
    return variables


@functools.cache
def _grad_fn(name: str, rule: str):
    """grad(params, feedback, batch_stats, x, g) of <logits, g>, in train mode, jitted."""
    make, _ = TINY[name]
    model = make(rule=rule)

    def loss(params, feedback, batch_stats, x, g):
        variables = {"params": params, "batch_stats": batch_stats, layers.FEEDBACK: feedback}
        variables = {k: v for k, v in variables.items() if v is not None}
        y, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.vdot(y, g)

    return jax.jit(jax.grad(loss, argnums=(0, 3)))


def _grads(name: str, rule: str, variables: dict, feedback=None):
    _, x_shape = TINY[name]
    np_rng = np.random.default_rng(1)
    x = jnp.asarray(np_rng.normal(size=x_shape), jnp.float32)
    g = jnp.asarray(np_rng.normal(size=(x_shape[0], 3)), jnp.float32)
    return _grad_fn(name, rule)(variables["params"], feedback, variables.get("batch_stats"), x, g)


@pytest.mark.parametrize("name", sorted(TINY))
def test_fa_sends_the_error_through_the_b_of_every_layer(name):
    """With B = W everywhere FA is backprop; with any one B random the input's error changes."""
    make, x_shape = TINY[name]
    variables = _variables(make(rule="fa"), x_shape)
    params, random_b = variables["params"], variables[layers.FEEDBACK]
    expected_dparams, expected_dx = _grads(name, "bp", variables)

    mirrored = traverse_util.flatten_dict(random_b) | _as_feedback(_kernels(params))
    dparams, dx = _grads(name, "fa", variables, traverse_util.unflatten_dict(mirrored))
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-5, atol=1e-7)
    for got, want in zip(jax.tree.leaves(dparams), jax.tree.leaves(expected_dparams), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    for path, b in traverse_util.flatten_dict(random_b).items():
        feedback = traverse_util.unflatten_dict(mirrored | {path: b})
        _, dx = _grads(name, "fa", variables, feedback)
        change = jnp.linalg.norm(dx - expected_dx) / jnp.linalg.norm(expected_dx)
        assert change > 1e-3, path


@pytest.mark.parametrize("name", sorted(TINY))
def test_dfa_gives_every_kernel_a_finite_nonzero_gradient_unlike_bp(name):
    make, x_shape = TINY[name]
    variables = _variables(make(rule="dfa"), x_shape)
    dparams, _ = _grads(name, "dfa", variables, variables[layers.FEEDBACK])
    bp_kernels = _kernels(_grads(name, "bp", variables)[0])
    for path, dw in _kernels(dparams).items():
        assert jnp.all(jnp.isfinite(dw)), path
        assert jnp.linalg.norm(dw) > 0, path
        if path != ("output", "kernel"):  # the last layer gets e itself under both rules
            assert not np.allclose(dw, bp_kernels[path], rtol=1e-3), path
    np.testing.assert_allclose(
        dparams["output"]["kernel"], bp_kernels[("output", "kernel")], rtol=1e-5
    )


def test_zero_init_residual_zeroes_the_last_batch_norm_scale_of_each_block():
    model = resnet.Model(num_classes=3, stage_sizes=(1,), stem="cifar", width=2)
    # An rbg key: threefry's sampler takes seconds per shape to compile on CPU.
    rng = jax.random.key(0, impl="rbg")
    init = jax.jit(model.clone(zero_init_residual=True).init)
    params = init(rng, jnp.zeros((1, 4, 4, 3)))["params"]
    np.testing.assert_array_equal(params["stage0_block0"]["bn_1"]["scale"], 0.0)
    np.testing.assert_array_equal(params["stage0_block0"]["bn_0"]["scale"], 1.0)
    np.testing.assert_array_equal(params["bn_init"]["scale"], 1.0)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters(name):
    make, x_shape = TINY[name]
    model = make(rule="fa", dtype=jnp.bfloat16)
    variables = _variables(model, x_shape)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    y, _ = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, jnp.ones(x_shape)
    )
    assert y.dtype == jnp.bfloat16


def test_dfa_in_bfloat16_gives_finite_gradients():
    make, x_shape = TINY["basic"]
    model = make(rule="dfa", dtype=jnp.bfloat16)
    variables = _variables(model, x_shape)

    def loss(params):
        y, _ = model.apply(
            {**variables, "params": params}, jnp.ones(x_shape), train=True, mutable=["batch_stats"]
        )
        return jnp.sum(y.astype(jnp.float32))

    dparams = jax.jit(jax.grad(loss))(variables["params"])
    assert all(jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(dparams))
