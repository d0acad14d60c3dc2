"""The mirror batch sized per layer (`mirror.per_layer_batch`): each layer's own noise vectors."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import fake_data
from tests.test_train import tiny_config
from wtfree import config_lib, layers, loop, rules, workdir
from wtfree import trainer as trainer_lib
from wtfree.kinds import mirror as mirror_kind

DECAY = 0.5


class ThreeLayers(nn.Module):
    """An input layer (never mirrored), then two mirrored layers of fan-in 24 and 6."""

    @nn.compact
    def __call__(self, x):
        x = layers.Dense(features=24, rule="wm", input_layer=True, name="input")(x)
        x = layers.Dense(features=6, rule="wm", name="wide")(x)  # d = 24
        return layers.Dense(features=5, rule="wm", name="narrow")(x)  # d = 6


@pytest.fixture(autouse=True)
def synthetic_mnist():
    with fake_data.synthetic_images(num_examples=64):
        yield


def sown(model, variables, x, rng, size):
    with layers.mirror_batch_sizes(size):
        _, out = model.apply(variables, x, rngs={layers.MIRROR_RNG: rng}, mutable=[layers.MIRROR])
    return out[layers.MIRROR]


def test_a_layer_given_n_vectors_draws_exactly_n():
    """The sown H is (n / n_l) z^T z W for the layer's own draw z of n_l rows: its rank is
    n_l (W has full rank), and on a fixed draw it is that product exactly."""
    model = ThreeLayers()
    n = 20
    x = jnp.zeros((n, 4))
    variables = model.init(jax.random.key(0), x)
    sizes = {24: 3, 6: 5}  # by fan-in
    seen = []

    def size(fan_in, positions, noise):
        seen.append((fan_in, positions, noise))
        return sizes[fan_in]

    h = sown(model, variables, x, jax.random.key(1), size)
    assert sorted(seen) == [(6, 1, "normal"), (24, 1, "normal")]
    assert "input" not in h
    for name, d in (("wide", 24), ("narrow", 6)):
        rank = np.linalg.matrix_rank(np.asarray(h[name]["feedback_kernel"], np.float64), tol=1e-4)
        assert rank == sizes[d], name

    # The layer's product itself, on a draw we know: n_l rows, scaled by n / n_l.
    w = variables["params"]["wide"]["kernel"]
    rng = jax.random.key(2)
    with layers.mirror_batch_sizes(lambda *_: 3):
        h = layers._mirror_hebbian(jnp.dot, jnp.zeros((n, 24)), w, rng, "rademacher")
    z = rules.draw_noise(rng, (3, 24), w.dtype, "rademacher")
    np.testing.assert_allclose(h, n / 3 * (z.T @ z @ w), rtol=1e-5, atol=1e-6)
    # Outside the context, or sized at n or more, the layer draws the apply's batch as before.
    z = rules.draw_noise(rng, (n, 24), w.dtype, "rademacher")
    for size in (None, lambda *_: n, lambda *_: 10 * n):
        with layers.mirror_batch_sizes(size):
            h = layers._mirror_hebbian(jnp.dot, jnp.zeros((n, 24)), w, rng, "rademacher")
        np.testing.assert_allclose(h, z.T @ z @ w, rtol=1e-5, atol=1e-6)


def test_per_layer_sizes_follow_the_closed_form():
    """The noisiest layer (d = 24) keeps the whole batch n = 32; the narrow one (d = 6) gets the
    fewest vectors within that layer's error: ceil(7 / 25 * 32) = 9 (normal noise)."""
    model = ThreeLayers()
    x = jnp.zeros((32, 4))
    variables = model.init(jax.random.key(0), x)
    ranks = {}

    def apply():
        _, out = model.apply(
            variables, x, rngs={layers.MIRROR_RNG: jax.random.key(3)}, mutable=[layers.MIRROR]
        )
        return out[layers.MIRROR]

    h = mirror_kind.hebbian_products(apply, 32, per_layer_batch=True)
    for name in ("wide", "narrow"):
        ranks[name] = np.linalg.matrix_rank(
            np.asarray(h[name]["feedback_kernel"], np.float64), tol=1e-4
        )
    error = rules.mirror_error(DECAY, 24, 32)
    assert rules.mirror_batch_size(DECAY, 6, error) == 9
    assert ranks == {"wide": 6, "narrow": 5}  # 32 and 9 rows: the rank is W's
    # Off, every layer gets the batch; the narrow layer's rank cannot tell 9 from 32 rows, so
    # count the rows by the scale of H's noise: Var(H_ij) for the narrow layer.
    hs = {}
    for per_layer in (False, True):

        def many(rng, per_layer=per_layer):
            def apply():
                _, out = model.apply(
                    variables, x, rngs={layers.MIRROR_RNG: rng}, mutable=[layers.MIRROR]
                )
                return out[layers.MIRROR]

            return mirror_kind.hebbian_products(apply, 32, per_layer)["narrow"]["feedback_kernel"]

        hs[per_layer] = jax.vmap(many)(jax.random.split(jax.random.key(4), 2000))
    w = variables["params"]["narrow"]["kernel"]
    for per_layer, rows in ((False, 32), (True, 9)):
        # E[H] = n W either way (scaled to n rows); E||H - nW||^2 = n^2 (d + 1) ||W||^2 / n_l.
        mean = jnp.mean(hs[per_layer], axis=0)
        np.testing.assert_allclose(mean / 32, w, atol=0.1 * float(jnp.abs(w).max()))
        spread = jnp.mean(jnp.sum(jnp.square(hs[per_layer] - 32 * w), axis=(1, 2)))
        expected = 32**2 * 7 * float(jnp.sum(jnp.square(w))) / rows
        assert float(spread) == pytest.approx(expected, rel=0.1), per_layer


