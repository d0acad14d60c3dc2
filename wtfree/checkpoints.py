"""Orbax checkpoints: save, and restore the newest readable one, setting aside unreadable ones."""

import contextlib
import errno
import logging
import shutil
import sys
import threading
import time
import traceback

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from wtfree import errors, logs, paths

# Where unreadable checkpoints go, next to checkpoints/ (never deleted).
UNREADABLE = "unreadable_checkpoints"


class OtherLayout(errors.RunError):
    """A readable checkpoint whose state tree is not the one the run builds (another version
    of wtfree wrote it): not damage, so it is never set aside."""


def make_manager(workdir: epath.PathLike, *, keep: int = 3) -> ocp.CheckpointManager:
    """A manager for ``workdir/checkpoints`` keeping the last ``keep`` checkpoints."""
    _drop_disk_full_reports()
    # A save that fails (a full disk) abandons TensorStore writes as a failed read abandons
    # reads: their callbacks then meet orbax's closed event loop, which is not for a person.
    _drop_abandoned_reads()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(paths.as_path(workdir) / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, state, *, force: bool = False) -> None:
    """Saves ``state`` at its step (asynchronously; call `finish` at the end).

    Raises:
      errors.StorageFull: this or the previous save ran out of space (`_disk_full`).
    """
    step = int(jax.device_get(state["step"]))
    if manager.latest_step() != step:
        with _out_of_space(manager, state):
            manager.save(step, args=ocp.args.StandardSave(state), force=force)


def finish(manager: ocp.CheckpointManager, state=None) -> None:
    """Waits for the saves under way and closes ``manager``; a save that ran out of space is
    `_disk_full`'s one line (``state``, the state saved last, sizes it)."""
    with _out_of_space(manager, state):
        manager.wait_until_finished()
    manager.close()


