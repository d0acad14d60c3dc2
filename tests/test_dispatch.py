"""Several train steps per jitted call: the same results, logs, evaluations, checkpoints, NaN
stops and preemptions as one step per call."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.test_promises import states
from tests.test_train import tiny_config
from wtfree import checkpoints, dispatch, errors, logs, loop, sharding
from wtfree import steps as steps_lib
from wtfree import trainer as trainer_lib


@pytest.fixture(autouse=True)
def mock_mnist():
    with tfds.testing.mock_data(num_examples=256, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def assert_same_run(a, b, config_a, config_b, rtol=0.0):
    """Every checkpoint (at the same steps) and every metrics.jsonl line: bit for bit, or
    within ``rtol``."""
    sa, sb = states(a, config_a), states(b, config_b)
    assert sorted(sa) == sorted(sb)
    for step in sa:
        flat_a = jax.tree_util.tree_leaves_with_path(sa[step])
        for (path, x), y in zip(flat_a, jax.tree.leaves(sb[step]), strict=True):
            where = f"step {step}: {jax.tree_util.keystr(path)}"
            if rtol:
                np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * 1e-2, err_msg=where)
            else:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)
    metrics_a, metrics_b = logs.read_metrics(str(a)), logs.read_metrics(str(b))
    if not rtol:
        assert metrics_a == metrics_b
        return
    assert [m.keys() for m in metrics_a] == [m.keys() for m in metrics_b]
    for m, n in zip(metrics_a, metrics_b, strict=True):
        np.testing.assert_allclose(list(m.values()), list(n.values()), rtol=rtol, atol=1e-6)


def record_calls(monkeypatch) -> list[int]:
    """The number of steps of every train call the loop makes (appended as it plans them)."""
    sizes = []
    plan = dispatch.plan_dispatches

    def recording(*args, **kwargs):
        for n, end in plan(*args, **kwargs):
            sizes.append(n)
            yield n, end

    monkeypatch.setattr(dispatch, "plan_dispatches", recording)
    return sizes


def test_chunks_end_on_every_host_step_and_are_the_same_after_a_resume():
    config = tiny_config("bp", log_every_steps=10, eval_every_steps=7, checkpoint_every_steps=9)
    total, per_epoch, k = 50, 12, 8

    ends_chunk = dispatch._chunk_ends(config, total, per_epoch, k)
    calls = list(dispatch.plan_dispatches(0, total, ends_chunk, k))
    assert sum(n for n, _ in calls) == total
    assert all(n in (1, 2, 4, 8) for n, _ in calls)
    steps = np.cumsum([n for n, _ in calls])
    ends = [int(s) for s, (_, end) in zip(steps, calls, strict=True) if end]
    host = {t for t in range(1, total + 1) if t % 10 == 0 or t % 7 == 0 or t % 9 == 0}
    host |= {t for t in range(1, total + 1) if t % 12 == 0 or t % 8 == 0}
    host |= {t - 1 for t in range(1, total + 1) if t % 10 == 0} | {total - 1, total}
    assert ends == sorted(host)
    # A logged step is a call of its own, so its alignment is measured on the state before it.
    for i, t in enumerate(steps):
        if t % 10 == 0:
            assert calls[i][0] == 1 and steps[i - 1] == t - 1
    # Within a chunk, longest call first; a chunk is never longer than k.
    starts = [0, *ends[:-1]]
    assert all(0 < e - s <= k for s, e in zip(starts, ends, strict=True))
    # Unsplit (one program for every length), a chunk is one call.
    whole = list(dispatch.plan_dispatches(0, total, ends_chunk, k, split=False))
    assert all(end for _, end in whole) and list(np.cumsum([n for n, _ in whole])) == ends
    # Resuming at any chunk end cuts the rest exactly as the uninterrupted run does.
    for s in ends[:-1]:
        tail = list(dispatch.plan_dispatches(s, total, ends_chunk, k))
        i = int(np.searchsorted(steps, s)) + 1
        assert tail == calls[i:]


# A ResNet-8 of width 2 (batch norm after every conv): on CPU its chunks are unrolled, not
# scanned (dispatch.conv_loop_is_slow). XLA fuses a step inside a k-step program differently
# from one alone, which moves the last bit of a batch-norm mean (measured: 1 ulp of
# bn_init's running mean by step 6), so such runs agree to float rounding, not bit for bit.
# A resumed run cuts the same chunks as the whole one, so resuming stays bit-identical.
RESNET = {"model": "resnet8", "model_kwargs": {"width": 2}}


@pytest.mark.parametrize(
    "rule, num_devices, every, model",
    [
        ("bp", 1, 1, {}),
        ("wm", 1, 1, {}),
        ("wm", 2, 2, {}),
        ("kp", 2, 1, {}),
        ("bp", 1, 1, RESNET),
        ("wm", 2, 2, RESNET),
    ],
)
def test_four_steps_per_call_equal_one_step_per_call(
    rule, num_devices, every, model, tmp_path, monkeypatch
):
    # 8 steps an epoch (256 examples, batch 32): evaluations at 8, 16, 20; logs every 5 steps
    # (alignment measured at 4, 9, 14, 19); checkpoints every 6 steps.
    common = dict(
        num_train_steps=20,
        log_every_steps=5,
        checkpoint_every_steps=6,
        keep_checkpoints=100,
        num_devices=num_devices,
        **{"mirror.every": every},
        **model,
    )
    one = tiny_config(rule, steps_per_dispatch=1, **common)
    four = tiny_config(rule, steps_per_dispatch=4, **common)
    loop.train_and_evaluate(one, str(tmp_path / "one"))
    sizes = record_calls(monkeypatch)
    loop.train_and_evaluate(four, str(tmp_path / "four"))
    assert sizes.count(4) >= 1 and sizes.count(2) >= 2  # the test does run several per call
    rtol = 1e-5 if model else 0.0
    assert_same_run(tmp_path / "one", tmp_path / "four", one, four, rtol)
    assert sorted(states(tmp_path / "four", four)) == [6, 12, 18, 20]


def nan_at_step(monkeypatch, step: int) -> None:
    """Makes the batch of ``step`` (counted from 1, as the loop counts) NaN."""
    original = trainer_lib.Trainer.train_batches

    def batches(self, start_step, raw=False):
        del raw  # float images, which can hold a NaN (the steps take float batches as they are)
        for i, batch in enumerate(original(self, start_step), start_step + 1):
            yield {**batch, "image": batch["image"] * np.nan} if i == step else batch

    monkeypatch.setattr(trainer_lib.Trainer, "train_batches", batches)


def test_a_nan_inside_a_call_is_named_and_nothing_after_it_is_saved(tmp_path, monkeypatch):
    nan_at_step(monkeypatch, 6)
    messages = {}
    for k in (1, 4):
        config = tiny_config(
            "bp",
            num_train_steps=12,
            checkpoint_every_steps=4,
            log_every_steps=100,
            steps_per_dispatch=k,
        )
        with pytest.raises(errors.Diverged) as info:
            loop.train_and_evaluate(config, str(tmp_path / str(k)))
        messages[k] = str(info.value).replace(str(tmp_path / str(k)), "WORKDIR")
        with checkpoints.make_manager(tmp_path / str(k)) as manager:
            assert manager.all_steps() == [4]
    # Step 6 runs inside the call of steps 5-8; the check before saving step 8 names it.
    assert messages[4] == messages[1]
    assert messages[4].startswith("train/loss is nan at step 6; last good checkpoint: step 4")


@pytest.mark.parametrize("model", [{}, RESNET])
def test_a_preemption_mid_chunk_saves_at_the_chunk_end_and_the_rerun_matches(
    model, tmp_path, monkeypatch
):
    # 16 steps an epoch (batch 16): chunks end at 8, 16 (the epoch's evaluation), 19 (the step
    # before the last, logged one) and 20. Bit for bit, the unrolled ResNet's too.
    config = tiny_config(
        "kp",
        batch_size=16,
        num_train_steps=20,
        log_every_steps=100,
        checkpoint_every_steps=100,
        steps_per_dispatch=8,
        **model,
    )
    loop.train_and_evaluate(config, str(tmp_path / "whole"))

    original = trainer_lib.Trainer.train_batches

    def signalling(self, start_step, raw=False):
        for i, batch in enumerate(original(self, start_step, raw), start_step):
            if i == 3:  # the batch of step 4, drawn before the first chunk (steps 1-8) ends
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(trainer_lib.Trainer, "train_batches", signalling)
    broken = tmp_path / "broken"
    loop.train_and_evaluate(config, str(broken))
    assert sorted(states(broken, config)) == [8]
    monkeypatch.setattr(trainer_lib.Trainer, "train_batches", original)
    loop.train_and_evaluate(config, str(broken))
    a, b = states(tmp_path / "whole", config), states(broken, config)
    for x, y in zip(jax.tree.leaves(a[20]), jax.tree.leaves(b[20]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert logs.read_metrics(str(tmp_path / "whole")) == logs.read_metrics(str(broken))


def test_automatic_steps_per_dispatch_follows_the_step_cost():
    trainer = trainer_lib.Trainer(tiny_config("bp", steps_per_dispatch=0))
    batch = next(trainer.train_batches(0))
    assert trainer.steps_per_dispatch(batch) == dispatch.MAX_STEPS_PER_DISPATCH  # a tiny MLP
    wide = trainer_lib.Trainer(tiny_config("bp", **{"model_kwargs.widths": (4096, 4096)}))
    # About 6 * 32 * (784 * 4096 + 4096 * 4096) = 3.8 GFLOP a step: DISPATCH_FLOPS (16e9) / 3.8e9
    # = 4.2, and the power of two below it is 4.
    assert wide.steps_per_dispatch(batch) == 4
    assert (
        trainer_lib.Trainer(tiny_config("bp", steps_per_dispatch=3)).steps_per_dispatch(batch) == 3
    )


def test_prefetch_puts_one_item_ahead_of_the_consumer_and_keeps_the_order():
    events = []

    def put(item):
        events.append(f"put {item}")
        return item * 10

    got = []
    for value in sharding.prefetch(iter(range(4)), put, depth=2):
        events.append(f"take {value // 10}")
        got.append(value)
    assert got == [0, 10, 20, 30]
    # Item i + 1 is put before item i is taken; never more than one put item waits unused.
    assert events == [
        "put 0", "put 1", "take 0", "put 2", "take 1", "put 3", "take 2", "take 3"
    ]  # fmt: skip


def test_put_chunk_shards_the_batch_axis_not_the_step_axis():
    trainer = trainer_lib.Trainer(tiny_config("bp", num_devices=2))
    batches = trainer.train_batches(0)
    host = [next(batches) for _ in range(3)]
    chunk = sharding.put_chunk({k: np.stack([b[k] for b in host]) for k in host[0]}, trainer.mesh)
    image = chunk["image"]
    assert image.shape == (3, *host[0]["image"].shape)
    assert image.sharding.spec == jax.sharding.PartitionSpec(None, sharding.DATA)
    shards = sorted(image.addressable_shards, key=lambda s: s.index[1].start)
    half = host[0]["image"].shape[0] // 2
    for i, shard in enumerate(shards):
        assert shard.data.shape == (3, half, *host[0]["image"].shape[1:])
        expected = np.stack([b["image"][i * half : (i + 1) * half] for b in host])
        np.testing.assert_array_equal(np.asarray(shard.data), expected)


@pytest.mark.parametrize("dataset, augment", [("mnist", False), ("cifar10", True)])
def test_a_chunk_of_batches_is_the_batches_stacked(dataset, augment):
    config = tiny_config("bp", dataset=dataset, augment=augment, batch_size=16)
    trainer = trainer_lib.Trainer(config)
    for process in range(2):  # this process's half of every global batch
        one = trainer.ds.train_batches(16, 3, 5, process, 2, augment)
        many = trainer.ds.train_batches(16, 3, 5, process, 2, augment)
        next(one), next(many)
        singles = [next(one) for _ in range(20)]  # across the epoch's end (16 steps)
        chunks = [many.take(n) for n in (8, 4, 1, 7)]
        for key in ("image", "label"):
            expected = np.stack([b[key] for b in singles])
            got = np.concatenate([c[key] for c in chunks])
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("unroll", [False, True])
def test_the_nan_watch_sees_a_diverged_alignment_loss_under_a_finite_task_loss(unroll):
    """B can go NaN under its alignment loss while the task loss stays finite (seen on ResNet-8
    under ia and wm_reg); the scanned (or unrolled) step's watch must stop such a run too."""

    def train_step(state, batch):
        state = {**state, "step": state["step"] + 1}
        aligning = jnp.where(state["step"] >= 3, jnp.nan, 1.0)
        return state, {"train/loss": jnp.float32(2.3), "train/alignment_loss": aligning}

    multi_step = jax.jit(dispatch.make_multi_step(train_step, unroll=unroll))
    watch = {"finite": True, "step": 0, "loss": 0.0}
    state = {"step": jnp.int32(0), "rng": jax.random.PRNGKey(0)}
    state, watch, _ = multi_step(state, watch, jnp.zeros((5, 1)), 5)
    assert not bool(watch["finite"]) and int(watch["step"]) == 3


