"""The mirror noise (`mirror.noise`): its moments, the mirror step's expected update, the config."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import config_helpers, fake_data
from tests.test_train import tiny_config
from wtfree import config_lib, errors, layers, loop, metrics, rules, workdir
from wtfree import trainer as trainer_lib

# Fourth moments of the unit-variance distributions: they tell the three apart.
FOURTH_MOMENT = {"normal": 3.0, "rademacher": 1.0, "uniform": 9 / 5}


@pytest.fixture(autouse=True)
def synthetic_mnist():
    with fake_data.synthetic_images(num_examples=64):
        yield


@pytest.mark.parametrize("distribution", rules.MIRROR_NOISES)
def test_noise_has_mean_0_variance_1_and_independent_entries(distribution):
    n = 400_000
    x = np.asarray(rules.draw_noise(jax.random.key(0), (n // 100, 100), jnp.float32, distribution))
    assert x.shape == (n // 100, 100)
    flat = x.ravel().astype(np.float64)
    # Each bound is 5 standard errors of its estimate.
    assert abs(flat.mean()) < 5 / math.sqrt(n)
    fourth = FOURTH_MOMENT[distribution]
    # Var(x^2) = E[x^4] - 1 (0 for Rademacher, whose x^2 is 1 exactly).
    assert abs(np.mean(flat**2) - 1) <= 5 * math.sqrt((fourth - 1) / n) + 1e-9
    assert abs(np.mean(flat**4) - fourth) < 0.05 * fourth
    # Neighbours (the same 32-bit word for rademacher) and entries a word apart are uncorrelated.
    for lag in (1, 31, 32, 100):
        assert abs(np.mean(flat[:-lag] * flat[lag:])) < 5 / math.sqrt(n), lag
    if distribution == "rademacher":
        assert set(np.unique(x)) == {-1.0, 1.0}
    if distribution == "uniform":
        assert np.abs(x).max() <= math.sqrt(3)
    other = rules.draw_noise(jax.random.key(1), (n // 100, 100), jnp.float32, distribution)
    assert not np.array_equal(x, np.asarray(other))


@pytest.mark.parametrize("distribution", rules.MIRROR_NOISES)
def test_noise_second_moment_matrix_is_the_identity(distribution):
    """E[x^T x] / N = I for N rows: what makes E[H] = N W (rules.hebbian)."""
    n, d = 20_000, 12
    x = np.asarray(rules.draw_noise(jax.random.key(3), (n, d), jnp.float32, distribution))
    np.testing.assert_allclose(x.T @ x / n, np.eye(d), atol=5 * math.sqrt(3 / n))


def test_unknown_noise_is_refused():
    with pytest.raises(ValueError, match="mirror noise 'gaussian'; allowed: normal, rademacher"):
        rules.draw_noise(jax.random.key(0), (4,), jnp.float32, "gaussian")


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_mirror_step_moves_b_by_the_closed_form_expectation(distribution):
    r"""One mirror batch of N noise rows of std sigma, decay 0: B' - B = eta sigma^2 x^T x W,
    whose expectation is eta sigma^2 N W; with Rademacher noise the diagonal of x^T x is N
    exactly, so only its off-diagonal part (relative size ~ sqrt(16 / N)) is noise."""
    n, eta, sigma = 8192, 1e-4, 0.5
    config = tiny_config(
        "wm",
        **{
            "mirror.batch_size": n,
            "mirror.learning_rate": eta,
            "mirror.decay": 0.0,
            "mirror.noise_std": sigma,
            "mirror.noise": distribution,
        },
    )
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    w = np.asarray(state["params"]["output"]["kernel"])
    b = np.asarray(state["feedback"]["output"]["feedback_kernel"])
    after = trainer.mirror_step(state, jax.random.key(4))
    update = np.asarray(after["feedback"]["output"]["feedback_kernel"]) - b
    expected = eta * sigma**2 * n * w
    assert float(metrics.angle(update, expected)) < 5.0
    assert np.linalg.norm(update) / np.linalg.norm(expected) == pytest.approx(1.0, abs=0.08)


@pytest.mark.parametrize("distribution", rules.MIRROR_NOISES)
def test_layer_sows_the_hebbian_product_of_the_configured_noise(distribution):
    """The layer draws its own distribution from the mirror step's stream: E[H] = n W for each
    noise."""
    dense = layers.Dense(features=3, rule="wm", mirror_noise=distribution)
    n = 16
    x = jnp.zeros((n, 5))
    variables = dense.init(jax.random.key(1), x)

    def sown_h(rng):
        _, sown = dense.apply(variables, x, rngs={layers.MIRROR_RNG: rng}, mutable=[layers.MIRROR])
        return sown[layers.MIRROR]["feedback_kernel"]

    hs = jax.vmap(sown_h)(jax.random.split(jax.random.key(5), 2000))
    w = variables["params"]["kernel"]
    np.testing.assert_allclose(jnp.mean(hs, axis=0) / n, w, atol=0.1 * float(jnp.abs(w).max()))


@pytest.mark.parametrize("input_shape", [(64, 7), (8, 8, 8, 3)])
def test_mirror_update_with_rademacher_noise_has_the_closed_form_mean(input_shape):
    r"""Dense and conv alike: the mean Rademacher update is :math:`\eta\sigma^2 n W`; for a
    3x3 SAME convolution on 8x8 inputs each tap is scaled by the share of the 64 output
    positions at which it sees the input (7/8 per off-centre axis), H being averaged over them."""
    n, eta, sigma = input_shape[0], 0.1, 0.5
    if len(input_shape) == 2:
        w = jax.random.normal(jax.random.key(0), (7, 5))
        share = np.ones(w.shape)

        def f(x, w_):
            return x @ w_
    else:
        w = jax.random.normal(jax.random.key(0), (3, 3, 3, 4))
        edge = np.array([7 / 8, 1, 7 / 8])
        share = (edge[:, None] * edge[None, :])[:, :, None, None]

        def f(x, w_):
            return jax.lax.conv_general_dilated(
                x, w_, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

    b = jax.random.normal(jax.random.key(1), w.shape)

    def update(k):
        new = rules.mirror_update(
            f,
            w,
            b,
            k,
            input_shape,
            learning_rate=eta,
            decay=0.0,
            noise_std=sigma,
            noise="rademacher",
        )
        return new - b

    mean = jnp.mean(jax.lax.map(update, jax.random.split(jax.random.key(7), 200)), axis=0)
    expected = eta * sigma**2 * n * np.asarray(w) * share
    assert float(metrics.angle(mean, expected)) < 3.0
    assert np.linalg.norm(mean) / np.linalg.norm(expected) == pytest.approx(1.0, abs=0.05)
    assert float(metrics.angle(b, w)) > 45.0  # B started far from W


def test_bad_noise_is_one_line_from_validate():
    config_lib.validate(tiny_config("wm", **{"mirror.noise": "rademacher"}))
    with pytest.raises(ValueError) as info:
        config_lib.validate(tiny_config("wm", **{"mirror.noise": "gaussian"}))
    assert str(info.value) == "mirror.noise='gaussian'; allowed: normal, rademacher, uniform"


def record_without(workdir_path, rule: str, key: str) -> None:
    """Writes ``rule``'s config.json into the workdir as a version of wtfree before the dotted
    ``key`` (a value or a subtree) existed would have."""
    old = workdir.as_json(tiny_config(rule))
    parent, name = config_helpers.parent_and_name(old, key)
    del parent[name]
    (workdir_path / workdir.CONFIG).write_text(json.dumps(old))


def test_rademacher_is_the_default_mirror_noise():
    assert tiny_config("wm").mirror.noise == "rademacher"
    assert workdir.CHANGED_DEFAULTS["mirror.noise"] == ("normal", "rademacher")


@pytest.mark.parametrize("recorded", ["normal", None])  # None: before mirror.noise existed
def test_a_workdir_recorded_with_normal_noise_resumes_with_it(tmp_path, recorded):
    """Normal noise was the default until issue 20: such a run goes on with it, every process
    told by keep_recorded_defaults; check_config alone refuses it in one line."""
    if recorded is None:
        record_without(tmp_path, "wm", "mirror.noise")
    else:
        old = workdir.as_json(tiny_config("wm", **{"mirror.noise": recorded}))
        (tmp_path / workdir.CONFIG).write_text(json.dumps(old))
    with pytest.raises(errors.RunError, match=rf"mirror.noise \({recorded!r} -> 'rademacher'\)"):
        workdir.check_config(tiny_config("wm"), tmp_path)
    config = tiny_config("wm")
    kept = workdir.keep_recorded_defaults(config, tmp_path)
    assert kept == {"mirror.noise": ("rademacher", "normal")}
    assert config.mirror.noise == "normal"
    assert workdir.check_config(config, tmp_path) == {}
    # A noise other than the new default is the user's: not set back, and refused.
    uniform = tiny_config("wm", **{"mirror.noise": "uniform"})
    assert workdir.keep_recorded_defaults(uniform, tmp_path) == {}
    assert uniform.mirror.noise == "uniform"
    with pytest.raises(errors.RunError, match=rf"mirror.noise \({recorded!r} -> 'uniform'\)"):
        workdir.check_config(uniform, tmp_path)


def test_a_workdir_recorded_with_rademacher_or_none_keeps_the_config(tmp_path):
    config = tiny_config("wm")
    assert workdir.keep_recorded_defaults(config, tmp_path) == {}  # no config.json yet
    (tmp_path / workdir.CONFIG).write_text(json.dumps(workdir.as_json(tiny_config("wm"))))
    assert workdir.keep_recorded_defaults(config, tmp_path) == {}
    assert config.mirror.noise == "rademacher"
    assert workdir.check_config(config, tmp_path) == {}


def test_a_workdir_recorded_before_the_alignment_rules_still_resumes(tmp_path):
    """Its config.json has no alignment.* (it ran bp or kp, which never read them); a key
    outside the added ones is still refused."""
    record_without(tmp_path, "kp", "alignment")
    assert workdir.check_config(tiny_config("kp"), tmp_path) == {}
    scaled = tiny_config("kp", **{"alignment.learning_rate_scale": 10.0})
    assert workdir.check_config(scaled, tmp_path) == {}
    with pytest.raises(errors.RunError, match=r"holds another experiment: changed seed"):
        workdir.check_config(tiny_config("kp", seed=1), tmp_path)


@pytest.mark.parametrize(
    "rule, reads", [("bp", ""), ("kp", ""), ("wm", "mirror"), ("sa", "alignment")]
)
def test_a_changed_subtree_the_rule_never_reads_is_no_other_experiment(tmp_path, rule, reads):
    """mirror.* is read by wm alone and alignment.* by the alignment rules alone: a bp run
    recorded before a mirror default changed still resumes (the change is recorded); for the
    rule that reads it, it is another experiment. A changed rule is refused with its subtrees."""
    (tmp_path / workdir.CONFIG).write_text(json.dumps(workdir.as_json(tiny_config(rule))))
    for key, value in (("mirror.decay", 0.5), ("alignment.positions", "mean")):
        changed = tiny_config(rule, **{key: value})
        if reads and key.startswith(reads + "."):
            with pytest.raises(errors.RunError, match=rf"changed {key} "):
                workdir.check_config(changed, tmp_path)
        else:
            assert key in workdir.check_config(changed, tmp_path)
    with pytest.raises(errors.RunError, match=r"changed mirror.decay .*, rule "):
        workdir.check_config(tiny_config("fa", **{"mirror.decay": 0.5}), tmp_path)


def test_an_alignment_run_recorded_before_alignment_momentum_resumes_with_ws_momentum(tmp_path):
    """Without alignment.momentum, B had W's momentum: -1 resumes it, 0 is another experiment."""
    record_without(tmp_path, "sa", "alignment.momentum")
    assert workdir.check_config(tiny_config("sa"), tmp_path) == {}
    with pytest.raises(errors.RunError, match=r"alignment.momentum \(None -> 0.0\)"):
        workdir.check_config(tiny_config("sa", **{"alignment.momentum": 0.0}), tmp_path)


