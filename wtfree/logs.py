"""Run logs: metrics.jsonl, TensorBoard events (no TensorFlow), and a progress line."""

import json
import logging as std_logging
import os
import time

import jax
from absl import logging


class MetricWriter:
    """Writes ``{"step", "epoch", **values}`` lines to ``workdir/metrics.jsonl`` and the same
    scalars to TensorBoard event files (tensorboardX). Does nothing when not ``enabled`` (on
    every process but the first)."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, epoch: float, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """The lines of ``workdir/metrics.jsonl``, parsed."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A progress line on log steps: step, epoch, loss, steps/s, ETA."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total = total_steps
        self._last_step, self._last_time = start_step, time.perf_counter()

    def report(self, step: int, epoch: float, loss: float) -> None:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if rate > 0 else "?"
        say(
            f"step {step}/{self.total}  epoch {epoch:.2f}  loss {loss:.4f}  "
            f"{rate:.1f} steps/s  ETA {eta_text}"
        )


def quiet() -> None:
    """Only warnings from the libraries' logs: orbax reports every file it writes at INFO."""
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger().setLevel(std_logging.WARNING)


def say(line: str) -> None:
    """A line for the person at the terminal (stdout, flushed), from the first process only."""
    if jax.process_index() == 0:
        print(line, flush=True)
