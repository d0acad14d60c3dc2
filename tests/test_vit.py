"""The ViT: its shapes, that backprop trains it, and that every weight sits in a stock layer."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import wtfree
from configs import fashion_mnist_vit
from tests import fake_data
from wtfree import loop, models, optim, trainer
from wtfree.models import vit

# The layers wtfree.convert intercepts: every weight that multiplies an activation must be
# the kernel of one of them, or a rule could not reach it.
LINEAR = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum)
TINY = dict(num_classes=3, patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16)


def _init(model, x_shape, seed=0):
    return model.init(jax.random.key(seed), jnp.zeros(x_shape))


@pytest.mark.parametrize(
    "patch_size,pool,tokens", [(4, "cls", 7 * 7 + 1), (7, "cls", 4 * 4 + 1), (7, "mean", 4 * 4)]
)
def test_logits_and_parameter_shapes(patch_size, pool, tokens):
    model = vit.Model(num_classes=10, patch_size=patch_size, pool=pool)
    logits, variables = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
    )
    assert logits.shape == (2, 10)
    assert set(variables) == {"params"}  # no batch stats, nothing but W
    params = variables["params"]
    assert params["embedding"]["kernel"].shape == (patch_size, patch_size, 1, 64)
    assert params["position_embedding"].shape == (1, tokens, 64)
    assert ("cls" in params) == (pool == "cls")
    attention = params["block_3"]["attention"]
    for name in ("query", "key", "value"):
        assert attention[name]["kernel"].shape == (64, 4, 16)  # width -> heads x head width
    assert attention["out"]["kernel"].shape == (4, 16, 64)
    assert params["block_3"]["mlp"]["dense_0"]["kernel"].shape == (64, 128)
    assert params["output"]["kernel"].shape == (64, 10)
    assert "block_4" not in params


def test_default_size_for_fashion_mnist():
    """Patch embedding 7*7*64+64, class token 64, positions 17*64, per block 2 layer norms
    (4*64), q/k/v/out (4*(64*64+64)) and the MLP (64*128+128 + 128*64+64), final norm 128,
    head 64*10+10."""
    variables = jax.eval_shape(
        lambda: _init(vit.Model(num_classes=10, patch_size=7), (1, 28, 28, 1))
    )
    count = sum(leaf.size for leaf in jax.tree.leaves(variables))
    block = 4 * 64 + 4 * (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64)
    assert count == (49 * 64 + 64) + 64 + 17 * 64 + 4 * block + 128 + (64 * 10 + 10)


def test_the_tokens_attend_to_each_other():
    """Changing one patch changes the class token's output: attention mixes the tokens (a
    model that dropped attention would still give logits of the right shape)."""
    model = vit.Model(**TINY)
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 1))
    variables = _init(model, x.shape)
    y = x.at[0, 4:, 4:, 0].set(0.0)  # the last of the four patches only
    assert not jnp.allclose(model.apply(variables, x), model.apply(variables, y))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pool="max"), "pool='max'; allowed: cls, mean"),
        (dict(patch_size=3), "patch_size=3 does not divide the image's 8x8"),
        (dict(num_heads=3), "num_heads=3 does not divide width=8"),
    ],
)
def test_bad_fields_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _init(vit.Model(**{**TINY, **kwargs}), (1, 8, 8, 1))


def test_backprop_fits_a_tiny_fixed_batch():
    model = vit.Model(**TINY)
    x = jax.random.normal(jax.random.key(2), (8, 8, 8, 1))
    labels = jnp.arange(8) % 3
    params = _init(model, x.shape)["params"]
    tx = optax.sgd(0.1, momentum=0.9)

    def loss_fn(params):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(30):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(math.log(3.0), abs=0.3)  # about chance at init
    assert losses[-1] < 0.5 * losses[0], losses


def _linear_calls(model, variables, x) -> dict[tuple[str, ...], type]:
    """The path and type of every stock linear layer the model calls, as intercept_methods
    (the hook wtfree.convert uses) sees them."""
    calls = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, LINEAR):
            calls[context.module.path] = type(context.module)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, x)
    return calls


def test_every_weight_matrix_is_a_kernel_of_a_stock_linear_layer():
    """What a rule needs to reach every weight: each parameter that multiplies an activation
    (all but the elementwise biases and layer-norm scales, the class token and the additive
    positions) is the kernel of a Dense, DenseGeneral, Conv or Einsum that intercept_methods
    sees called, and each of those has one; the attention's four projections in every block
    included."""
    model = vit.Model(**TINY)
    x = jnp.zeros((1, 8, 8, 1))
    variables = _init(model, x.shape)
    calls = _linear_calls(model, variables, x)
    flat = traverse_util.flatten_dict(variables["params"])
    elementwise = {path for path in flat if path[-1] in ("bias", "scale")}
    weights = set(flat) - elementwise - {("cls",), ("position_embedding",)}
    assert weights == {(*p, "kernel") for p in calls}
    assert calls[("embedding",)] is nn.Conv
    assert calls[("output",)] is nn.Dense
    for i in range(TINY["depth"]):
        for name in ("query", "key", "value", "out"):
            assert calls[(f"block_{i}", "attention", name)] is nn.DenseGeneral
        for name in ("dense_0", "dense_1"):
            assert calls[(f"block_{i}", "mlp", name)] is nn.Dense
    assert len(calls) == 2 + 6 * TINY["depth"]


def test_the_registry_builds_it_plain_for_bp_and_converted_for_other_rules():
    model = models.get("vit")(num_classes=10, rule="bp", output_rule=None, patch_size=7)
    assert isinstance(model, vit.Model) and model.patch_size == 7
    converted = models.get("vit")(num_classes=10, rule="fa", output_rule="bp", patch_size=7)
    assert isinstance(converted, wtfree.Converted) and converted.model == model
    assert converted.options.rule == "fa" and converted.options.output_rule == "bp"
    models.check_rule("vit", "dfa")  # train.py's step gives it the output error
    direct = models.get("vit")(num_classes=10, rule="dfa", patch_size=7)
    assert direct.options.outputs == 10  # each layer's B maps the 10 outputs' error
    with pytest.raises(ValueError, match="^model='vit' .*'dfa_block': a converted model has no"):
        models.check_rule("vit", "dfa_block")


def _train(tmp_path, rule: str, **overrides) -> tuple[dict, list[dict]]:
    """configs/fashion_mnist_vit.py through the trainer users run, shortened by overrides only:
    4 steps on random images registered as fashion_mnist, logged, measured and evaluated."""
    config = fashion_mnist_vit.get_config(f"rule={rule},runlocal=True")
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    config.model_kwargs.update(dict(width=8, depth=1, num_heads=2, mlp_dim=16))
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_batch_size = 64
    config.num_devices = 1
    with fake_data.synthetic_images(num_examples=128):
        final = loop.train_and_evaluate(config, tmp_path)
    assert 0.0 <= final["test/accuracy"] <= 1.0 and math.isfinite(final["test/loss"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    return final, [json.loads(line) for line in lines]


def test_the_config_trains_under_bp(tmp_path):
    final, records = _train(tmp_path, "bp")
    assert 0.0 <= final["test/accuracy"] <= 1.0 and math.isfinite(final["test/loss"])
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert not any(key.startswith("align/") for r in records for key in r)  # nothing to measure


ATTENTION = [f"block_0/attention/{name}" for name in ("query", "key", "value", "out")]


@pytest.mark.parametrize(
    "rule,overrides",
    [
        ("fa", {}),
        ("kp", {}),
        ("wm", {}),  # the config's mirror noise: Rademacher
        ("sa", {}),
        ("sa", {"alignment.input": "normal"}),  # the alignment loss fed noise, not activations
    ],
)
def test_the_config_trains_under_a_rule_with_attention_converted(tmp_path, rule, overrides):
    """Through wtfree.convert: B is stored for, and measured at, every attention projection,
    and the error each receives differs from backprop's."""
    final, records = _train(tmp_path, rule, **overrides)
    assert math.isfinite(final["test/loss"])
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    logged = [r for r in records if "align/weight_angle/output" in r]
    assert [r["step"] for r in logged] == [0, 2, 4]
    for record in logged:
        for layer in [*ATTENTION, "block_0/mlp/dense_0", "block_0/mlp/dense_1", "output"]:
            # A random B starts near 90 degrees from W; 4 small steps do not align it.
            assert 45.0 < record[f"align/weight_angle/{layer}"] < 135.0, (layer, record)
        for layer in ATTENTION:
            assert record[f"align/delta_angle/{layer}"] > 1.0, (layer, record)
        # The patch embedding reads the image: on backprop, no B, so no angle of B to W.
        assert "align/weight_angle/embedding" not in record
        assert "align/delta_angle/embedding" in record  # the error it receives is measured
    if rule == "sa":
        assert all(math.isfinite(r["train/alignment_loss"]) for r in records if "train/loss" in r)