def test_mirror_step_with_decay_is_the_closed_form():
    r"""With a decay (the other direct tests use 0, where a decay applied twice is invisible):
    B' = (1 - \lambda) B + \eta \sigma^2 H, H the Hebbian product the layer sows for the
    step's own noise (one device: the key folded with device index 0)."""
    decay, eta, sigma = 0.3, 0.01, 0.5
    config = tiny_config(
        "wm",
        **{
            "mirror.decay": decay,
            "mirror.learning_rate": eta,
            "mirror.noise_std": sigma,
            "mirror.noise": "normal",  # the model's noise (trainer.make_model), drawn below
        },
    )
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    before = jax.device_get(state)
    rng = jax.random.key(5)
    after = jax.device_get(trainer.mirror_step(state, rng)["feedback"])
    x = np.zeros((config.mirror.batch_size, *trainer.ds.image_shape), np.float32)
    _, sown = trainer.model.apply(
        {"params": before["params"], "feedback": before["feedback"]},
        x,
        rngs={layers.MIRROR_RNG: jax.random.fold_in(rng, 0)},
        mutable=[layers.MIRROR],
    )
    h = np.asarray(sown[layers.MIRROR]["output"]["feedback_kernel"])
    b = np.asarray(before["feedback"]["output"]["feedback_kernel"])
    expected = (1 - decay) * b + eta * sigma**2 * h
    np.testing.assert_allclose(after["output"]["feedback_kernel"], expected, rtol=1e-5, atol=1e-7)
    # Both terms are large enough that either applied twice (or not at all) would show.
    assert np.abs(decay * b).max() > 1e-2 and np.abs(eta * sigma**2 * h).max() > 1e-2


def test_train_and_evaluate_resumes_a_normal_noise_run_with_its_noise(tmp_path):
    """A wm run started when normal noise was the default, resumed by today's command (whose
    default is Rademacher), ends where an uninterrupted normal-noise run ends: train.py's path
    applies keep_recorded_defaults before the workdir check (without it: RunError)."""

    old, whole = tmp_path / "old", tmp_path / "whole"
    loop.train_and_evaluate(
        tiny_config("wm", **{"mirror.noise": "normal", "num_train_steps": 3}), old
    )
    resumed = loop.train_and_evaluate(tiny_config("wm"), old)
    uninterrupted = loop.train_and_evaluate(tiny_config("wm", **{"mirror.noise": "normal"}), whole)
    assert json.loads((old / workdir.CONFIG).read_text())["mirror"]["noise"] == "normal"
    assert resumed == pytest.approx(uninterrupted, rel=1e-6)
