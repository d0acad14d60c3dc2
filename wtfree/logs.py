"""Run logs: metrics.jsonl, TensorBoard events (no TensorFlow), and a progress line."""

import json
import logging as std_logging
import sys
import time

import jax
from absl import logging
from etils import epath

from wtfree import paths

# On a URL, metrics.jsonl is rewritten whole (cloud objects cannot be appended to), so at most
# this often, and when the writer closes.
URL_FLUSH_SECONDS = 30.0


class _EpathRecordFile:
    """tensorboardX's writer factory for URLs: event files through ``etils.epath``."""

    @staticmethod
    def directory_check(path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def open(path: str):
        return epath.Path(path).open("wb")


def _register_tensorboard_urls() -> None:
    from tensorboardX import record_writer

    for scheme in paths.URL_SCHEMES:
        record_writer.register_writer_factory(scheme, _EpathRecordFile)


def kept_lines(text: str, resume_step: int) -> list[str]:
    """The lines of a metrics.jsonl that a run resumed at ``resume_step`` keeps: those of steps
    up to ``resume_step`` (the rerun logs every later step again; from scratch, ``resume_step``
    0, it logs step 0 again too), each a whole JSON line (a line torn by a kill is dropped)."""
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and 0 < resume_step and record.get("step", 0) <= resume_step:
            kept.append(line + "\n")
    return kept


class MetricWriter:
    """Writes ``{"step", "epoch", **values}`` lines to ``workdir/metrics.jsonl`` and the same
    scalars to TensorBoard event files (tensorboardX). Does nothing when not ``enabled`` (on
    every process but the first).

    A run resumed at ``resume_step`` first cuts what an earlier run logged after that step
    (`kept_lines`), and TensorBoard hides the earlier run's events from ``resume_step + 1`` on
    (tensorboardX's ``purge_step``), so every step appears once in both.
    """

    def __init__(self, workdir: epath.PathLike, *, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        workdir = paths.as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._path = workdir / "metrics.jsonl"
        self._url = paths.is_url(workdir)
        old = self._path.read_text() if self._path.exists() else ""
        self._lines = kept_lines(old, resume_step)
        if "".join(self._lines) != old:
            paths.write_text(self._path, "".join(self._lines))
        if self._url:
            # Cloud objects cannot be appended to: keep the whole file and rewrite it.
            self._flushed = time.monotonic()
        else:
            self._jsonl = self._path.open("a")
        from tensorboardX import SummaryWriter

        _register_tensorboard_urls()
        tensorboard = workdir / "tensorboard"
        purge = resume_step + 1 if resume_step > 0 else 0
        # tensorboardX names its file by the second and the host: a run resumed within the same
        # second would write the earlier run's file again (an object store replaces it, and
        # the earlier run's events are gone). The time in nanoseconds gives each writer its own
        # file, named so that files sort in the order they were written, the order TensorBoard
        # reads them in (a later run's purge_step hides what an earlier one logged after it).
        self._tb = SummaryWriter(
            str(tensorboard),
            purge_step=purge if tensorboard.exists() else None,
            filename_suffix=f".{time.time_ns():020d}",
        )

    def write(self, step: int, epoch: float, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, "epoch": epoch, **values}) + "\n"
        if self._url:
            self._lines.append(line)
            if time.monotonic() - self._flushed > URL_FLUSH_SECONDS:
                self._flush_url()
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for key, value in values.items():
            self._tb.add_scalar(key, value, step)

    def _flush_url(self) -> None:
        self._path.write_text("".join(self._lines))
        self._flushed = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            if self._url:
                self._flush_url()
            else:
                self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: epath.PathLike) -> list[dict]:
    """The lines of ``workdir/metrics.jsonl``, parsed; a last line torn by a kill (the run
    that resumes drops it) is left out."""
    lines = (paths.as_path(workdir) / "metrics.jsonl").read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise
    return records


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
    """Only warnings from the libraries' logs: orbax reports every file it writes at INFO.
    Also not TFDS's warning that a dataset's folder has no dataset_info.json, which it gives
    for every dataset not prepared yet (the offline MNIST copy's, before it is written)."""
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger().setLevel(std_logging.WARNING)
    absl_logger = logging.get_absl_logger()
    if _not_unprepared_tfds not in absl_logger.filters:
        absl_logger.addFilter(_not_unprepared_tfds)


def _not_unprepared_tfds(record: std_logging.LogRecord) -> bool:
    return "has no dataset_info.json" not in record.getMessage()


def say(line: str) -> None:
    """A line for the person at the terminal (stdout, flushed), from the first process only."""
    if jax.process_index() == 0:
        print(line, flush=True)


def warn(line: str) -> None:
    """A warning line on stderr, from the first process only."""
    if jax.process_index() == 0:
        print(f"warning: {line}", file=sys.stderr, flush=True)