def test_the_config_trains_under_dfa(tmp_path):
    """dfa through train.py: the step's first pass gives the output error, which reaches every
    converted layer through its own B (tests/test_linen.py checks e B_l in closed form on the
    same step). Every layer's B is a direct one (outputs x the units of its input); the error
    each attention projection receives is measured and differs from backprop's."""
    final, records = _train(tmp_path, "dfa")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    logged = [r for r in records if "align/delta_angle/block_0/attention/query" in r]
    assert [r["step"] for r in logged] == [0, 2, 4]
    for record in logged:
        for layer in [*ATTENTION, "block_0/mlp/dense_0", "block_0/mlp/dense_1"]:
            assert 1.0 < record[f"align/delta_angle/{layer}"] < 179.0, (layer, record)
        assert not any(k.startswith("align/weight_angle/") for k in record)  # no B shaped as W
    config = fashion_mnist_vit.get_config("rule=dfa,runlocal=True")
    config.model_kwargs.update(dict(width=8, depth=1, num_heads=2, mlp_dim=16))
    model = trainer.make_model(config, 10)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    direct = traverse_util.flatten_dict(variables["feedback"])
    assert {path[-1] for path in direct} == {wtfree.linen.DIRECT_KERNEL}
    assert direct["block_0", "attention", "query", wtfree.linen.DIRECT_KERNEL].shape == (10, 17 * 8)
    assert ("embedding", wtfree.linen.DIRECT_KERNEL) not in direct  # it reads the image


