"""The training loop: init_state, train_step, mirror_step, eval_step, train_and_evaluate."""

import collections
import functools
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import traverse_util
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from wtfree import (
    checkpoints,
    config_lib,
    data,
    errors,
    layers,
    metrics,
    models,
    optim,
    paths,
    rules,
    sharding,
)
from wtfree import logs as logs_lib
from wtfree import preemption as preemption_lib
from wtfree import workdir as workdir_lib

State = dict[str, Any]
# The collections a train state keeps; the rest (alignment, perturbations, ...) are transient.
STATE_COLLECTIONS = ("params", "feedback", "batch_stats")
# config.steps_per_dispatch = 0 (automatic) runs as many steps per jitted call as make at least
# DISPATCH_FLOPS of work, at most MAX_STEPS_PER_DISPATCH (MAX_UNROLLED_STEPS where the chunk is
# unrolled, ``conv_loop_is_slow``: its compile time grows with k) and DISPATCH_BYTES of stacked
# batches (every chunk is padded to k batches, unless unrolled), as a power of two. A call
# costs the loop ~0.8 ms of host work (benchmarks/loop.py: the seed MLP's epoch 18 ms shorter
# at 64 steps a call than at 16), under 2% of 16 GFLOP at this CPU's ~320 GFLOP/s.
DISPATCH_FLOPS = 16e9
DISPATCH_BYTES = 64 * 2**20
MAX_STEPS_PER_DISPATCH = 64
MAX_UNROLLED_STEPS = 4


def make_model(config: ml_collections.ConfigDict, num_classes: int):
    """The configured model for ``num_classes`` outputs, with every name checked."""
    rules.get(config.rule)
    if config.get("output_rule"):
        rules.get(config.output_rule)
    kwargs = dict(config.get("model_kwargs", {}))
    dtype = jnp.dtype(config.get("dtype", "float32"))
    return models.get(config.model)(
        num_classes=num_classes,
        rule=config.rule,
        output_rule=config.get("output_rule") or None,
        dtype=dtype,
        **kwargs,
    )


def make_optimizer(config, steps_per_epoch: int, total_steps: int, trained_feedback):
    opt = config.optimizer
    schedule = optim.make_schedule(
        opt.schedule,
        opt.learning_rate,
        total_steps=total_steps,
        warmup_steps=int(opt.get("warmup_epochs", 0) * steps_per_epoch),
        boundaries=tuple(opt.get("boundaries", ())),
    )
    tx = optim.make_optimizer(
        schedule,
        trained_feedback,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay,
        alignment_scale=config.get("alignment", {}).get("learning_rate_scale", 1.0),
        alignment_momentum=_alignment_momentum(config),
    )
    return tx, schedule


def _alignment_momentum(config) -> float | None:
    """``config.alignment.momentum``; None (W's) where it is absent or negative."""
    momentum = config.get("alignment", {}).get("momentum", -1.0)
    return None if momentum < 0 else momentum


def init_variables(model, rng, input_shape) -> tuple[dict, dict]:
    """Initial variables (params, feedback, batch_stats) and the trained-feedback flags."""
    variables = model.init({"params": rng}, jnp.zeros(input_shape, jnp.float32), train=False)
    flags = variables.get(layers.TRAINED_FEEDBACK, {})
    return {k: variables[k] for k in STATE_COLLECTIONS if k in variables}, flags


def init_state(model, tx, rng, input_shape) -> State:
    """A fresh train state: a plain dict of arrays."""
    init_rng, rng = jax.random.split(rng)
    variables, _ = init_variables(model, init_rng, input_shape)
    trainable = {k: variables.get(k, {}) for k in ("params", "feedback")}
    return {
        "step": jnp.zeros((), jnp.int32),
        "rng": rng,
        **{k: variables.get(k, {}) for k in STATE_COLLECTIONS},
        "opt_state": tx.init(trainable),
    }


def _variables(state: State) -> dict:
    return {k: state[k] for k in STATE_COLLECTIONS if state[k]}


def _apply(model, variables, x, train: bool, rngs=None, mutable=()):
    """Applies the model; batch stats are updated in train mode when the model has them."""
    mutable = list(mutable)
    if train and "batch_stats" in variables:
        mutable.append("batch_stats")
    out = model.apply(variables, x, train=train, rngs=rngs, mutable=mutable or False)
    return out if mutable else (out, {})


def _step_rngs(state: State) -> dict:
    # Keyed by step, so a resumed run draws what an uninterrupted one would.
    return {
        layers.FEEDBACK_RNG: jax.random.fold_in(jax.random.fold_in(state["rng"], 0), state["step"])
    }


def uses_feedback(config: ml_collections.ConfigDict, kind: str) -> bool:
    """Whether a layer of the configured model learns its B in the way ``kind`` says
    (``rules.MIRROR``: by mirror batches; ``rules.LOSS``: by an alignment loss)."""
    return kind in rules.feedback_kinds(config.rule, config.get("output_rule"))


