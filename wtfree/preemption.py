"""Preemption: on SIGTERM every process agrees on a step, checkpoints there and stops."""

import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
    """Tells the train loop when to stop for a preemption, at the same step on every process.

    Multi-process runs use JAX's own preemption sync manager, which ``jax.distributed``
    installs with its SIGTERM notifier: ``reached_preemption_sync_point(counter)`` becomes true
    on every process at the same call once any of them got the signal. A single process catches
    SIGTERM itself (restoring the previous handler on ``close``).
    """

    def __init__(self):
        self.distributed = jax.process_count() > 1
        self._signalled = False
        self._previous = None
        if not self.distributed:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self._signalled = True

    def reached(self, counter: int) -> bool:
        """Whether to checkpoint now and stop.

        Call it at the same points of the run on every process (the train loop: at every chunk
        end), with a ``counter`` that grows by one per call: JAX's sync manager stops every
        process at the call numbered one past the highest any of them had made when the notice
        came, and a number that skips values would never be reached.
        """
        if self.distributed:
            return multihost_utils.reached_preemption_sync_point(counter)
        return self._signalled

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
