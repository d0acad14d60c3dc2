"""The training loop: init_state, train_step, mirror_step, eval_step, train_and_evaluate."""

import functools
import itertools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import traverse_util
from jax import lax
from jax.sharding import PartitionSpec as P

from wtfree import checkpoints, data, layers, metrics, models, optim, rules, sharding
from wtfree import logs as logs_lib
from wtfree import preemption as preemption_lib

State = dict[str, Any]
# The collections a train state keeps; the rest (alignment, perturbations, ...) are transient.
STATE_COLLECTIONS = ("params", "feedback", "batch_stats")


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
    )
    return tx, schedule


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


ALIGNMENT_INPUTS = ("activations", *layers.ALIGNMENT_NOISE_RNGS)


def uses_alignment_loss(config: ml_collections.ConfigDict) -> bool:
    """Whether a layer of the configured model learns B by an alignment loss (sa, aa, ...)."""
    return any(
        rules.get(r).feedback == rules.LOSS
        for r in (config.rule, config.get("output_rule") or config.rule)
    )


def make_train_step(model, tx, loss_name: str, alignment=None):
    r"""``train_step(state, batch) -> (state, measurements)``: one step of the model's rule.

    With ``alignment`` (``config.alignment``; for the rules sa, aa, ia, wm_reg), the layers
    sow their alignment primitives and the step minimizes
    :math:`L_	ext{task} + \sum_	ext{layers} R_	ext{rule}(B)`. Each layer's R sees W and
    its input with the gradient stopped and the task loss gives B nothing, so in the one
    gradient W gets the task's alone and B its alignment loss's alone. ``alignment.input`` is
    ``activations`` (the layer's own input) or ``normal`` / ``uniform`` noise of std
    ``alignment.input_std``; ``alignment.coefficients`` maps each rule to its alpha, beta,
    gamma (``wtfree.rules.alignment``).
    """
    loss_fn = metrics.get_loss(loss_name)
    if alignment is not None and alignment.input not in ALIGNMENT_INPUTS:
        raise ValueError(
            f"alignment.input={alignment.input!r}; allowed: {', '.join(ALIGNMENT_INPUTS)}"
        )

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
        return rules.alignment.total_loss(sown, coefficients, scale)

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
        measurements = {
            "train/loss": value,
            "train/accuracy": metrics.correct(logits, batch["label"]).mean(),
        }
        if alignment is not None:
            measurements["train/alignment_loss"] = aligning
        return new_state, measurements

    return train_step


def make_measure_step(model, loss_name: str):
    """``measure(state, batch) -> measurements``: per layer the angle of B to W, ||B||/||W||,
    and the angle between the error the rule sends to each layer and backprop's (same batch)."""
    loss_fn = metrics.get_loss(loss_name)
    bp_model = model.clone(rule="bp", output_rule="bp")

    def deltas(m, variables, state, batch):
        x = batch["image"]
        shapes = jax.eval_shape(
            lambda: _apply(m, variables, x, False, mutable=[layers.PERTURBATIONS])[1]
        )[layers.PERTURBATIONS]
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
        for k in top_k:
            key = "accuracy" if k == 1 else f"accuracy_top{k}"
            sums[key] = jnp.sum(metrics.correct(logits, batch["label"], k) * mask)
        return sums

    return eval_step


def make_mirror_step(model, mesh, input_shape, *, learning_rate, decay, noise_std):
    r"""``mirror_step(state, rng) -> state``: one weight-mirror batch for every ``wm`` layer.

    Runs per device under ``jax.shard_map``: each device feeds every layer its own noise batch
    (the key folded with the device index), measures the Hebbian product H, and ``lax.pmean``
    averages H so that B stays identical everywhere:
    :math:`B \leftarrow B + \eta\sigma^2\,\mathrm{mean}_d H_d - \lambda B`.
    ``input_shape`` is the per-device noise batch (batch first); the model's forward values are
    unused, so XLA drops them.
    """

    def hebbian(variables, rng):
        # Mark W as differing per device: the Hebbian product is a vjp w.r.t. W, and a vjp
        # w.r.t. a device-invariant input sums over devices by itself (its transpose is a
        # psum), which would make the pmean below a sum.
        variables = jax.tree.map(lambda v: lax.pcast(v, sharding.DATA, to="varying"), variables)
        rng = jax.random.fold_in(rng, lax.axis_index(sharding.DATA))
        x = jnp.zeros(input_shape, jnp.float32)
        _, sown = _apply(model, variables, x, False, {layers.MIRROR_RNG: rng}, [layers.MIRROR])
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
    return {f"{split}/{k}": float(v / count) for k, v in totals.items()}