def test_b_settles_at_w_with_the_closed_form_error_in_every_layer():
    """The library's mirror step with per-layer batches, run from B = W: B's mean over the steps
    is W (the learning rate decay / n still puts the fixed point at W), and each layer's mean
    ||B - W||^2 / ||W||^2 is rules.mirror_error at its own n_l: 32 rows for d = 24, 9 for d = 6
    (0.259, against 0.073 had it 32)."""
    model = ThreeLayers()
    n, steps, burn_in = 32, 3000, 20
    x = jnp.zeros((n, 4))
    variables = model.init(jax.random.key(0), x)
    variables = {
        "params": variables["params"],
        "feedback": {k: {"feedback_kernel": v["kernel"]} for k, v in variables["params"].items()},
    }
    mirror = mirror_kind.Mirror(decay=DECAY, per_layer_batch=True)
    w = variables["params"]

    def step(v, rng):
        v = mirror_kind.mirror_step(model, v, (x,), rng, mirror)
        b = v["feedback"]
        errors = {
            k: jnp.sum(jnp.square(b[k]["feedback_kernel"] - w[k]["kernel"]))
            / jnp.sum(jnp.square(w[k]["kernel"]))
            for k in ("wide", "narrow")
        }
        return v, ({k: b[k]["feedback_kernel"] for k in errors}, errors)

    _, (bs, errs) = jax.lax.scan(step, variables, jax.random.split(jax.random.key(1), steps))
    for name, d, rows in (("wide", 24, 32), ("narrow", 6, 9)):
        expected = rules.mirror_error(DECAY, d, rows)
        assert float(jnp.mean(errs[name][burn_in:])) == pytest.approx(expected, rel=0.08), name
        # The fixed point: B's mean over the steps is W (its own noise averages out).
        bias = jnp.sum(jnp.square(jnp.mean(bs[name][burn_in:], axis=0) - w[name]["kernel"]))
        assert float(bias / jnp.sum(jnp.square(w[name]["kernel"]))) < expected / 100, name
    # Input layer: not mirrored, B untouched.
    assert "input" not in errs