def make_train_step(model, tx, loss_name: str, alignment=None):
    r"""``train_step(state, batch) -> (state, measurements)``: one step of the model's rule.

    With ``alignment`` (``config.alignment``; for the rules sa, aa, ia, wm_reg), the layers
    sow their alignment primitives and the step minimizes
    :math:`L_\text{task} + \sum_\text{layers} R_\text{rule}(B)`. Each layer's R sees W and
    its input with the gradient stopped and the task loss gives B nothing, so in the one
    gradient W gets the task's alone and B its alignment loss's alone. ``alignment.input`` is
    ``activations`` (the layer's own input) or ``normal`` / ``uniform`` noise of std
    ``alignment.input_std``; ``alignment.coefficients`` maps each rule to its alpha, beta,
    gamma (``wtfree.rules.alignment``); ``alignment.positions`` (``sum`` or ``mean``) whether a
    conv's primitives that read x sum or average over its output positions. B's step size,
    ``alignment.learning_rate_scale`` times W's, is the optimizer's (``make_optimizer``).
    """
    loss_fn = metrics.get_loss(loss_name)
    if alignment is not None and alignment.input not in layers.ALIGNMENT_INPUTS:
        allowed = ", ".join(layers.ALIGNMENT_INPUTS)
        raise ValueError(f"alignment.input={alignment.input!r}; allowed: {allowed}")

    def rngs_for(state: State) -> dict:
        rngs = _step_rngs(state)
        if alignment is not None and alignment.input in layers.ALIGNMENT_NOISE_RNGS:
            stream = layers.ALIGNMENT_NOISE_RNGS[alignment.input]
            rngs[stream] = jax.random.fold_in(jax.random.fold_in(state["rng"], 3), state["step"])
        return rngs

    def alignment_loss(sown):
        if alignment is None:
            return jnp.zeros((), jnp.float32)
        # Noise primitives are measured at unit variance; they are quadratic in the input.
        scale = 1.0 if alignment.input == "activations" else alignment.input_std**2
        coefficients = {k: dict(v) for k, v in dict(alignment.coefficients).items()}
        positions = alignment.get("positions", "sum")
        return rules.alignment.total_loss(sown, coefficients, scale, positions)

    mutable = [layers.ALIGNMENT_LOSS] if alignment is not None else []

    def train_step(state: State, batch):
        def loss(trainable):
            variables = {**_variables(state), **trainable}
            logits, new = _apply(model, variables, batch["image"], True, rngs_for(state), mutable)
            per_example = loss_fn(logits.astype(jnp.float32), batch["label"])
            task = per_example.mean()
            aligning = alignment_loss(new.get(layers.ALIGNMENT_LOSS, {}))
            return task + aligning, (logits, new, task, aligning)

        trainable = {"params": state["params"], "feedback": state["feedback"]}
        (_, (logits, new, value, aligning)), grads = jax.value_and_grad(loss, has_aux=True)(
            trainable
        )
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        new_state = {
            **state,
            **trainable,
            "batch_stats": new.get("batch_stats", state["batch_stats"]),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        measurements = {"train/loss": value}
        if batch["label"].ndim == 1:  # class labels
            measurements["train/accuracy"] = metrics.correct(logits, batch["label"]).mean()
        else:  # regression targets
            measurements["train/nse"] = metrics.normalized_squared_error(logits, batch["label"])
        if alignment is not None:
            measurements["train/alignment_loss"] = aligning
        return new_state, measurements

    return train_step


def _normalizing(ds: data.Dataset, step):
    """``step(state, batch, ...)`` that first normalizes a batch of uint8 images on the device
    (``ds.normalize``); float images (other datasets, eval batches) pass as they are."""

    def normalizing(state, batch, *args):
        if batch["image"].dtype == jnp.uint8:
            batch = {**batch, "image": ds.normalize(batch["image"])}
        return step(state, batch, *args)

    return normalizing


def make_measure_step(model, loss_name: str):
    """``measure(state, batch) -> measurements``: per layer the angle of B to W, ||B||/||W||,
    and the angle between the error the rule sends to each layer and backprop's (same batch)."""
    loss_fn = metrics.get_loss(loss_name)
    # A stock model (models.STOCK) computes backprop already and sows nothing to measure.
    bp_model = model.clone(rule="bp", output_rule="bp") if hasattr(model, "rule") else model

    def deltas(m, variables, state, batch):
        x = batch["image"]
        shapes = jax.eval_shape(
            lambda: _apply(m, variables, x, False, mutable=[layers.PERTURBATIONS])[1]
        ).get(layers.PERTURBATIONS, {})
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def loss(perturbations):
            v = {**variables, layers.PERTURBATIONS: perturbations}
            logits, _ = _apply(m, v, x, True, _step_rngs(state))
            return loss_fn(logits.astype(jnp.float32), batch["label"]).mean()

        return jax.grad(loss)(zeros)

    def measure(state: State, batch):
        variables = _variables(state)
        _, sown = _apply(model, variables, batch["image"][:1], False, mutable=[layers.ALIGNMENT])
        out = metrics.alignment(sown.get(layers.ALIGNMENT, {}))
        bp_variables = {k: v for k, v in variables.items() if k != "feedback"}
        out.update(
            metrics.delta_angles(
                deltas(model, variables, state, batch), deltas(bp_model, bp_variables, state, batch)
            )
        )
        return out

    return measure


def make_eval_step(model, loss_name: str, top_k: tuple[int, ...] = (1,)):
    """``eval_step(state, batch) -> sums``: masked sums of loss and of correct predictions."""
    loss_fn = metrics.get_loss(loss_name)

    def eval_step(state: State, batch):
        logits, _ = _apply(model, _variables(state), batch["image"], False)
        logits = logits.astype(jnp.float32)
        mask = batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32))
        sums = {"loss": jnp.sum(loss_fn(logits, batch["label"]) * mask), "count": mask.sum()}
        if batch["label"].ndim > 1:  # regression targets: the NSE's two sums (see evaluate)
            error = jnp.sum(jnp.square(logits - batch["label"]), axis=-1)
            sums["nse/error"] = jnp.sum(error * mask)
            sums["nse/target"] = jnp.sum(jnp.sum(jnp.square(batch["label"]), axis=-1) * mask)
            return sums
        for k in top_k:
            key = "accuracy" if k == 1 else f"accuracy_top{k}"
            sums[key] = jnp.sum(metrics.correct(logits, batch["label"], k) * mask)
        return sums

    return eval_step


