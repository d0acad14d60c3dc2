"""Running k train steps per jitted call: the multi-step, the chunk plan, the batches' stacking."""

import collections
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from wtfree import data, sharding, steps
from wtfree.steps import State

if TYPE_CHECKING:
    from wtfree.trainer import Trainer

# config.steps_per_dispatch = 0 (automatic) runs as many steps per jitted call as make at least
# DISPATCH_FLOPS of work, at most MAX_STEPS_PER_DISPATCH (MAX_UNROLLED_STEPS where the chunk is
# unrolled, ``conv_loop_is_slow``: its compile time grows with k) and DISPATCH_BYTES of stacked
# batches (every chunk is padded to k batches, unless unrolled), as a power of two. A call
# costs the loop ~0.8 ms of host work (benchmarks/loop.py: the seed MLP's epoch 18 ms shorter
# at 64 steps a call than at 16), under 2% of 16 GFLOP at this CPU's ~320 GFLOP/s.
DISPATCH_FLOPS = 16e9
DISPATCH_BYTES = 64 * 2**20
MAX_STEPS_PER_DISPATCH = 64
MAX_UNROLLED_STEPS = 4


# The measurements the NaN watch sums, where the train step logs them (``Trainer.watched``
# names the model's): B can diverge under its alignment loss while the task loss stays finite.
WATCHED = ("train/loss", "train/alignment_loss")


def make_multi_step(
    train_step,
    mirror_step=None,
    mirror_every: int = 1,
    unroll: bool = False,
    watched: Sequence[str] = WATCHED,
):
    r"""``multi_step(state, watch, chunk, n) -> (state, watch, measurements)``: one train step
    for each of the first ``n`` batches of ``chunk`` (batches stacked on a leading axis).

    Under a ``lax.fori_loop`` of ``n`` (a traced int32) iterations, so one compiled program runs
    chunks of any length up to the chunk's: the loop pads every chunk to ``k`` batches and the
    rows past ``n`` are never read. With ``unroll`` (``conv_loop_is_slow``) the chunk holds
    exactly ``n`` batches, stepped through as copies of the step in line, and ``n`` is unused
    (each length is its own program; the loop uses powers of two).

    With ``mirror_step`` (a kind's state step, ``kinds.StateStep``: the weight mirror's), the
    step that makes ``state["step"]`` a multiple of ``mirror_every`` is followed by a mirror
    batch whose key is ``_mirror_rng(state, 1, step)`` of the step's own (pre-step) number: the
    same steps and keys as one call per step. ``watch`` (``_watch_loss``) rides in the loop's
    carry, so the NaN watch costs no call of its own; it reads the sum of the ``watched``
    measurements the step logs. ``measurements`` are the last step's.
    """

    def mirror(state: State, rng) -> State:
        if mirror_every == 1:
            return mirror_step(state, rng)
        return lax.cond(state["step"] % mirror_every == 0, mirror_step, lambda s, _: s, state, rng)

    def one_step(state: State, watch: dict, batch):
        rng = steps._mirror_rng(state, 1, state["step"])
        state, measurements = train_step(state, batch)
        if mirror_step is not None:
            state = mirror(state, rng)
        loss = measurements[watched[0]]
        for name in watched[1:]:
            if name in measurements:
                loss = loss + measurements[name]
        return state, _watch_loss(watch, state["step"], loss), measurements

    def batch_at(chunk, i):
        return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False), chunk)

    def multi_step(state: State, watch: dict, chunk, n):
        if unroll:
            for i in range(jax.tree.leaves(chunk)[0].shape[0]):
                state, watch, measurements = one_step(state, watch, batch_at(chunk, i))
            return state, watch, measurements
        # The carry holds the last step's measurements: zeros of their shapes before the first.
        shapes = jax.eval_shape(one_step, state, watch, batch_at(chunk, 0))[2]
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return lax.fori_loop(
            0, n, lambda i, carry: one_step(*carry[:2], batch_at(chunk, i)), (state, watch, zeros)
        )

    return multi_step