def test_the_config_gives_convert_its_noise_options_as_values():
    config = fashion_mnist_vit.get_config("rule=wm")
    config.mirror.noise = "uniform"
    config.alignment.input = "normal"
    model = trainer.make_model(config, 10)
    assert model.options.mirror_noise == "uniform"
    assert model.options.alignment_input == "normal"


def test_weight_decay_reaches_the_kernels_only():
    """With a zero gradient, SGD's update is -eta*lambda*leaf where weight decay applies and 0
    elsewhere: at every kernel, W and KP's B alike, and at no bias (the attention's per-head
    biases are 2-D), layer-norm scale, class token or position embedding."""
    model = wtfree.convert(vit.Model(**TINY), "kp")
    variables = _init(model, (1, 8, 8, 1))
    eta, decay = 0.5, 0.1
    tx = optim.make_optimizer(eta, variables["trained_feedback"], weight_decay=decay, momentum=0.9)
    trainable = {k: variables[k] for k in ("params", "feedback")}
    zeros = jax.tree.map(jnp.zeros_like, trainable)
    updates, _ = tx.update(zeros, tx.init(trainable), trainable)
    flat = traverse_util.flatten_dict(trainable)
    moved = traverse_util.flatten_dict(updates)
    kernels = {path for path in flat if path[-1] in ("kernel", wtfree.linen.FEEDBACK_KERNEL)}
    for path, leaf in flat.items():
        want = -eta * decay * leaf if path in kernels else jnp.zeros_like(leaf)
        np.testing.assert_allclose(moved[path], want, rtol=1e-6, err_msg="/".join(path))
    names = {path[-1] for path in set(flat) - kernels}
    assert names == {"bias", "scale", "cls", "position_embedding"}
    assert flat["params", "block_0", "attention", "query", "bias"].ndim == 2
    # Every B the optimizer trains (KP) is a kernel the decay reaches, as its W is.
    assert {p for p in kernels if p[0] == "feedback"} == {
        ("feedback", *p[:-1], wtfree.linen.FEEDBACK_KERNEL)
        for p in traverse_util.flatten_dict(variables["trained_feedback"])
    } and len(kernels) == 2 * (2 + 6 * TINY["depth"]) - 1  # the input layer has no B