class Trainer:
    """Everything a run builds from its config: data, model, optimizer, jitted steps, state."""

    def __init__(self, config: ml_collections.ConfigDict, mesh=None):
        self.config = config
        self.mesh = mesh or sharding.make_mesh(config.get("num_devices"))
        sharding.check_batch_size(config.batch_size, self.mesh)
        self.ds = data.get_dataset(
            config.dataset, data_dir=config.get("data_dir"), idx_dir=config.get("idx_dir")
        )
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
        train_step = make_train_step(
            self.model,
            self.tx,
            config.loss,
            alignment=config.alignment if uses_alignment_loss(config) else None,
        )
        step_shardings = dict(
            in_shardings=(replicated, batch),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )
        self.train_step = jax.jit(train_step, **step_shardings)
        self.measure_step = jax.jit(make_measure_step(self.model, config.loss))
        self.eval_step = jax.jit(make_eval_step(self.model, config.loss, top_k))
        self.uses_mirror = any(
            rules.get(r).feedback == rules.MIRROR
            for r in (config.rule, config.get("output_rule") or config.rule)
        )
        if self.uses_mirror:
            m = config.mirror
            mirror_step = make_mirror_step(
                self.model,
                self.mesh,
                (m.batch_size, *self.ds.image_shape),
                learning_rate=m.learning_rate,
                decay=m.decay,
                noise_std=m.noise_std,
            )
            self.mirror_step = jax.jit(mirror_step, donate_argnums=0)

            def train_mirror_step(state: State, batch):
                """A training step, then a mirror batch, as one dispatch."""
                rng = _mirror_rng(state, 1, state["step"])
                state, measurements = train_step(state, batch)
                return mirror_step(state, rng), measurements

            self.train_mirror_step = jax.jit(train_mirror_step, **step_shardings)
        self.rng = rng

    def fresh_state(self) -> State:
        return self.init_state(self.rng)

    def train_batches(self, start_step: int):
        return self.ds.train_batches(
            global_batch_size=self.config.batch_size,
            seed=self.config.seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            augment=self.config.get("augment", False),
        )

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
    """The workdir's latest checkpoint, else ``config.init_from``'s (its step reset), else fresh."""
    state = checkpoints.restore(manager, trainer.abstract_state)
    if state is not None:
        logging.info("Resumed from %s at step %d", manager.directory, int(state["step"]))
        return state
    init_from = trainer.config.get("init_from")
    if init_from:
        state = checkpoints.restore_or_none(init_from, trainer.abstract_state)
        if state is None:
            raise ValueError(f"init_from={init_from!r} holds no checkpoint")
        logging.info("Initialized from %s", init_from)
        return {**state, "step": jnp.zeros_like(state["step"])}
    state = trainer.fresh_state()
    if trainer.uses_mirror:
        state = trainer.mirror_pretrain(state)
    return state


def _host(tree) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains as configured, logging to and checkpointing in ``workdir``; returns the last
    test measurements."""
    trainer = Trainer(config)
    is_main = jax.process_index() == 0
    writer = logs_lib.MetricWriter(workdir, enabled=is_main)
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    manager = checkpoints.make_manager(workdir, keep=config.get("keep_checkpoints", 3))
    preemption = preemption_lib.Preemption()
    try:
        return _train_loop(trainer, manager, writer, preemption)
    finally:
        # Whatever stops the run, the checkpoints already started are finished, never lost.
        manager.wait_until_finished()
        manager.close()
        writer.close()
        preemption.close()


def _train_loop(trainer: Trainer, manager, writer, preemption) -> dict[str, float]:
    config = trainer.config
    state = restore_or_init(trainer, manager)
    step = int(jax.device_get(state["step"]))
    total, per_epoch = trainer.total_steps, trainer.steps_per_epoch
    batches = trainer.train_batches(step)
    if step == 0:
        # Step 0's alignment, before any update, on the first batch (which then trains too:
        # one iterator, so a pipeline with worker processes starts once).
        first = next(batches)
        writer.write(
            0, 0.0, _host(trainer.measure_step(state, sharding.put_batch(first, trainer.mesh)))
        )
        batches = itertools.chain([first], batches)

    progress = logs_lib.Progress(total, start_step=step)
    last_test: dict[str, float] = {}
    while step < total:
        batch = sharding.put_batch(next(batches), trainer.mesh)
        log_now = (step + 1) % config.log_every_steps == 0 or step + 1 == total
        if log_now:
            alignment = trainer.measure_step(state, batch)
        if trainer.uses_mirror and (step + 1) % config.mirror.every == 0:
            state, measurements = trainer.train_mirror_step(state, batch)
        else:
            state, measurements = trainer.train_step(state, batch)
        step += 1
        if step % 8 == 0:
            # With several CPU devices, queueing dozens of collective steps without waiting
            # deadlocks XLA's CPU rendezvous; waiting now and then costs nothing measurable.
            jax.block_until_ready(measurements)

        epoch = step / per_epoch
        if log_now:
            values = {**_host(measurements), **_host(alignment)}
            values["train/learning_rate"] = float(trainer.schedule(step - 1))
            if not math.isfinite(values["train/loss"]):
                raise FloatingPointError(f"train/loss is {values['train/loss']} at step {step}")
            writer.write(step, epoch, values)
            progress.report(step, epoch, values["train/loss"])
        if step % per_epoch == 0 or step % config.eval_every_steps == 0 or step == total:
            last_test = trainer.evaluate(state)
            writer.write(step, epoch, last_test)
            logs_lib.say(f"step {step}  epoch {epoch:.2f}  " + json.dumps(last_test))
        if step % config.checkpoint_every_steps == 0 or step == total:
            checkpoints.save(manager, state)
        if preemption.reached(step):
            checkpoints.save(manager, state, force=True)
            logs_lib.say(f"Preempted: saved a checkpoint at step {step}; rerun to resume.")
            break
    return last_test


def evaluate_checkpoint(workdir: str, step: int | None = None) -> dict[str, float]:
    """Test measurements of the checkpoint at ``step`` (default the latest) in ``workdir``,
    built from the run's own resolved config; written to ``workdir/eval_<step>.json``."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"{workdir!r} holds no config.json: not a wtfree workdir")
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    trainer = Trainer(config)
    with checkpoints.make_manager(workdir) as manager:
        if manager.latest_step() is None:
            raise ValueError(f"{workdir!r} holds no checkpoint")
        state = checkpoints.restore(manager, trainer.abstract_state, step)
    result = {"step": int(state["step"]), **trainer.evaluate(state)}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_{result['step']}.json"), "w") as f:
            json.dump(result, f)
    return result