def make_mirror_step(
    model, mesh, input_shape, *, learning_rate, decay, noise_std, noise: str = "normal"
):
    r"""``mirror_step(state, rng) -> state``: one weight-mirror batch for every ``wm`` layer.

    Runs per device under ``jax.shard_map``: each device feeds every layer its own noise batch
    (the key folded with the device index), measures the Hebbian product H, and ``lax.pmean``
    averages H so that B stays identical everywhere:
    :math:`B \leftarrow B + \eta\sigma^2\,\mathrm{mean}_d H_d - \lambda B`.
    ``input_shape`` is the per-device noise batch (batch first); ``noise`` its distribution
    (``rules.MIRROR_NOISES``, unit variance). The model's forward values are unused, so XLA
    drops them.
    """
    if noise not in layers.MIRROR_NOISE_RNGS:
        raise ValueError(f"mirror.noise={noise!r}; allowed: {', '.join(layers.MIRROR_NOISE_RNGS)}")
    stream = layers.MIRROR_NOISE_RNGS[noise]

    def hebbian(variables, rng):
        # Mark W as differing per device: the Hebbian product is a vjp w.r.t. W, and a vjp
        # w.r.t. a device-invariant input sums over devices by itself (its transpose is a
        # psum), which would make the pmean below a sum.
        variables = jax.tree.map(lambda v: lax.pcast(v, sharding.DATA, to="varying"), variables)
        rng = jax.random.fold_in(rng, lax.axis_index(sharding.DATA))
        x = jnp.zeros(input_shape, jnp.float32)
        _, sown = _apply(model, variables, x, False, {stream: rng}, [layers.MIRROR])
        return lax.pmean(sown.get(layers.MIRROR, {}), sharding.DATA)

    per_device = jax.shard_map(hebbian, mesh=mesh, in_specs=(P(), P()), out_specs=P())

    def mirror_step(state: State, rng) -> State:
        h = traverse_util.flatten_dict(per_device(_variables(state), rng))
        feedback = traverse_util.flatten_dict(state["feedback"])
        for path, value in h.items():
            feedback[path] = rules.apply_hebbian(
                feedback[path], value, learning_rate=learning_rate, decay=decay, noise_std=noise_std
            )
        return {**state, "feedback": traverse_util.unflatten_dict(feedback)}

    return mirror_step


def _mirror_rng(state: State, stream: int, index) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(state["rng"], stream), index)