def test_the_trainer_mirror_step_takes_per_layer_batches():
    """The sharded mirror step (train.py's), on an MLP 784-64-4-10 whose first layer is not
    mirrored: hidden_1 (d = 64) keeps the batch n = 8, the output layer (d = 4) gets one row
    (Rademacher: error (d - 1) / n), so B's update from B = 0, eta H, has rank 1; off, rank 4."""
    noise = "rademacher"
    assert (
        rules.mirror_batch_size(0.5, 4, rules.mirror_error(0.5, 64, 8, noise=noise), noise=noise)
        == 1
    )
    ranks = {}
    for per_layer in (False, True):
        config = tiny_config(
            "wm",
            **{
                "mirror.decay": 0.5,
                "mirror.learning_rate": 1.0,
                "mirror.noise": noise,
                "mirror.per_layer_batch": per_layer,
                "model_kwargs.widths": (64, 4),
            },
        )
        trainer = trainer_lib.Trainer(config)
        state = trainer.fresh_state()
        zero = jax.tree.map(jnp.zeros_like, state["feedback"])
        after = trainer.mirror_step({**state, "feedback": zero}, jax.random.key(4))
        update = np.asarray(after["feedback"]["output"]["feedback_kernel"], np.float64)
        ranks[per_layer] = np.linalg.matrix_rank(update, tol=1e-5 * np.abs(update).max())
    assert ranks == {False: 4, True: 1}


def test_per_layer_batch_is_checked_and_older_workdirs_resume_without_it(tmp_path):
    config = tiny_config("wm")
    del config.mirror["per_layer_batch"]  # a config of one's own, typed otherwise
    config.mirror.per_layer_batch = 1
    with pytest.raises(ValueError) as info:
        config_lib.validate(config)
    assert str(info.value) == "mirror.per_layer_batch=1; allowed: True or False"
    # A workdir from before the key: read as False (every layer the whole batch), and a config
    # that now sizes per layer (LeNet's) is set back to it, as the run began.
    old = workdir.as_json(tiny_config("wm"))
    del old["mirror"]["per_layer_batch"]
    (tmp_path / workdir.CONFIG).write_text(json.dumps(old))
    assert workdir.check_config(tiny_config("wm"), tmp_path) == {}
    config = tiny_config("wm", **{"mirror.per_layer_batch": True})
    kept = workdir.keep_recorded_defaults(config, tmp_path)
    assert kept == {"mirror.per_layer_batch": (True, False)}
    assert config.mirror.per_layer_batch is False
    assert workdir.check_config(config, tmp_path) == {}
    assert math.isclose(rules.mirror_error(DECAY, 24, 32), DECAY / (2 - DECAY) * 25 / 32)


def test_an_older_wm_run_resumes_with_one_batch_for_every_layer(tmp_path):
    """A wm run recorded before mirror.per_layer_batch existed, resumed by a config that sizes
    per layer (as LeNet's now do), ends where an uninterrupted run with one batch for every
    layer ends: train.py's path sets the key back before the workdir check."""
    # Per layer, the output layer (d = 16) would get 2 of the 8 rows; B's fixed point at W.
    widths = {"model_kwargs.widths": (64, 16), "mirror.learning_rate": 0.1 / 8}
    old, whole = tmp_path / "old", tmp_path / "whole"
    loop.train_and_evaluate(tiny_config("wm", **widths, num_train_steps=3), old)
    recorded = json.loads((old / workdir.CONFIG).read_text())
    del recorded["mirror"]["per_layer_batch"]
    (old / workdir.CONFIG).write_text(json.dumps(recorded))
    resumed = loop.train_and_evaluate(
        tiny_config("wm", **widths, **{"mirror.per_layer_batch": True}), old
    )
    uninterrupted = loop.train_and_evaluate(tiny_config("wm", **widths), whole)
    assert json.loads((old / workdir.CONFIG).read_text())["mirror"]["per_layer_batch"] is False
    assert resumed == pytest.approx(uninterrupted, rel=1e-6)
    # Sized per layer from the start, the same run ends elsewhere: the check can fail.
    other = loop.train_and_evaluate(
        tiny_config("wm", **widths, **{"mirror.per_layer_batch": True}), tmp_path / "new"
    )
    assert other != pytest.approx(uninterrupted, rel=1e-6)