def is_disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` or one it came from is "no space left on device" (ENOSPC), as Python
    raises it or as TensorStore words it (``RESOURCE_EXHAUSTED ... [os_error_code='28']``)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "os_error_code='28'" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _nbytes(state) -> int:
    return sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(state))


def _free_bytes(directory: epath.Path) -> int | None:
    if paths.is_url(directory):
        return None
    return shutil.disk_usage(directory).free


@contextlib.contextmanager
def _out_of_space(manager: ocp.CheckpointManager, state):
    """Turns a save that ran out of space into `_disk_full`'s errors.StorageFull."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        # Orbax raises a failed save's error again at every later wait: say it once, as it was.
        reported = getattr(e, "wtfree_reported", None) or _disk_full(manager, state)
        e.wtfree_reported = reported
        raise reported from None


def _disk_full(manager: ocp.CheckpointManager, state) -> errors.StorageFull:
    """Removes the partial writes of the failed save (orbax's ``<step>.orbax-checkpoint-tmp*``
    directories) and says, in one line, which step failed, the bytes it needed, and the last
    good checkpoint, from which a rerun resumes."""
    directory = epath.Path(manager.directory)
    try:  # an earlier save still in flight finishes (or fails) first: its temporary directory
        # is a write in progress, not a partial one, until then
        manager.wait_until_finished()
    except Exception as e:
        if not is_disk_full(e):
            raise
    failed = []
    for partial in directory.glob("*.orbax-checkpoint-tmp*"):
        failed.append(partial.name.split(".")[0])
        if jax.process_index() == 0:
            partial.rmtree(missing_ok=True)
    manager.reload()
    good = manager.latest_step()
    needed = f"about {_nbytes(state):,} bytes" if state is not None else "more space"
    free = _free_bytes(directory)
    free_text = f", {free:,} free" if free is not None else ""
    last = f"step {good}" if good is not None else "none (a rerun starts from scratch)"
    if not failed and state is not None:  # it failed before writing anything
        failed.append(str(int(jax.device_get(state["step"]))))
    steps = ", ".join(sorted(set(failed), key=int)) or "?"
    return errors.StorageFull(
        f"no space left on device: the checkpoint at step {steps} in {directory} was not "
        f"written (it needs {needed}{free_text}) and its partial write is removed; the last "
        f"good checkpoint is {last}: free space, then rerun to resume from it"
    )


def _drop_disk_full_reports() -> None:
    """Orbax logs a failed background save at ERROR with a traceback, once per thread involved
    (three or four for one full disk), and asyncio reports each of its writes that failed the
    same way when they are collected ("Task exception was never retrieved"). A full disk reaches
    the user as `_disk_full`'s one line, so those reports, and only those, are not printed.
    Idempotent."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if _not_disk_full not in logger.filters:
            logger.addFilter(_not_disk_full)


def _not_disk_full(record: logging.LogRecord) -> bool:
    if record.exc_info and is_disk_full(record.exc_info[1]):
        return False
    return not is_disk_full(Exception(record.getMessage()))


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
    """Restores the checkpoint at ``step`` (default the latest) into ``abstract_state``'s
    shapes and shardings; returns None when there is none.

    Raises:
      OtherLayout: the checkpoint was saved from another state tree (one line: which leaves).
      errors.RunError: no checkpoint at ``step``, or it cannot be read (one line: why).
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    _check_step(manager, step)
    item = _item(manager, step)
    target = abstract_state
    try:
        _check_layout(item, abstract_state)
    except OtherLayout:
        # Saved while wtfree's own layers named B "kernel": read in that layout, then renamed.
        target = _old_feedback_names(abstract_state)
        try:
            _check_layout(item, target)
        except OtherLayout:
            target = None
        if target is None or target is abstract_state:
            raise
    with _reading(manager, step):
        state = manager.restore(step, args=ocp.args.StandardRestore(target))
    return state if target is abstract_state else _as_laid_out(abstract_state, state)


def restore_parts(manager: ocp.CheckpointManager, abstract_state, keys, step: int | None = None):
    """Only the entries ``keys`` of the state saved at ``step`` (default the latest), e.g. the
    model's variables for an evaluation: what the rest of the checkpoint holds (the optimizer
    state, whose layout an older wtfree may have written otherwise) is not read.

    Raises:
      errors.RunError: no checkpoint at ``step``, or its parts cannot be read (one line: why).
    """
    step = manager.latest_step() if step is None else step
    _check_step(manager, step)
    wanted = {key: abstract_state[key] for key in keys}
    parts = wanted
    saved = _saved_paths(_item(manager, step))
    if saved is not None and not _leaf_paths(wanted) <= saved:
        parts = _old_feedback_names(wanted)  # saved while own layers named B "kernel"
        if not _leaf_paths(parts) <= saved:
            parts = wanted  # another layout: the read says what is missing
    args = ocp.args.PyTreeRestore(
        item=parts,
        restore_args=ocp.checkpoint_utils.construct_restore_args(parts),
        partial_restore=True,
    )
    with _reading(manager, step), ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(_item(manager, step), args=args)
    return restored if parts is wanted else _as_laid_out(wanted, restored)


# B's leaf name under "feedback" in the state, and the one wtfree's own layers gave it before
# (layers.FEEDBACK_KERNEL): the name W has, which nnx.bridge cannot hold in one module.
_FEEDBACK_KERNEL, _OLD_FEEDBACK_KERNEL = "feedback_kernel", "kernel"


def _old_feedback_names(tree, under_feedback: bool = False):
    """``tree`` (a state, or any part of it: the optimizer's too) with every ``feedback_kernel``
    key below a ``feedback`` key named ``kernel``, as checkpoints of wtfree's own layers were
    laid out before; ``tree`` itself where there is none."""
    if isinstance(tree, dict):
        out, renamed = {}, False
        for key, value in tree.items():
            new_value = _old_feedback_names(value, under_feedback or key == "feedback")
            new_key = key
            if under_feedback and key == _FEEDBACK_KERNEL and _OLD_FEEDBACK_KERNEL not in tree:
                new_key = _OLD_FEEDBACK_KERNEL
            renamed |= new_key != key or new_value is not value
            out[new_key] = new_value
        return out if renamed else tree
    if isinstance(tree, tuple | list):
        values = [_old_feedback_names(v, under_feedback) for v in tree]
        if all(a is b for a, b in zip(values, tree, strict=True)):
            return tree
        return type(tree)(*values) if hasattr(tree, "_fields") else type(tree)(values)
    return tree


def _as_laid_out(abstract_state, restored):
    """``restored`` (read in the old names, ``_old_feedback_names(abstract_state)``'s layout)
    with ``abstract_state``'s names: the leaves correspond one to one, in the same order."""
    want = _leaf_paths_in_order(_old_feedback_names(abstract_state))
    if _leaf_paths_in_order(restored) != want:
        raise errors.RunError("a checkpoint in the old feedback layout did not map one to one")
    leaves = jax.tree.leaves(restored)
    return jax.tree.unflatten(jax.tree.structure(abstract_state), leaves)


def _leaf_paths_in_order(tree) -> list[str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return ["/".join(_key_name(k) for k in path) for path, _ in leaves]


def _key_name(key) -> str:
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def _saved_paths(item: epath.Path) -> set[str] | None:
    """The leaf paths of the state saved in ``item``; None where its metadata cannot be read."""
    try:
        return _leaf_paths(ocp.StandardCheckpointHandler().metadata(item))
    except Exception:  # unreadable metadata: a damaged checkpoint, judged by the read
        return None


def _item(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    """Where the state saved at ``step`` lies: "default" is the item name CheckpointManager
    gives a StandardSave."""
    return epath.Path(manager.directory) / str(step) / "default"


def _check_step(manager: ocp.CheckpointManager, step: int | None) -> None:
    if step not in manager.all_steps():
        raise errors.RunError(
            f"no checkpoint at step {step} in {manager.directory}; "
            f"have {sorted(manager.all_steps())}"
        )


@contextlib.contextmanager
def _reading(manager: ocp.CheckpointManager, step: int):
    """Turns whatever orbax and TensorStore raise on a damaged checkpoint into one line."""
    # Installed before the read: a failed read's siblings can finish (and complain) on
    # TensorStore's threads before the failure reaches this frame.
    _drop_abandoned_reads()
    try:
        yield
    except Exception as e:
        raise errors.RunError(
            f"checkpoint at step {step} in {manager.directory} is unreadable: {errors.one_line(e)}"
        ) from e


def _leaf_paths(tree) -> set[str]:
    """The tree's leaves as "a/b/0" paths: dict keys, attribute names and indices alike, so that a
    checkpoint's metadata (dicts and lists) compares with the state (also named tuples)."""

    return set(_leaf_paths_in_order(tree))


def _listed(paths: list[str], most: int = 3) -> str:
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(paths[:most]) + more if paths else "none"


def _check_layout(item: epath.Path, abstract_state) -> None:
    """Raises OtherLayout when the state saved in ``item`` (``_item``) was saved from a state
    tree other than ``abstract_state``'s. Metadata that cannot be read says nothing here: the
    read itself then tells damage apart."""
    directory = item.parent
    recorded = _saved_paths(item)
    if recorded is None:
        return
    expected = _leaf_paths(abstract_state)
    if recorded != expected:
        raise OtherLayout(
            f"checkpoint at step {directory.name} in {directory.parent} holds another state "
            "layout than this version of wtfree builds (only in the checkpoint: "
            f"{_listed(sorted(recorded - expected))}; only in the state: "
            f"{_listed(sorted(expected - recorded))}); it is left as it is: resume it with the "
            "version that wrote it, or train in a new workdir"
        )


def _drop_abandoned_reads() -> None:
    """A failed restore leaves orbax's reads of the other arrays behind as coroutines and
    TensorStore callbacks. When they finish or are collected (on TensorStore's threads, as late
    as the interpreter's exit) each prints a traceback (GeneratorExit, or "Event loop is closed"
    from ``call_soon_threadsafe`` on orbax's closed loop) for the failure already reported in one
    line. From now on those, and only those, are not printed: through ``sys.unraisablehook``,
    ``sys.excepthook`` and ``threading.excepthook``, whichever the callback's thread reports to.
    Idempotent."""
    if getattr(sys.unraisablehook, "wtfree_quiet", False):
        return
    previous_unraisable = sys.unraisablehook
    previous_except = sys.excepthook
    previous_thread = threading.excepthook

    def unraisable_hook(unraisable) -> None:
        code = getattr(unraisable.object, "cr_code", None)  # an abandoned coroutine's
        if getattr(code, "co_name", "").startswith("_read_array") or _is_closed_loop(
            unraisable.exc_value
        ):
            return
        previous_unraisable(unraisable)

    def except_hook(exc_type, exc_value, tb) -> None:
        if not _is_closed_loop(exc_value):
            previous_except(exc_type, exc_value, tb)

    def thread_hook(args) -> None:
        if not _is_closed_loop(args.exc_value):
            previous_thread(args)

    unraisable_hook.wtfree_quiet = True
    sys.unraisablehook = unraisable_hook
    sys.excepthook = except_hook
    threading.excepthook = thread_hook
    # A future among those reads that failed too is reported by asyncio's logger instead
    # ("Future exception was never retrieved"), when it is collected: drop that as well.
    logging.getLogger("asyncio").addFilter(_is_not_an_abandoned_read)


def _is_closed_loop(exc: BaseException | None) -> bool:
    """Whether ``exc`` is asyncio's complaint that a callback came after its loop closed."""
    return isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)


def _is_not_an_abandoned_read(record: logging.LogRecord) -> bool:
    """False for asyncio's report of an orbax array read whose failure was already reported."""
    if not record.exc_info or "never retrieved" not in str(record.msg):
        return True
    frames = traceback.extract_tb(record.exc_info[2])
    return not any(f.name.startswith(("_read_array", "async_deserialize")) for f in frames)


def _move_tree(src: epath.Path, dst: epath.Path) -> None:
    """Moves a directory; on cloud storage (no directory rename) file by file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not paths.is_url(src):
        src.rename(dst)
        return
    for root, _, files in src.walk():
        for name in files:
            target = dst / epath.Path(root).relative_to(src) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            (epath.Path(root) / name).copy(target)
    src.rmtree()


def set_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    """Moves checkpoint ``step`` out of the manager's sight, to ``unreadable_checkpoints/``."""
    directory = epath.Path(manager.directory)
    target = directory.parent / UNREADABLE / str(step)
    if target.exists():
        target = target.with_name(f"{step}-{int(time.time())}")
    _move_tree(directory / str(step), target)
    return target


def restore_newest_readable(manager: ocp.CheckpointManager, abstract_state):
    """The newest checkpoint that can be read, or None when there is no checkpoint.

    Each unreadable one (a host died while writing it, a disk filled up) is reported in one
    warning line (step and why) and set aside, never deleted.

    Raises:
      errors.RunError: there are checkpoints, and none of them can be read.
    """
    set_aside_steps = []
    state = None
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state = restore(manager, abstract_state, step)
            break
        except OtherLayout:
            raise
        except errors.RunError as e:
            reason = errors.one_line(e.__cause__ or e)
            if jax.process_index() == 0:
                target = set_aside(manager, step)
                logs.warn(f"checkpoint at step {step} is unreadable ({reason}); moved to {target}")
            set_aside_steps.append(step)
    if set_aside_steps:
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("wtfree: unreadable checkpoints set aside")
        manager.reload()
    if state is None and set_aside_steps:
        raise errors.RunError(
            f"no readable checkpoint in {manager.directory}: steps {set_aside_steps} are "
            f"unreadable and were moved to {epath.Path(manager.directory).parent / UNREADABLE}; "
            "rerun to start from scratch"
        )
    return state


def restore_or_none(directory: epath.PathLike, abstract_state):
    """The latest checkpoint under ``directory`` (a workdir or its checkpoints folder)."""
    path = paths.as_path(directory)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if not path.is_dir():
        raise errors.RunError(f"init_from={str(directory)!r} is not a directory")
    with ocp.CheckpointManager(path) as manager:
        return restore(manager, abstract_state)