def conv_loop_is_slow(abstract_state: State) -> bool:
    """Whether the model has convolutions (4-d kernels) and runs on XLA:CPU, which compiles a
    convolution's gradient inside a ``lax.scan`` body to a slow generic loop instead of its
    Eigen kernel (jax-ml/jax#12868; ResNet-8 on Fashion-MNIST: 1.02 s a step in a scan of one
    step, 0.055 s unscanned). Such models unroll their chunks (``make_multi_step``)."""
    kernels = jax.tree.leaves(abstract_state["params"])
    return jax.default_backend() == "cpu" and any(k.ndim == 4 for k in kernels)


def auto_steps_per_dispatch(
    train_step, abstract_state: State, batch: dict[str, np.ndarray], batch_size: int, mesh, unrolled
) -> int:
    """The power of two that gives a call ``DISPATCH_FLOPS`` of work (XLA's count of the jitted
    ``train_step`` on ``batch``'s shapes at the global ``batch_size``), capped by
    ``MAX_STEPS_PER_DISPATCH`` (``MAX_UNROLLED_STEPS`` where ``unrolled``) and
    ``DISPATCH_BYTES`` of stacked batches. A function of the config and the shapes alone, so
    every process and every resume gets the same."""
    size = batch_size  # the global batch; ``batch`` is this process's share
    spec = sharding.batch_sharded(mesh)
    shapes = {
        key: jax.ShapeDtypeStruct((size, *np.shape(v)[1:]), np.asarray(v).dtype, sharding=spec)
        for key, v in batch.items()
    }
    nbytes = sum(np.prod(s.shape) * s.dtype.itemsize for s in shapes.values())
    cost = train_step.trace(abstract_state, shapes).lower().cost_analysis()
    flops = float((cost or {}).get("flops", 0.0))
    longest = MAX_UNROLLED_STEPS if unrolled else MAX_STEPS_PER_DISPATCH
    k = min(longest, DISPATCH_BYTES / nbytes)
    if flops > 0:
        k = min(k, DISPATCH_FLOPS / flops)
    return 1 << max(0, int(k).bit_length() - 1)


def _fresh_watch() -> dict:
    """The NaN watch before any step, typed as ``_watch_loss`` returns it (not weakly typed, so
    the first call compiles the same program as every later one)."""
    return {"finite": np.bool_(True), "step": np.int32(0), "loss": np.float32(0.0)}


def _watch_loss(watch: dict, step, loss) -> dict:
    """Remembers whether every loss so far was finite, and the first that was not (step, value)."""
    finite = jnp.isfinite(loss)
    first = watch["finite"] & ~finite
    return {
        "finite": watch["finite"] & finite,
        "step": jnp.where(first, step, watch["step"]),
        "loss": jnp.where(first, loss, watch["loss"]),
    }


def _chunk_ends(
    config: ml_collections.ConfigDict, total: int, per_epoch: int, k: int
) -> Callable[[int], bool]:
    """``ends_chunk(t)``: whether the host must act after step ``t``: log (and, one step
    before, measure the alignment), evaluate, checkpoint, end the run, or ``t`` is a multiple of
    ``k``. The config's intervals are read once: the loop asks this of every step."""
    log, evaluate = config.log_every_steps, config.eval_every_steps
    save = config.checkpoint_every_steps

    def ends_chunk(t: int) -> bool:
        return (
            t % k == 0
            or t >= total - 1
            or t % log == 0
            or (t + 1) % log == 0
            or t % per_epoch == 0
            or t % evaluate == 0
            or t % save == 0
        )

    return ends_chunk


def plan_dispatches(
    start: int, total: int, ends_chunk, k: int, split: bool = True
) -> Iterator[tuple[int, bool]]:
    """``(steps, chunk_ends)`` of every jitted call from step ``start`` to ``total``.

    A chunk runs from one step where ``ends_chunk`` holds to the next (at most ``k`` steps).
    With ``split`` (unrolled chunks, one program per length) it is dispatched as calls of
    power-of-two lengths, longest first, so that at most log2(k) + 1 lengths are ever compiled;
    without, as one call. The chunk ends are a function of the step alone: an interrupted run
    and its resumption (which starts at a chunk end) cut the same chunks.
    """
    step = start
    while step < total:
        end = next(t for t in range(step + 1, step + k + 1) if ends_chunk(t))
        n = end - step
        while n:
            piece = 1 << (n.bit_length() - 1) if split else n
            n -= piece
            yield piece, n == 0
        step = end