def test_the_rank_mask_decays_every_leaf_of_rank_two_or_more():
    """optimizer.weight_decay_mask=rank is the mask before the kernels-only one: with a zero
    gradient, -eta*lambda*leaf at every leaf of rank >= 2 (the kernels, and the ViT's attention
    biases, class token and position embeddings), 0 at the rest."""
    model = wtfree.convert(vit.Model(**TINY), "kp")
    variables = _init(model, (1, 8, 8, 1))
    eta, decay = 0.5, 0.1
    tx = optim.make_optimizer(
        eta, variables["trained_feedback"], weight_decay=decay, weight_decay_mask="rank"
    )
    trainable = {k: variables[k] for k in ("params", "feedback")}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, trainable), tx.init(trainable), trainable)
    flat, moved = traverse_util.flatten_dict(trainable), traverse_util.flatten_dict(updates)
    for path, leaf in flat.items():
        want = -eta * decay * leaf if leaf.ndim >= 2 else jnp.zeros_like(leaf)
        np.testing.assert_allclose(moved[path], want, rtol=1e-6, err_msg="/".join(path))
    decayed = {path[-1] for path, leaf in flat.items() if leaf.ndim >= 2}
    assert {"bias", "cls", "position_embedding"} <= decayed


def test_a_vit_workdir_recorded_before_the_decay_mask_key_asks_for_it(tmp_path):
    """A ViT workdir whose config.json predates optimizer.weight_decay_mask may have decayed
    every leaf of rank >= 2 or the kernels only: resumed with the key unset it stops in one line
    before touching the workdir; resumed with the mask it began with it ends bit-identical to an
    uninterrupted run with that mask, which it records, so a later resume keeps it unasked."""
    from wtfree import checkpoints, errors
    from wtfree import workdir as workdir_lib

    def config(steps, mask):
        c = fashion_mnist_vit.get_config("rule=bp,runlocal=True")
        c.model_kwargs.update(dict(width=8, depth=1, num_heads=2, mlp_dim=16))
        c.optimizer.weight_decay = 0.1  # large enough that the masks' difference shows
        c.optimizer.weight_decay_mask = mask
        c.num_train_steps, c.log_every_steps, c.eval_batch_size = steps, 2, 64
        c.num_devices = 1
        return c

    old, whole = tmp_path / "old", tmp_path / "whole"
    with fake_data.synthetic_images(num_examples=128):
        loop.train_and_evaluate(config(2, "rank"), old)
        recorded = json.loads((old / workdir_lib.CONFIG).read_text())
        del recorded["optimizer"]["weight_decay_mask"]  # as recorded before the key existed
        (old / workdir_lib.CONFIG).write_text(json.dumps(recorded))
        before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file() and p.name != "lock"}
        with pytest.raises(errors.RunError) as info:
            loop.train_and_evaluate(config(4, None), old)
        assert "\n" not in str(info.value)
        assert "pass --config.optimizer.weight_decay_mask=rank if the run began before" in str(
            info.value
        )
        after = {p: p.read_bytes() for p in old.rglob("*") if p.is_file() and p.name != "lock"}
        assert after == before

        loop.train_and_evaluate(config(4, "rank"), old)
        loop.train_and_evaluate(config(4, "rank"), whole)
        t = trainer.Trainer(config(4, "rank"))
    states = []
    for path in (old, whole):
        with checkpoints.make_manager(path) as manager:
            states.append(jax.device_get(checkpoints.restore(manager, t.abstract_state)))
    assert int(states[0]["step"]) == 4
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Recorded now: a resume with the key unset goes on with "rank".
    assert (
        json.loads((old / workdir_lib.CONFIG).read_text())["optimizer"]["weight_decay_mask"]
        == "rank"
    )
    unset = config(6, None)
    kept = workdir_lib.keep_recorded_defaults(unset, old)
    assert unset.optimizer.weight_decay_mask == "rank"
    assert kept == {"optimizer.weight_decay_mask": (None, "rank")}
    assert workdir_lib.check_config(unset, old) == {"num_train_steps": (4, 6)}


def test_a_workdir_whose_model_decays_alike_under_both_masks_resumes_unasked(tmp_path):
    """The MLP's masks agree (no leaf of rank >= 2 but its kernels): a workdir recorded before
    the key resumes without it."""
    from tests.test_train import tiny_config
    from wtfree import workdir as workdir_lib

    config = tiny_config("kp")
    recorded = workdir_lib.as_json(config)
    del recorded["optimizer"]["weight_decay_mask"]
    (tmp_path / workdir_lib.CONFIG).write_text(json.dumps(recorded))
    model = trainer.make_model(config, 10)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    workdir_lib.check_decay_mask(config, tmp_path, params)  # no error
    assert workdir_lib.check_config(config, tmp_path) == {}
    vit_params = jax.eval_shape(vit.Model(**TINY).init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(Exception, match="recorded before optimizer.weight_decay_mask existed"):
        workdir_lib.check_decay_mask(config, tmp_path, vit_params["params"])
