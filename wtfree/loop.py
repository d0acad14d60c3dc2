"""The train loop: workdir claim, resume, NaN watch, logging, checkpoints, evaluation."""

import json

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from wtfree import checkpoints, config_lib, dispatch, errors, paths, sharding, steps
from wtfree import logs as logs_lib
from wtfree import preemption as preemption_lib
from wtfree import workdir as workdir_lib
from wtfree.steps import State
from wtfree.trainer import Trainer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> dict:
    """Trains as configured, logging to and checkpointing in ``workdir`` (a local path or a URL
    such as ``gs://bucket/run``); returns the last test measurements.

    Raises:
      errors.RunError: ``workdir`` holds another experiment or is in use by another run, or none
        of its checkpoints can be read.
      errors.Diverged: the training loss became NaN or infinite.
    """
    workdir = paths.as_path(workdir)
    # A default changed since the workdir's run started (workdir.CHANGED_DEFAULTS) keeps the
    # value it recorded, on every process, before the config is checked and used.
    workdir_lib.keep_recorded_defaults(config, workdir)
    changes, lock = _claim_workdir(config, workdir)
    writer = manager = preemption = state = None
    try:
        trainer = Trainer(config)
        # Every process reads config.json, so all stop together; before it is rewritten.
        workdir_lib.check_decay_mask(config, workdir, trainer.abstract_state["params"])
        is_main = jax.process_index() == 0
        if is_main:
            workdir_lib.record_config(config, workdir, changes)
        manager = checkpoints.make_manager(workdir, keep=config.get("keep_checkpoints", 3))
        state = restore_or_init(trainer, manager)
        # Logs of steps after the restored one (a run killed after its last checkpoint) are cut.
        resume_step = int(jax.device_get(state["step"]))
        writer = logs_lib.MetricWriter(workdir, enabled=is_main, resume_step=resume_step)
        preemption = preemption_lib.Preemption()
        return _train_loop(trainer, state, manager, writer, preemption, lock)
    except OSError as e:  # metrics.jsonl, TensorBoard or config.json on a full disk
        if not checkpoints.is_disk_full(e):
            raise
        good = manager.latest_step() if manager is not None else None
        raise errors.StorageFull(
            f"no space left on device in {workdir} ({errors.one_line(e)}); the last good "
            f"checkpoint is step {good}: free space, then rerun to resume from it"
        ) from None
    finally:
        # Whatever stops the run, the checkpoints already started are finished, never lost.
        if manager is not None:
            checkpoints.finish(manager, state)
        if writer is not None:
            writer.close()
        if preemption is not None:
            preemption.close()
        if lock is not None:
            lock.release()


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
    # A kind's state step runs its pretraining passes first (the weight mirror's).
    return trainer.mirror_pretrain(trainer.fresh_state())


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


def _train_loop(trainer: Trainer, state, manager, writer, preemption, lock) -> dict[str, float]:
    """Trains from the restored state to the end, acting at chunk ends (``dispatch.train_chunks``).

    Chunks end where the host acts: at multiples of ``steps_per_dispatch`` and at every step
    that logs, evaluates or checkpoints, and one step before a logged one (its alignment is
    measured on the state before it). So everything lands on the steps it would with one step
    per call, and the results are bit-identical. A preemption is honoured at the first chunk
    end after the signal (every process agrees on which), and checkpoints there.
    """
    config = trainer.config
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
    chunks = dispatch.train_chunks(trainer, state, batches, step, total, k, first)

    progress = logs_lib.Progress(total, start_step=step)
    last_test: dict[str, float] = {}
    watched = " + ".join(trainer.watched)  # what make_multi_step watches
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


def _host(tree) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


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
        parts = (*steps.STATE_COLLECTIONS, "step")
        state = checkpoints.restore_parts(manager, trainer.abstract_state, parts, step)
    result = {"step": int(state["step"]), **trainer.evaluate(state)}
    if jax.process_index() == 0:
        paths.write_text(workdir / f"eval_{result['step']}.json", json.dumps(result))
    return result
