"""Flax layers: where W and B live, their init, and the rule's error through a layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wtfree import layers, rules
from wtfree.models import mlp


@pytest.mark.parametrize("rule", sorted(rules.RULES))
def test_feedback_collection_only_for_rules_that_store_b(rule):
    model = mlp.Model(num_classes=3, widths=(4,), rule=rule)
    variables = model.init(jax.random.key(0), jnp.ones((2, 5)))
    assert set(variables["params"]) == {"hidden_0", "output"}
    assert ("feedback" in variables) == rules.get(rule).stores_feedback


@pytest.mark.parametrize(
    "module,x_shape",
    [
        (layers.Dense(features=300, rule="fa"), (2, 400)),
        (layers.Conv(features=64, kernel_size=(3, 3), rule="kp"), (1, 8, 8, 32)),
    ],
)
def test_b_is_drawn_independently_at_the_scale_of_w(module, x_shape):
    variables = module.init(jax.random.key(0), jnp.ones(x_shape))
    w = variables["params"]["kernel"]
    b = variables[layers.FEEDBACK]["feedback_kernel"]
    assert b.shape == w.shape
    np.testing.assert_allclose(jnp.std(b), jnp.std(w), rtol=0.05)
    np.testing.assert_allclose(jnp.std(w), layers.init_std(1.0, "fan_in", w.shape), rtol=0.05)
    assert abs(jnp.corrcoef(w.ravel(), b.ravel())[0, 1]) < 0.05


def test_conv_layer_fa_error_equals_backprop_through_b():
    conv = layers.Conv(features=4, kernel_size=(3, 3), strides=(2, 2), rule="fa")
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables = conv.init(jax.random.key(1), x)
    g = jax.random.normal(jax.random.key(2), conv.apply(variables, x).shape)
    dx = jax.grad(lambda x: jnp.vdot(conv.apply(variables, x), g))(x)
    as_bp = conv.clone(rule="bp")
    swapped = {
        "params": {**variables["params"], "kernel": variables["feedback"]["feedback_kernel"]}
    }
    expected = jax.grad(lambda x: jnp.vdot(as_bp.apply(swapped, x), g))(x)
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-6)


def test_usf_layer_uses_the_init_std_as_its_scale():
    dense = layers.Dense(features=3, rule="usf")
    x = jax.random.normal(jax.random.key(0), (2, 5))
    variables = dense.init(jax.random.key(1), x)
    w = variables["params"]["kernel"]
    g = jnp.ones((2, 3))
    dx = jax.grad(lambda x: jnp.vdot(dense.apply(variables, x), g))(x)
    s = layers.init_std(1.0, "fan_in", w.shape)
    np.testing.assert_allclose(dx, g @ (s * jnp.sign(w)).T, rtol=1e-5)


def test_mirror_mode_sows_the_hebbian_product_of_unit_noise():
    """E[x^T x W] = n W for n unit-variance noise rows: the sown H averages to n W."""
    dense = layers.Dense(features=3, rule="wm")
    n = 16
    x = jnp.zeros((n, 5))
    variables = dense.init(jax.random.key(1), x)

    def sown_h(rng):
        _, sown = dense.apply(variables, x, rngs={layers.MIRROR_RNG: rng}, mutable=[layers.MIRROR])
        return sown[layers.MIRROR]["feedback_kernel"]

    mean_h = jnp.mean(jax.vmap(sown_h)(jax.random.split(jax.random.key(5), 2000)), axis=0)
    w = variables["params"]["kernel"]
    np.testing.assert_allclose(mean_h / n, w, atol=0.1 * float(jnp.abs(w).max()))


def test_alignment_is_sown_when_measuring():
    model = mlp.Model(num_classes=3, widths=(4, 4), rule="bp")
    x = jnp.ones((2, 5))
    variables = model.init(jax.random.key(0), x)
    _, sown = model.apply({"params": variables["params"]}, x, mutable=[layers.ALIGNMENT])
    # The input layer's B would send the error into the input: no rule uses it, so no angle.
    assert "hidden_0" not in sown[layers.ALIGNMENT]
    np.testing.assert_allclose(sown[layers.ALIGNMENT]["hidden_1"]["weight_angle"], 0.0, atol=0.1)
    np.testing.assert_allclose(sown[layers.ALIGNMENT]["output"]["norm_ratio"], 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "module,x_shape",
    [
        (layers.Dense(features=3, rule="fa"), (2, 4)),
        (layers.Conv(features=3, kernel_size=(2, 2), rule="kp"), (1, 3, 3, 2)),
    ],
)
def test_an_own_layer_goes_through_nnx_bridge(module, x_shape):
    """W ("kernel") and B ("feedback_kernel") have leaf names of their own, so NNX's bridge holds
    both in one module (with B named "kernel" too, it fails on a duplicate variable path), and
    the bridged layer sends the error down through B."""
    from flax import nnx

    bridged = nnx.bridge.ToNNX(module, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), x_shape)
    nnx.bridge.lazy_init(bridged, x)
    w, b = bridged.kernel[...], bridged.feedback_kernel[...]
    assert w.shape == b.shape and not np.allclose(w, b)
    y = module.apply(module.init(jax.random.key(0), x), x)
    g = jax.random.normal(jax.random.key(2), y.shape)
    got = nnx.grad(lambda m, x: jnp.vdot(m(x), g), argnums=1)(bridged, x)

    # The same layer on backprop with B in W's place: its input gradient is the rule's.
    swapped = {"params": {"kernel": b, "bias": bridged.bias[...]}}
    as_bp = module.clone(rule="bp")
    want = jax.grad(lambda x: jnp.vdot(as_bp.apply(swapped, x), g))(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bad_noise_options_are_refused_in_one_line():
    """The layer's noise options are values, checked when it is built (as convert's are)."""
    with pytest.raises(ValueError, match="^mirror_noise='cauchy'; allowed: normal, rademacher"):
        layers.Dense(features=2, mirror_noise="cauchy")
    with pytest.raises(ValueError, match="^alignment_input='cauchy'; allowed: activations, normal"):
        layers.Conv(features=2, alignment_input="cauchy")
    model = mlp.Model(num_classes=2, widths=(3,), rule="wm", mirror_noise="gauss")
    with pytest.raises(ValueError, match="^mirror_noise='gauss'; allowed: normal"):
        model.init(jax.random.key(0), jnp.zeros((1, 4)))