def _stacked(batches: Iterator, sizes: Iterator[int], first=None) -> Iterator[dict]:
    """The next ``n`` batches stacked ``[n, B, ...]`` for every ``n`` of ``sizes``, in one gather
    where the iterator offers ``take(n)`` (``data.ArrayDataset``'s). ``first``: a batch already
    drawn from ``batches``, which leads the first chunk."""
    for n in sizes:
        if first is None and hasattr(batches, "take"):
            yield batches.take(n)
            continue
        parts = [first] if first is not None else []
        parts += [next(batches) for _ in range(n - len(parts))]
        first = None
        yield {key: np.stack([p[key] for p in parts]) for key in parts[0]}


def _padded(chunk: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """``chunk`` ([n, B, ...]) with zero batches after its own up to ``k``, in aligned buffers
    (``data.aligned_empty``); the steps never read them (``make_multi_step``)."""
    n = len(next(iter(chunk.values())))
    if n == k:
        return chunk
    padded = {}
    for key, value in chunk.items():
        padded[key] = data.aligned_empty((k, *value.shape[1:]), value.dtype)
        padded[key][:n] = value
        padded[key][n:] = 0
    return padded


def train_chunks(
    trainer: "Trainer", state: State, batches: Iterator, start: int, total: int, k: int, first=None
) -> Iterator[tuple[int, State, dict, dict, dict | None]]:
    """Runs steps ``start`` to ``total`` as ``trainer.train_steps`` calls of the chunks that
    ``plan_dispatches`` cuts (``k`` steps at most), with the batches stacked and put a call
    ahead (``sharding.prefetch``).

    Args:
      trainer: the run's Trainer.
      state: the state at step ``start``.
      batches: this process's batches from step ``start`` on (one per step), or from
        ``start + 1`` on where ``first`` is step ``start``'s batch.
      start: the first step; a chunk end (0, or a step the run checkpointed at).
      total: the run's last step.
      k: the longest chunk (``trainer.steps_per_dispatch``).
      first: step ``start``'s batch, if already drawn from ``batches``.

    Unless ``trainer.unrolled``, every chunk is padded to ``k`` batches (``_padded``) and run
    by the one program ``make_multi_step`` compiles for all lengths; unrolled chunks are put
    as they are, in the power-of-two pieces of ``plan_dispatches``.

    Returns:
      An iterator of ``(step, state, watch, measurements, alignment)`` at every chunk end:
      the state after ``step``, the NaN watch so far (``loop._check_finite``), the last step's train
      measurements, and before a logged step (``step % config.log_every_steps == 0`` or
      ``total``) ``measure_step`` of the state before it, else None.
    """
    config = trainer.config
    ends_chunk = _chunk_ends(config, total, trainer.steps_per_epoch, k)
    plan, planned = itertools.tee(
        plan_dispatches(start, total, ends_chunk, k, split=trainer.unrolled)
    )
    sizes = (n for n, _ in planned)
    chunks = _stacked(batches, sizes, first)
    if not trainer.unrolled:  # one program for every length: chunks of k batches
        chunks = (_padded(chunk, k) for chunk in chunks)
    chunks = sharding.prefetch(chunks, functools.partial(sharding.put_chunk, mesh=trainer.mesh))
    replicated = sharding.replicated(trainer.mesh)
    watch = jax.device_put(_fresh_watch(), replicated)
    in_flight = collections.deque()
    step, alignment = start, None
    for (n, chunk_end), chunk in zip(plan, chunks, strict=True):
        if (step + n) % config.log_every_steps == 0 or step + n == total:
            # A call of one step: the step before a logged one ends a chunk.
            alignment = trainer.measure_step(state, trainer.first_of_chunk(chunk))
        state, watch, measurements = trainer.train_steps(state, watch, chunk, np.int32(n))
        step += n
        in_flight.append(measurements)
        if len(in_flight) > 2:
            # At most two calls in flight: with several CPU devices, queueing dozens of
            # collective steps deadlocks XLA's CPU rendezvous; two keep the device busy.
            jax.block_until_ready(in_flight.popleft())
        if chunk_end:
            yield step, state, watch, measurements, alignment
            alignment = None