def make_multi_step(train_step, mirror_step=None, mirror_every: int = 1, unroll: bool = False):
    r"""``multi_step(state, watch, chunk, n) -> (state, watch, measurements)``: one train step
    for each of the first ``n`` batches of ``chunk`` (batches stacked on a leading axis).

    Under a ``lax.fori_loop`` of ``n`` (a traced int32) iterations, so one compiled program runs
    chunks of any length up to the chunk's: the loop pads every chunk to ``k`` batches and the
    rows past ``n`` are never read. With ``unroll`` (``conv_loop_is_slow``) the chunk holds
    exactly ``n`` batches, stepped through as copies of the step in line, and ``n`` is unused
    (each length is its own program; the loop uses powers of two).

    With ``mirror_step``, the step that makes ``state["step"]`` a multiple of ``mirror_every``
    is followed by a mirror batch whose key is ``_mirror_rng(state, 1, step)`` of the step's own
    (pre-step) number: the same steps and keys as one call per step. ``watch`` (``_watch_loss``)
    rides in the loop's carry, so the NaN watch costs no call of its own. ``measurements`` are
    the last step's.
    """

    def mirror(state: State, rng) -> State:
        if mirror_every == 1:
            return mirror_step(state, rng)
        return lax.cond(state["step"] % mirror_every == 0, mirror_step, lambda s, _: s, state, rng)

    def one_step(state: State, watch: dict, batch):
        rng = _mirror_rng(state, 1, state["step"])
        state, measurements = train_step(state, batch)
        if mirror_step is not None:
            state = mirror(state, rng)
        watched = measurements["train/loss"]
        if "train/alignment_loss" in measurements:
            # B can diverge under its alignment loss while the task loss stays finite.
            watched = watched + measurements["train/alignment_loss"]
        return state, _watch_loss(watch, state["step"], watched), measurements

    def batch_at(chunk, i):
        return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False), chunk)

    def multi_step(state: State, watch: dict, chunk, n):
        if unroll:
            for i in range(jax.tree.leaves(chunk)[0].shape[0]):
                state, watch, measurements = one_step(state, watch, batch_at(chunk, i))
            return state, watch, measurements
        # The carry holds the last step's measurements: zeros of their shapes before the first.
        shapes = jax.eval_shape(one_step, state, watch, batch_at(chunk, 0))[2]
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return lax.fori_loop(
            0, n, lambda i, carry: one_step(*carry[:2], batch_at(chunk, i)), (state, watch, zeros)
        )

    return multi_step


def conv_loop_is_slow(abstract_state: State) -> bool:
    """Whether the model has convolutions (4-d kernels) and runs on XLA:CPU, which compiles a
    convolution's gradient inside a ``lax.scan`` body to a slow generic loop instead of its
    Eigen kernel (jax-ml/jax#12868; ResNet-8 on Fashion-MNIST: 1.02 s a step in a scan of one
    step, 0.055 s unscanned). Such models unroll their chunks (``make_multi_step``)."""
    kernels = jax.tree.leaves(abstract_state["params"])
    return jax.default_backend() == "cpu" and any(k.ndim == 4 for k in kernels)


