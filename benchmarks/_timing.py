"""Timing helpers shared by the benchmarks: interleaved repeats, medians, spread, machine load."""

import importlib.util
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

import jax

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
    """``get_config(arg)`` of ``configs/<name>.py``, loaded from its path."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)  # configs import their siblings as `configs.common`
    path = os.path.join(REPO_ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def config_exists(name: str) -> bool:
    return os.path.exists(os.path.join(REPO_ROOT, "configs", f"{name}.py"))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages and the core count, as one line."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


class Stepper:
    """Runs ``step(carry) -> (carry, result)`` ``n`` times and returns the seconds taken.

    Blocks on the result every ``block_every`` steps, as the train loop does (with several CPU
    devices, dozens of queued collective steps deadlock XLA's CPU rendezvous), and on the carry
    at the end, so the time covers the compute and not only the dispatch.
    """

    def __init__(self, step: Callable, carry, block_every: int = 8):
        self.step = step
        self.carry = carry
        self.block_every = block_every

    def __call__(self, n: int) -> float:
        carry, result = self.carry, None
        start = time.perf_counter()
        for i in range(n):
            carry, result = self.step(carry)
            if i % self.block_every == self.block_every - 1:
                jax.block_until_ready(result)
        jax.block_until_ready((carry, result))
        seconds = time.perf_counter() - start
        self.carry = carry
        return seconds


def interleaved(
    runs: dict[str, Callable[[], float]], repeats: int, seed: int = 0
) -> dict[str, list[float]]:
    """Calls every run once per repeat, in a fresh random order each repeat.

    Interleaving spreads a slow period of a shared machine over all runs instead of charging it
    to whichever happened to run then; the medians over repeats then ignore the worst of it.
    """
    order = list(runs)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            times[name].append(runs[name]())
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float:
    """(max - min) / median: the relative range over the repeats."""
    return (max(values) - min(values)) / statistics.median(values)


def paired_ratios(times: dict[str, list[float]], reference: str) -> dict[str, list[float]]:
    """Per repeat, each run's time over the reference's time of the same repeat.

    Runs of one repeat are close in time, so their ratio cancels most of a slow period that
    hit the whole repeat; the median of these ratios is steadier than a ratio of medians.
    """
    ref = times[reference]
    return {name: [t / r for t, r in zip(ts, ref, strict=True)] for name, ts in times.items()}


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header]]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
