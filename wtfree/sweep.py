r"""Runs a sweep file's runs one after another, each as its own `python train.py` process.

    python -m wtfree.sweep configs/sweeps/mnist_rules.py --workdir runs/mnist_rules [--dry_run]

A sweep file defines ``get_sweep()`` returning a list of dicts::

    {"config": "configs/mnist_mlp.py:rule=kp",            # as train.py's --config
     "overrides": {"optimizer.learning_rate": 0.3},       # optional: --config.<key>=<value>
     "name": "kp_lr0.3"}                                  # optional: the run's sub-workdir

Config paths are relative to the repository root (where train.py is), which is every run's
working directory. Without a name, one is made from the config file, its ``:arg`` and the
overrides (``mnist_mlp-rule=kp-optimizer.learning_rate=0.3``). Each run gets
``<workdir>/<name>``; rerunning the sweep resumes every run from its own latest checkpoint
(a finished run has nothing left to do). A failing run is reported and the sweep goes on; the
sweep exits 1 at the end if any run failed. ``--dry_run`` prints the commands, one a line.
"""

import argparse
import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from wtfree import paths

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")
_ENTRY_KEYS = {"config", "overrides", "name"}


class SweepError(ValueError):
    """A sweep file that cannot be run, with a one-line message."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: train.py's ``--config``, its ``--config.*`` overrides, a name."""

    config: str
    overrides: dict[str, Any]
    name: str


def format_value(value: Any) -> str:
    """A value as ``--config.k=<value>`` takes it (config_flags parses numbers, tuples...)."""
    return value if isinstance(value, str) else repr(value)


def make_name(config: str, overrides: dict[str, Any]) -> str:
    """A readable, filesystem-safe name from the config file's stem, its :arg and overrides."""
    path, _, arg = config.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = [stem, *filter(None, arg.split(","))]
    parts += [f"{key}={format_value(value)}" for key, value in overrides.items()]
    name = "-".join(parts)
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name).lstrip("._-") or "run"


def _parse_entry(entry: Any, index: int) -> Run:
    where = f"entry {index}"
    if not isinstance(entry, dict):
        raise SweepError(f"{where} is a {type(entry).__name__}; expected a dict")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise SweepError(
            f"{where} has unknown keys {sorted(unknown)}; known: {sorted(_ENTRY_KEYS)}"
        )
    config = entry.get("config")
    if not isinstance(config, str) or not config:
        raise SweepError(f"{where} has no 'config' string")
    config_file = os.path.join(REPO_ROOT, config.partition(":")[0])
    if not os.path.isfile(config_file):
        raise SweepError(f"{where}: config file {config_file} does not exist")
    overrides = entry.get("overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise SweepError(f"{where}: 'overrides' must be a dict with string keys")
    name = entry.get("name")
    if name is None:
        name = make_name(config, overrides)
    elif not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise SweepError(
            f"{where}: name {name!r} is not filesystem-safe (letters, digits and ._=+- only)"
        )
    return Run(config=config, overrides=dict(overrides), name=name)


def load_sweep(path: str) -> list[Run]:
    """The runs of the sweep file at ``path``; raises SweepError (one line) if it is bad."""
    if not os.path.isfile(path):
        raise SweepError(f"no sweep file {path}")
    spec = importlib.util.spec_from_file_location("_wtfree_sweep_file", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the file's own error, whatever it is
        raise SweepError(f"{path}: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(f"{path} defines no get_sweep()")
    try:
        entries = module.get_sweep()
    except Exception as e:  # the file's own error, whatever it is
        raise SweepError(f"{path}: get_sweep() raised {type(e).__name__}: {e}") from e
    if not isinstance(entries, list | tuple) or not entries:
        raise SweepError(f"{path}: get_sweep() must return a non-empty list of dicts")
    try:
        runs = [_parse_entry(entry, i) for i, entry in enumerate(entries)]
    except SweepError as e:
        raise SweepError(f"{path}: {e}") from e
    seen: dict[str, int] = {}
    for i, run in enumerate(runs):
        if run.name in seen:
            raise SweepError(
                f"{path}: entries {seen[run.name]} and {i} have the same name {run.name!r}"
            )
        seen[run.name] = i
    return runs


def _set(config, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


def load_config(run: Run):
    """The run's config as train.py would build it: the file's ``get_config(arg)``, locked,
    with the overrides set; raises SweepError (one line) on a bad key or value."""
    path, _, arg = run.config.partition(":")
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)  # config files import configs.common
    spec = importlib.util.spec_from_file_location(
        "_wtfree_config_file", os.path.join(REPO_ROOT, path)
    )
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config(arg or None)
        config.lock()
        for key, value in run.overrides.items():
            _set(config, key, value)
    except Exception as e:  # the config file's own error, or a bad override
        raise SweepError(f"run {run.name}: {type(e).__name__}: {' '.join(str(e).split())}") from e
    return config


def validate_runs(runs: Sequence[Run]) -> None:
    """Checks every run's config (config_lib.validate) before the first run starts."""
    from wtfree import config_lib

    for run in runs:
        config = load_config(run)
        try:
            config_lib.validate(config)
        except ValueError as e:
            raise SweepError(f"run {run.name}: {e}") from e


def command(run: Run, workdir: str) -> list[str]:
    """The argv of ``run``, to be started in REPO_ROOT; its workdir is ``workdir/<name>``."""
    return [
        sys.executable,
        "train.py",
        f"--config={run.config}",
        f"--workdir={paths.as_path(workdir) / run.name}",
        *(f"--config.{key}={format_value(value)}" for key, value in run.overrides.items()),
    ]


def run_sweep(runs: Sequence[Run], workdir: str, dry_run: bool = False) -> list[tuple[str, int]]:
    """Runs ``runs`` one after another (or prints their commands); returns the failed runs'
    ``(name, exit code)``."""
    failed = []
    for i, run in enumerate(runs, start=1):
        argv = command(run, workdir)
        if dry_run:
            print(shlex.join(argv), flush=True)
            continue
        print(f"[{i}/{len(runs)}] {run.name}: {shlex.join(argv)}", flush=True)
        returncode = subprocess.run(argv, cwd=REPO_ROOT, check=False).returncode
        if returncode != 0:
            print(
                f"wtfree.sweep: run {run.name} failed with exit code {returncode}", file=sys.stderr
            )
            failed.append((run.name, returncode))
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wtfree.sweep", description=__doc__.splitlines()[0]
    )
    parser.add_argument("sweep", help="a sweep file defining get_sweep()")
    parser.add_argument("--workdir", required=True, help="each run goes to WORKDIR/<name>")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    try:
        runs = load_sweep(args.sweep)
        validate_runs(runs)
    except SweepError as e:
        print(f"wtfree.sweep: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    try:
        failed = run_sweep(runs, args.workdir, dry_run=args.dry_run)
    except KeyboardInterrupt:
        print("wtfree.sweep: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... --dry_run | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0 if args.dry_run else 1
    if args.dry_run:
        return 0
    if failed:
        names = ", ".join(f"{name} (exit {code})" for name, code in failed)
        print(f"wtfree.sweep: {len(failed)} of {len(runs)} runs failed: {names}", file=sys.stderr)
        return 1
    print(f"wtfree.sweep: all {len(runs)} runs done in {paths.as_path(args.workdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