def evaluate(
    eval_step, state, ds, mesh, batch_size: int, split: str = "test", max_batches: int = 0
) -> dict:
    """Runs ``eval_step`` over a split (its first ``max_batches`` batches if > 0); returns
    ``{"<split>/loss": ..., ...}``."""
    totals = None
    batches = ds.eval_batches(
        split=split,
        global_batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for i, batch in enumerate(itertools.islice(batches, max_batches or None)):
        sums = eval_step(state, sharding.put_batch(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if i % 8 == 7:
            jax.block_until_ready(totals)  # see train_and_evaluate: never queue too many steps
    totals = jax.device_get(totals)
    count = totals.pop("count")
    out = {f"{split}/{k}": float(v / count) for k, v in totals.items() if not k.startswith("nse/")}
    if "nse/target" in totals:  # metrics.normalized_squared_error over the whole split
        out[f"{split}/nse"] = float(totals["nse/error"] / totals["nse/target"])
    return out


def prepare_data(ds: data.Dataset) -> None:
    """Process 0 prepares the data (the offline MNIST copy) first, the others wait: a data dir
    that all hosts share must not be written by two processes at once. Then the others find it
    prepared, or prepare their own copy where each host has its own disk."""
    if jax.process_index() == 0:
        ds.prepare()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("wtfree: data prepared")
        if jax.process_index() != 0:
            ds.prepare()


class Trainer:
    """Everything a run builds from its config: data, model, optimizer, jitted steps, state."""

    def __init__(self, config: ml_collections.ConfigDict, mesh=None):
        self.config = config
        self.mesh = mesh or sharding.make_mesh(config.get("num_devices"))
        sharding.check_batch_size(config.batch_size, self.mesh)
        self.ds = data.get_dataset(
            config.dataset,
            data_dir=config.get("data_dir"),
            idx_dir=config.get("idx_dir"),
            **config.get("dataset_kwargs", {}),
        )
        prepare_data(self.ds)
        self.model = make_model(config, self.ds.num_classes)
        self.steps_per_epoch = self.ds.steps_per_epoch(config.batch_size)
        self.total_steps = config.get("num_train_steps") or config.num_epochs * self.steps_per_epoch

        rng = jax.random.PRNGKey(config.seed)
        # Which B train with W shows in the structure alone, so no real init is needed.
        _, flags = jax.eval_shape(
            lambda: init_variables(self.model, rng, (1, *self.ds.image_shape))
        )
        self.tx, self.schedule = make_optimizer(
            config, self.steps_per_epoch, self.total_steps, flags
        )

        replicated = sharding.replicated(self.mesh)
        batch = sharding.batch_sharded(self.mesh)
        init = functools.partial(
            init_state, self.model, self.tx, input_shape=(1, *self.ds.image_shape)
        )
        self.init_state = jax.jit(init, out_shardings=replicated)
        self.abstract_state = jax.eval_shape(self.init_state, rng)
        self.abstract_state = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
            self.abstract_state,
        )
        top_k = (1, 5) if self.ds.num_classes >= 100 else (1,)
        # uint8 train batches where the dataset can give them, normalized inside the steps.
        train_step = _normalizing(
            self.ds,
            make_train_step(
                self.model,
                self.tx,
                config.loss,
                alignment=config.alignment if uses_feedback(config, rules.LOSS) else None,
            ),
        )
        step_shardings = dict(
            in_shardings=(replicated, batch),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )
        self.train_step = jax.jit(train_step, **step_shardings)
        self.measure_step = jax.jit(
            _normalizing(self.ds, make_measure_step(self.model, config.loss))
        )
        self.eval_step = jax.jit(make_eval_step(self.model, config.loss, top_k))
        self.uses_mirror = uses_feedback(config, rules.MIRROR)
        if self.uses_mirror:
            m = config.mirror
            mirror_step = make_mirror_step(
                self.model,
                self.mesh,
                (m.batch_size, *self.ds.image_shape),
                learning_rate=m.learning_rate,
                decay=m.decay,
                noise_std=m.noise_std,
                noise=m.get("noise", "normal"),
            )
            self.mirror_step = jax.jit(mirror_step, donate_argnums=0)

            def train_mirror_step(state: State, batch):
                """A training step, then a mirror batch, as one dispatch."""
                rng = _mirror_rng(state, 1, state["step"])
                state, measurements = train_step(state, batch)
                return mirror_step(state, rng), measurements

            self.train_mirror_step = jax.jit(train_mirror_step, **step_shardings)
        # Unrolled, every chunk length is a program of its own: powers of two. Otherwise one
        # program runs them all, on chunks padded to k batches (``train_chunks``).
        self.unrolled = conv_loop_is_slow(self.abstract_state)
        multi_step = make_multi_step(
            train_step,
            mirror_step if self.uses_mirror else None,
            config.mirror.every if self.uses_mirror else 1,
            unroll=self.unrolled,
        )
        self.train_steps = jax.jit(
            multi_step,
            in_shardings=(replicated, replicated, sharding.chunk_sharded(self.mesh), replicated),
            out_shardings=(replicated, replicated, replicated),
            donate_argnums=(0, 1),
        )
        self.first_of_chunk = jax.jit(lambda chunk: jax.tree.map(lambda x: x[0], chunk))
        self.rng = rng
        self._steps_per_dispatch = config.get("steps_per_dispatch", 0)

    def fresh_state(self) -> State:
        return self.init_state(self.rng)

    def train_batches(self, start_step: int, raw: bool = False):
        """This process's train batches from ``start_step`` on. ``raw``: as the train loop
        takes them, uint8 images where the dataset has them (``ds.raw_batches``), which the steps
        normalize on the device; float32 images otherwise (the steps take both)."""
        raw = {"raw": True} if raw and self.ds.raw_batches else {}
        return self.ds.train_batches(
            global_batch_size=self.config.batch_size,
            seed=self.config.seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            augment=self.config.get("augment", False),
            **raw,
        )

    def steps_per_dispatch(self, batch: dict[str, np.ndarray]) -> int:
        """``config.steps_per_dispatch``, or where it is 0 the power of two that gives a call
        ``DISPATCH_FLOPS`` of work (XLA's count of the train step on ``batch``'s shapes), capped
        by ``MAX_STEPS_PER_DISPATCH`` (``MAX_UNROLLED_STEPS`` where ``unrolled``) and
        ``DISPATCH_BYTES`` of stacked batches. A function of
        the config and the shapes alone, so every process and every resume gets the same."""
        if self._steps_per_dispatch:
            return self._steps_per_dispatch
        size = self.config.batch_size  # the global batch; ``batch`` is this process's share
        spec = sharding.batch_sharded(self.mesh)
        shapes = {
            key: jax.ShapeDtypeStruct((size, *np.shape(v)[1:]), np.asarray(v).dtype, sharding=spec)
            for key, v in batch.items()
        }
        nbytes = sum(np.prod(s.shape) * s.dtype.itemsize for s in shapes.values())
        cost = self.train_step.trace(self.abstract_state, shapes).lower().cost_analysis()
        flops = float((cost or {}).get("flops", 0.0))
        longest = MAX_UNROLLED_STEPS if self.unrolled else MAX_STEPS_PER_DISPATCH
        k = min(longest, DISPATCH_BYTES / nbytes)
        if flops > 0:
            k = min(k, DISPATCH_FLOPS / flops)
        self._steps_per_dispatch = 1 << max(0, int(k).bit_length() - 1)
        return self._steps_per_dispatch

    def mirror_pretrain(self, state: State) -> State:
        """The seed's mirror pass before training: ``mirror.pretrain_batches`` batches."""
        for i in range(self.config.mirror.pretrain_batches):
            state = self.mirror_step(state, _mirror_rng(state, 2, i))
            if i % 8 == 7:
                jax.block_until_ready(state["feedback"])
        return state

    def evaluate(self, state: State, split: str = "test") -> dict:
        return evaluate(
            self.eval_step,
            state,
            self.ds,
            self.mesh,
            self.config.get("eval_batch_size", 1000),
            split,
            max_batches=self.config.get("eval_steps", 0),
        )


def restore_or_init(trainer: Trainer, manager) -> State:
    """The workdir's newest readable checkpoint, else ``config.init_from``'s (its step reset),
    else fresh."""
    state = checkpoints.restore_newest_readable(manager, trainer.abstract_state)
    if state is not None:
        logging.info("Resumed from %s at step %d", manager.directory, int(state["step"]))
        return state
    init_from = trainer.config.get("init_from")
    if init_from:
        state = checkpoints.restore_or_none(init_from, trainer.abstract_state)
        if state is None:
            raise errors.RunError(f"init_from={init_from!r} holds no checkpoint")
        logging.info("Initialized from %s", init_from)
        return {**state, "step": jnp.zeros_like(state["step"])}
    state = trainer.fresh_state()
    if trainer.uses_mirror:
        state = trainer.mirror_pretrain(state)
    return state


def feedback_at_weights(state: State) -> State:
    """``state`` with every B replaced by its W: a diagnostic (experiments/feedback_at_weights.py)
    that starts a rule whose B learns toward W where it would end. Weight transport, once."""
    params = traverse_util.flatten_dict(state["params"])
    feedback = traverse_util.flatten_dict(state["feedback"])
    missing = sorted("/".join(k) for k in feedback if k not in params)
    if missing:
        raise ValueError(f"feedback without a weight of the same path: {', '.join(missing)}")
    copied = {k: params[k] for k in feedback}
    if any(params[k].shape != b.shape for k, b in feedback.items()):
        raise ValueError("a B whose shape is not its W's (dfa's direct feedback has no W)")
    return {**state, "feedback": traverse_util.unflatten_dict(copied)}


def _host(tree) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def _fresh_watch() -> dict:
    """The NaN watch before any step, typed as ``_watch_loss`` returns it (not weakly typed, so
    the first call compiles the same program as every later one)."""
    return {"finite": np.bool_(True), "step": np.int32(0), "loss": np.float32(0.0)}


def _watch_loss(watch: dict, step, loss) -> dict:
    """Remembers whether every loss so far was finite, and the first that was not (step, value)."""
    finite = jnp.isfinite(loss)
    first = watch["finite"] & ~finite
    return {
        "finite": watch["finite"] & finite,
        "step": jnp.where(first, step, watch["step"]),
        "loss": jnp.where(first, loss, watch["loss"]),
    }


def _check_finite(watch: dict, manager, watched: str = "train/loss") -> None:
    """Raises errors.Diverged once a loss was NaN or infinite; saves call it first, so no
    checkpoint ever holds a state that saw one. ``watched`` names the loss in the message."""
    watch = jax.device_get(watch)
    if watch["finite"]:
        return
    manager.wait_until_finished()
    last = manager.latest_step()
    good = (
        f"last good checkpoint: step {last} in {manager.directory}"
        if last is not None
        else "no checkpoint was saved"
    )
    raise errors.Diverged(
        f"{watched} is {float(watch['loss'])} at step {int(watch['step'])}; {good}"
    )


def _claim_workdir(config: ml_collections.ConfigDict, workdir: epath.Path):
    """On process 0: checks that ``workdir`` holds this experiment (or none) and locks it.
    Every process learns the outcome, so that all stop together before anything is written.

    Returns:
      ``(changes, lock)``: the accepted config changes and the lock (None on other processes).
    """
    changes, lock, error = {}, None, None
    if jax.process_index() == 0:
        try:
            lock = workdir_lib.Lock(workdir)
            lock.acquire()  # first, so that no other run rewrites config.json meanwhile
            changes = workdir_lib.check_config(config, workdir)
        except errors.RunError as e:
            error = e
            if lock is not None:
                lock.release()
                lock = None
    if jax.process_count() > 1:
        failed = multihost_utils.broadcast_one_to_all(jnp.int32(error is not None))
        if failed and error is None:
            error = errors.RunError(f"process 0 stopped the run on {workdir} (see its message)")
    if error is not None:
        raise error
    return changes, lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> dict:
    """Trains as configured, logging to and checkpointing in ``workdir`` (a local path or a URL
    such as ``gs://bucket/run``); returns the last test measurements.

    Raises:
      errors.RunError: ``workdir`` holds another experiment or is in use by another run, or none
        of its checkpoints can be read.
      errors.Diverged: the training loss became NaN or infinite.
    """
    workdir = paths.as_path(workdir)
    changes, lock = _claim_workdir(config, workdir)
    writer = manager = preemption = None
    try:
        trainer = Trainer(config)
        is_main = jax.process_index() == 0
        if is_main:
            workdir_lib.record_config(config, workdir, changes)
        writer = logs_lib.MetricWriter(workdir, enabled=is_main)
        manager = checkpoints.make_manager(workdir, keep=config.get("keep_checkpoints", 3))
        preemption = preemption_lib.Preemption()
        return _train_loop(trainer, manager, writer, preemption, lock)
    finally:
        # Whatever stops the run, the checkpoints already started are finished, never lost.
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
        if writer is not None:
            writer.close()
        if preemption is not None:
            preemption.close()
        if lock is not None:
            lock.release()


def _chunk_ends(
    config: ml_collections.ConfigDict, total: int, per_epoch: int, k: int
) -> Callable[[int], bool]:
    """``ends_chunk(t)``: whether the host must act after step ``t``: log (and, one step
    before, measure the alignment), evaluate, checkpoint, end the run, or ``t`` is a multiple of
    ``k``. The config's intervals are read once: the loop asks this of every step."""
    log, evaluate = config.log_every_steps, config.eval_every_steps
    save = config.checkpoint_every_steps

    def ends_chunk(t: int) -> bool:
        return (
            t % k == 0
            or t >= total - 1
            or t % log == 0
            or (t + 1) % log == 0
            or t % per_epoch == 0
            or t % evaluate == 0
            or t % save == 0
        )

    return ends_chunk


def plan_dispatches(
    start: int, total: int, ends_chunk, k: int, split: bool = True
) -> Iterator[tuple[int, bool]]:
    """``(steps, chunk_ends)`` of every jitted call from step ``start`` to ``total``.

    A chunk runs from one step where ``ends_chunk`` holds to the next (at most ``k`` steps).
    With ``split`` (unrolled chunks, one program per length) it is dispatched as calls of
    power-of-two lengths, longest first, so that at most log2(k) + 1 lengths are ever compiled;
    without, as one call. The chunk ends are a function of the step alone: an interrupted run
    and its resumption (which starts at a chunk end) cut the same chunks.
    """
    step = start
    while step < total:
        end = next(t for t in range(step + 1, step + k + 1) if ends_chunk(t))
        n = end - step
        while n:
            piece = 1 << (n.bit_length() - 1) if split else n
            n -= piece
            yield piece, n == 0
        step = end


def _stacked(batches: Iterator, sizes: Iterator[int], first=None) -> Iterator[dict]:
    """The next ``n`` batches stacked ``[n, B, ...]`` for every ``n`` of ``sizes``, in one gather
    where the iterator offers ``take(n)`` (``data.ArrayDataset``'s). ``first``: a batch already
    drawn from ``batches``, which leads the first chunk."""
    for n in sizes:
        if first is None and hasattr(batches, "take"):
            yield batches.take(n)
            continue
        parts = [first] if first is not None else []
        parts += [next(batches) for _ in range(n - len(parts))]
        first = None
        yield {key: np.stack([p[key] for p in parts]) for key in parts[0]}


def _padded(chunk: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """``chunk`` ([n, B, ...]) with zero batches after its own up to ``k``, in aligned buffers
    (``data.aligned_empty``); the steps never read them (``make_multi_step``)."""
    n = len(next(iter(chunk.values())))
    if n == k:
        return chunk
    padded = {}
    for key, value in chunk.items():
        padded[key] = data.aligned_empty((k, *value.shape[1:]), value.dtype)
        padded[key][:n] = value
        padded[key][n:] = 0
    return padded


def train_chunks(
    trainer: Trainer, state: State, batches: Iterator, start: int, total: int, k: int, first=None
) -> Iterator[tuple[int, State, dict, dict, dict | None]]:
    """Runs steps ``start`` to ``total`` as ``trainer.train_steps`` calls of the chunks that
    ``plan_dispatches`` cuts (``k`` steps at most), with the batches stacked and put a call
    ahead (``sharding.prefetch``).

    Args:
      trainer: the run's Trainer.
      state: the state at step ``start``.
      batches: this process's batches from step ``start`` on (one per step), or from
        ``start + 1`` on where ``first`` is step ``start``'s batch.
      start: the first step; a chunk end (0, or a step the run checkpointed at).
      total: the run's last step.
      k: the longest chunk (``trainer.steps_per_dispatch``).
      first: step ``start``'s batch, if already drawn from ``batches``.

    Unless ``trainer.unrolled``, every chunk is padded to ``k`` batches (``_padded``) and run
    by the one program ``make_multi_step`` compiles for all lengths; unrolled chunks are put
    as they are, in the power-of-two pieces of ``plan_dispatches``.

    Returns:
      An iterator of ``(step, state, watch, measurements, alignment)`` at every chunk end:
      the state after ``step``, the NaN watch so far (``_check_finite``), the last step's train
      measurements, and before a logged step (``step % config.log_every_steps == 0`` or
      ``total``) ``measure_step`` of the state before it, else None.
    """
    config = trainer.config
    ends_chunk = _chunk_ends(config, total, trainer.steps_per_epoch, k)
    plan, planned = itertools.tee(
        plan_dispatches(start, total, ends_chunk, k, split=trainer.unrolled)
    )
    sizes = (n for n, _ in planned)
    chunks = _stacked(batches, sizes, first)
    if not trainer.unrolled:  # one program for every length: chunks of k batches
        chunks = (_padded(chunk, k) for chunk in chunks)
    chunks = sharding.prefetch(chunks, functools.partial(sharding.put_chunk, mesh=trainer.mesh))
    replicated = sharding.replicated(trainer.mesh)
    watch = jax.device_put(_fresh_watch(), replicated)
    in_flight = collections.deque()
    step, alignment = start, None
    for (n, chunk_end), chunk in zip(plan, chunks, strict=True):
        if (step + n) % config.log_every_steps == 0 or step + n == total:
            # A call of one step: the step before a logged one ends a chunk.
            alignment = trainer.measure_step(state, trainer.first_of_chunk(chunk))
        state, watch, measurements = trainer.train_steps(state, watch, chunk, np.int32(n))
        step += n
        in_flight.append(measurements)
        if len(in_flight) > 2:
            # At most two calls in flight: with several CPU devices, queueing dozens of
            # collective steps deadlocks XLA's CPU rendezvous; two keep the device busy.
            jax.block_until_ready(in_flight.popleft())
        if chunk_end:
            yield step, state, watch, measurements, alignment
            alignment = None


def _train_loop(trainer: Trainer, manager, writer, preemption, lock) -> dict[str, float]:
    """Trains from the restored state to the end, acting at chunk ends (``train_chunks``).

    Chunks end where the host acts: at multiples of ``steps_per_dispatch`` and at every step
    that logs, evaluates or checkpoints, and one step before a logged one (its alignment is
    measured on the state before it). So everything lands on the steps it would with one step
    per call, and the results are bit-identical. A preemption is honoured at the first chunk
    end after the signal (every process agrees on which), and checkpoints there.
    """
    config = trainer.config
    state = restore_or_init(trainer, manager)
    step = int(jax.device_get(state["step"]))
    total, per_epoch = trainer.total_steps, trainer.steps_per_epoch
    if step >= total:
        return {}
    batches = trainer.train_batches(step, raw=True)
    # One iterator (its first batch drawn here), so a pipeline with worker processes starts once.
    first = next(batches)
    if step == 0:
        # Step 0's alignment, before any update, on the first batch (which then trains too).
        put = sharding.put_batch(first, trainer.mesh)
        writer.write(0, 0.0, _host(trainer.measure_step(state, put)))
    k = trainer.steps_per_dispatch(first)
    chunks = train_chunks(trainer, state, batches, step, total, k, first)

    progress = logs_lib.Progress(total, start_step=step)
    last_test: dict[str, float] = {}
    watched = "train/loss"
    if uses_feedback(config, rules.LOSS):
        watched = "train/loss + train/alignment_loss"  # what make_multi_step watches
    for calls, (step, state, watch, measurements, alignment) in enumerate(chunks):
        if lock is not None and lock.lost:
            raise errors.RunError(f"another run took over {manager.directory}; stopped")
        epoch = step / per_epoch
        if alignment is not None:  # a log step
            _check_finite(watch, manager, watched)
            values = {**_host(measurements), **_host(alignment)}
            values["train/learning_rate"] = float(trainer.schedule(step - 1))
            writer.write(step, epoch, values)
            progress.report(step, epoch, values["train/loss"])
        if step % per_epoch == 0 or step % config.eval_every_steps == 0 or step == total:
            _check_finite(watch, manager, watched)
            last_test = trainer.evaluate(state)
            writer.write(step, epoch, last_test)
            logs_lib.say(f"step {step}  epoch {epoch:.2f}  " + json.dumps(last_test))
        preempted = preemption.reached(calls)
        if step % config.checkpoint_every_steps == 0 or step == total or preempted:
            _check_finite(watch, manager, watched)
            checkpoints.save(manager, state, force=preempted)
        if preempted:
            logs_lib.say(f"Preempted: saved a checkpoint at step {step}; rerun to resume.")
            break
    return last_test


def evaluate_checkpoint(workdir: epath.PathLike, step: int | None = None) -> dict[str, float]:
    """Test measurements of the checkpoint at ``step`` (default the latest) in ``workdir``,
    built from the run's own resolved config; written to ``workdir/eval_<step>.json``.

    Raises:
      errors.RunError: not a workdir, no such checkpoint, or it cannot be read.
    """
    workdir = paths.as_path(workdir)
    config_path = workdir / workdir_lib.CONFIG
    if not config_path.exists():
        raise errors.RunError(f"{str(workdir)!r} holds no config.json: not a wtfree workdir")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    config_lib.validate_resources(config)  # the data may have moved since (ValueError)
    trainer = Trainer(config)
    with checkpoints.make_manager(workdir) as manager:
        if manager.latest_step() is None:
            raise errors.RunError(f"{str(workdir)!r} holds no checkpoint")
        # The model's variables alone: an evaluation needs no optimizer state.
        parts = (*STATE_COLLECTIONS, "step")
        state = checkpoints.restore_parts(manager, trainer.abstract_state, parts, step)
    result = {"step": int(state["step"]), **trainer.evaluate(state)}
    if jax.process_index() == 0:
        paths.write_text(workdir / f"eval_{result['step']}.json", json.dumps(result))
    return result
