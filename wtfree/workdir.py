"""A workdir belongs to one experiment: its config.json is checked on resume, and a lock file
keeps a second run out while one is using it."""

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import jax
import ml_collections
from etils import epath

from wtfree import errors, kinds, logs, optim, paths, rules

# Keys that may differ between the runs of one workdir: how long to train, how often to log,
# evaluate and checkpoint, how many steps one call runs, how much of the test set to use, where
# the data is, how many devices share the work. Everything else (model, rule, data, optimizer,
# seeds, batch size) makes another experiment, whose checkpoints would not fit or would mean
# something else.
MAY_CHANGE = frozenset(
    {
        "num_epochs",
        "num_train_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "steps_per_dispatch",
        "keep_checkpoints",
        "eval_batch_size",
        "eval_steps",
        "data_dir",
        "idx_dir",
        "num_devices",
        "init_from",
    }
)
# Keys added to the configs after runs were recorded, with the value that reproduces those runs:
# a config.json without one reads as holding that value, so the older workdirs still resume.
# ANY: every value does; a key ending in ".*" stands for its whole subtree; the first entry
# that names a key decides. ``alignment.*`` came with the alignment rules (issue 9): a run
# recorded before them used another rule, which never reads them; ``alignment.momentum`` came
# later, and -1 (W's momentum) is what the alignment runs recorded before it used. Before
# ``mirror.per_layer_batch`` (issue 20) every layer got the whole mirror batch.
ANY = object()
ADDED_KEYS = {
    "mirror.noise": "normal",
    "mirror.per_layer_batch": False,
    "alignment.momentum": -1.0,
    "alignment.*": ANY,
    # Either mask may be the one an older run used (see check_decay_mask).
    "optimizer.weight_decay_mask": ANY,
}
# Defaults that changed after runs were recorded: key -> (the old default, the new one). A workdir
# recorded with the old default (or before the key existed, where ADDED_KEYS reads it as the old
# default) resumes with it when the config holds the new one: the run goes on as it began. Issue
# 20 made Rademacher the mirror noise (10-25x cheaper to draw, the same training where measured),
# and gave LeNet's configs a mirror batch sized per layer (``mirror.per_layer_batch``).
CHANGED_DEFAULTS = {
    "mirror.noise": ("normal", "rademacher"),
    "mirror.per_layer_batch": (False, True),
}
# Keys whose unset value (None) stands for what the workdir recorded, else the default: a run
# resumes with its own value without the flag being given again. The weight-decay mask changed
# (commit db475b5, 2026-12-04 10:33 UTC: from every leaf of rank >= 2 to the kernels) before it
# was a key, so a workdir recorded without it may have used either; check_decay_mask asks.
UNSET_IS_RECORDED = ("optimizer.weight_decay_mask",)
DECAY_MASK = "optimizer.weight_decay_mask"
CONFIG = "config.json"
CHANGES = "config_changes.jsonl"
LOCK = "lock"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def as_json(config: ml_collections.ConfigDict) -> dict:
    """The config as config.json holds it (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def changed_keys(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``key -> (old, new)`` for every (dotted) key whose value differs or exists in one only."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _added_as(key: str, value: Any) -> bool:
    """Whether ``key`` at ``value`` reproduces a run recorded before ``key`` existed."""
    for added, then in ADDED_KEYS.items():
        if added == key or (added.endswith(".*") and key.startswith(added[:-1])):
            return then is ANY or then == value
    return False


def read_by() -> dict[str, str]:
    """``{"<section>.": kind}``: the config subtrees only the rules that learn B in one way read
    (``kinds.Kind.section``: ``mirror.`` for wm, ``alignment.`` for the alignment rules). For
    any other rule a change there is no other experiment (an older bp workdir still resumes
    after the mirror defaults changed)."""
    return {f"{kind.section}.": kind.name for kind in kinds.registered() if kind.section}


def _unread(config: dict) -> tuple[str, ...]:
    """The ``read_by()`` subtrees that no rule of ``config`` (its rule and output_rule) reads."""
    rule, output_rule = config.get("rule"), config.get("output_rule")
    if not {rule, output_rule or rule} <= rules.RULES.keys():
        return ()
    used = rules.feedback_kinds(rule, output_rule)
    return tuple(prefix for prefix, kind in read_by().items() if kind not in used)


def keep_recorded_defaults(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
    """Sets back in ``config`` every ``CHANGED_DEFAULTS`` key at its new default that
    ``workdir``'s config.json recorded at the old one, so that an older run resumes unchanged.

    Every process calls it before :func:`check_config` (which runs on process 0 alone), so that
    all of them train with the same values. A value other than the new default is the user's and
    is left for ``check_config`` to judge; so is a workdir without a readable config.json.

    Returns:
      ``key -> (new default, recorded value)`` for each key set back (a line is logged for each).
    """
    path = workdir / CONFIG
    if not path.exists():
        return {}
    try:
        recorded = _flat(json.loads(path.read_text()))
    except ValueError:
        return {}  # check_config says what is wrong with it
    kept = {}
    for key in UNSET_IS_RECORDED:
        *parents, last = key.split(".")
        tree = config
        for part in parents:
            tree = tree.get(part) if tree is not None else None
        if tree is None or tree.get(last) is not None or recorded.get(key) is None:
            continue
        tree[last] = recorded[key]
        kept[key] = (None, recorded[key])
        logs.say(f"{workdir} was recorded with {key}={recorded[key]!r}: resuming with it")
    for key, (old, new) in CHANGED_DEFAULTS.items():
        *parents, last = key.split(".")
        tree = config
        for part in parents:
            tree = tree.get(part) if tree is not None else None
        if tree is None or tree.get(last) != new:
            continue
        then = recorded[key] if key in recorded else old if _added_as(key, old) else None
        if then == old:
            tree[last] = old
            kept[key] = (new, old)
            logs.say(
                f"{workdir} was recorded with {key}={old!r} (the default then): resuming with it; "
                f"a new workdir (or --config.init_from={workdir}) trains with {new!r}"
            )
    return kept


def check_decay_mask(config: ml_collections.ConfigDict, workdir: epath.Path, params: Any) -> None:
    """Stops a resumed run whose weight-decay mask is unknown and matters.

    A workdir recorded before ``optimizer.weight_decay_mask`` existed trained with the mask of
    every leaf of rank >= 2 (``rank``) if it began before commit db475b5 (2026-12-04 10:33
    UTC), with the kernels' (``kernels``) after; nothing it holds says which. Where the two
    masks decay the same leaves of ``params`` (every wtfree model but the ViT) either goes on
    as it began; otherwise, unless the config names one, the run stops here in one line.

    Args:
      config: the run's config, after :func:`keep_recorded_defaults`.
      workdir: the workdir.
      params: the model's parameters (shapes suffice).

    Raises:
      errors.RunError: the mask is unknown and matters (one line naming both choices).
    """
    path = workdir / CONFIG
    if not path.exists() or config.get("optimizer", {}).get("weight_decay_mask") is not None:
        return
    try:
        recorded = _flat(json.loads(path.read_text()))
    except ValueError:
        return  # check_config said what is wrong with it
    if DECAY_MASK in recorded:
        return
    masks = [jax.tree.leaves(mask(params)) for mask in optim.DECAY_MASKS.values()]
    if all(m == masks[0] for m in masks):
        return
    raise errors.RunError(
        f"{workdir} was recorded before {DECAY_MASK} existed, and its model's weight decay "
        f"depends on it: pass --config.{DECAY_MASK}=rank if the run began before 2026-12-04 "
        "10:33 UTC (commit db475b5: every parameter of rank >= 2 decayed), =kernels if after"
    )


def check_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
    """The changes to ``workdir``'s config.json, all of them in ``MAY_CHANGE`` or in a subtree
    that the run's rules never read (``read_by``).

    Raises:
      errors.RunError: a key outside ``MAY_CHANGE`` changed (one line listing them).
    """
    path = workdir / CONFIG
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise errors.RunError(f"{path} is not JSON ({e}); is {workdir} a wtfree workdir?") from e
    new = as_json(config)
    changes = changed_keys(old, new)
    recorded = _flat(old)
    for key in [k for k in changes if k not in recorded]:
        if _added_as(key, changes[key][1]):
            del changes[key]
    # Only where the rules are the same: a changed rule is refused, with its subtrees.
    unread = _unread(new) if "rule" not in changes and "output_rule" not in changes else ()
    refused = sorted(k for k in changes if k not in MAY_CHANGE and not k.startswith(unread))
    if refused:
        listed = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused)
        raise errors.RunError(
            f"{workdir} holds another experiment: changed {listed}; use a new workdir, or "
            f"--config.init_from={workdir} to start a new run from its checkpoint"
        )
    return changes


def record_config(config: ml_collections.ConfigDict, workdir: epath.Path, changes: dict) -> None:
    """Writes config.json; accepted changes also get a line in config_changes.jsonl."""
    workdir.mkdir(parents=True, exist_ok=True)
    if changes:
        line = json.dumps({"time": time.time(), "changes": changes}) + "\n"
        path = workdir / CHANGES
        paths.write_text(path, (path.read_text() if path.exists() else "") + line)
        logs.say(
            "Config changes accepted: "
            + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        )
    paths.write_text(workdir / CONFIG, config.to_json_best_effort(indent=2))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """``workdir/lock``, held by process 0 of the run that uses the workdir.

    It names its holder (host, pid, a random token) and the time of its last heartbeat, which a
    thread renews every ``heartbeat`` seconds. A lock counts as free when its holder is a dead
    process on this host, or its heartbeat is older than ``stale_after`` seconds (a host that
    was killed). The heartbeat also checks that the lock is still this run's; if another run
    took it, ``lost`` becomes true and the train loop stops.
    """

    def __init__(self, workdir: epath.Path, *, heartbeat: float = 10.0, stale_after: float = 60.0):
        self.path = workdir / LOCK
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _write(self) -> None:
        record = {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.time(),
        }
        paths.write_text(self.path, json.dumps(record))

    def _free(self, holder: dict | None) -> bool:
        if holder is None:
            return True
        if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0))):
            return True
        return time.time() - float(holder.get("time", 0)) > self.stale_after

    def acquire(self) -> None:
        """Takes the lock, or raises errors.RunError (one line) when another run holds it or
        the workdir cannot be a directory."""
        workdir = self.path.parent
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise errors.RunError(
                f"workdir {str(workdir)!r} is a file, or lies under one; allowed: a directory "
                "(new, or a wtfree workdir)"
            ) from None
        holder = self._read()
        if not self._free(holder):
            raise errors.RunError(
                f"{self.path.parent} is in use by another run (pid {holder.get('pid')} on "
                f"{holder.get('host')}, alive {time.time() - holder['time']:.0f} s ago); "
                "wait for it to end, or use another workdir"
            )
        self._write()
        time.sleep(0.1)  # two runs that wrote at once: the last writer wins, the other stops
        if (self._read() or {}).get("token") != self.token:
            raise errors.RunError(f"{self.path.parent} was just taken by another run")
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            if (self._read() or {}).get("token") != self.token:
                self.lost = True
                return
            self._write()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if not self.lost and (self._read() or {}).get("token") == self.token:
                self.path.unlink(missing_ok=True)