def test_an_unrolled_chunk_is_the_looped_chunk_and_padding_is_never_read():
    trainer = trainer_lib.Trainer(tiny_config("wm"))
    batches = trainer.train_batches(0)
    host = [next(batches) for _ in range(3)]
    stacked = {k: np.stack([b[k] for b in host]) for k in host[0]}
    # The looped form takes chunks padded to k batches: NaN padding would poison any step.
    padded = dispatch._padded(stacked, 5)
    assert padded["image"].shape[0] == 5 and not padded["image"][3:].any()
    padded["image"][3:] = np.nan
    watch = {"finite": True, "step": 0, "loss": 0.0}
    train_step = steps_lib.make_train_step(trainer.model, trainer.tx, trainer.config.loss)
    results = []
    for unroll, chunk in ((False, padded), (True, stacked)):
        multi_step = dispatch.make_multi_step(train_step, unroll=unroll)
        chunk = sharding.put_chunk(chunk, trainer.mesh)
        results.append(jax.jit(multi_step)(trainer.fresh_state(), watch, chunk, 3))
    (scanned_state, scanned_watch, scanned), (state, watch, last) = results
    assert int(state["step"]) == 3
    assert jax.tree.map(float, scanned_watch) == jax.tree.map(float, watch)
    scanned, unrolled = jax.tree.leaves((scanned_state, scanned)), jax.tree.leaves((state, last))
    for x, y in zip(scanned, unrolled, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_conv_nets_unroll_their_chunks_on_cpu_and_mlps_scan():
    assert jax.default_backend() == "cpu"
    mlp = trainer_lib.Trainer(tiny_config("bp"))
    assert not dispatch.conv_loop_is_slow(mlp.abstract_state)
    resnet = trainer_lib.Trainer(tiny_config("bp", **RESNET))
    assert dispatch.conv_loop_is_slow(resnet.abstract_state) and resnet.unrolled
    # Its chunks are compiled unrolled, so the automatic k stops at MAX_UNROLLED_STEPS.
    batch = next(resnet.train_batches(0))
    assert resnet.steps_per_dispatch(batch) == dispatch.MAX_UNROLLED_STEPS
