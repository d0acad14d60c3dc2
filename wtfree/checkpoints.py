"""Orbax checkpoints: save, and restore the workdir's latest, else `init_from`, else nothing."""

import os

import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, *, keep: int = 3) -> ocp.CheckpointManager:
    """A manager for ``workdir/checkpoints`` keeping the last ``keep`` checkpoints."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"), options=options
    )


def save(manager: ocp.CheckpointManager, state, *, force: bool = False) -> None:
    """Saves ``state`` at its step (asynchronously; call ``manager.wait_until_finished``)."""
    step = int(jax.device_get(state["step"]))
    if manager.latest_step() != step:
        manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """Restores the checkpoint at ``step`` (default the latest) into ``abstract_state``'s
    shapes and shardings; returns None when there is none."""
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    if step not in manager.all_steps():
        raise ValueError(f"no checkpoint at step {step}; have {sorted(manager.all_steps())}")
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def restore_or_none(directory: str, abstract_state):
    """The latest checkpoint under ``directory`` (a workdir or its checkpoints folder)."""
    path = os.path.abspath(directory)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    if not os.path.isdir(path):
        raise ValueError(f"init_from={directory!r} is not a directory")
    with ocp.CheckpointManager(path) as manager:
        return restore(manager, abstract_state)
