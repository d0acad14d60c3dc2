"""The device mesh and shardings: batch split over the "data" axis, state replicated."""

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
T = TypeVar("T")
U = TypeVar("U")


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over all devices (or the first ``num_devices``), axis "data", Auto.

    The axis type is stated because ``jax.make_mesh`` defaults to Explicit axes since JAX 0.9,
    under which contracting a sharded batch dimension (FA's ``x.T @ g``) is an error.
    """
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices}; this host sees 1..{len(devices)}")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def chunk_sharded(mesh: Mesh) -> NamedSharding:
    """Stacked batches ``[k, batch, ...]``: the batch axis split over "data", the step axis not."""
    return NamedSharding(mesh, P(None, DATA))


def put_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, sharding: NamedSharding | None = None
) -> dict[str, jax.Array]:
    """Assembles each process's share of a batch into global arrays sharded over "data"
    (``sharding``: by default ``batch_sharded``)."""
    sharding = sharding or batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)  # the same arrays, in a third less time
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def put_chunk(chunk: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's shares of ``k`` consecutive batches, stacked ``[k, batch, ...]``,
    into global arrays sharded as ``chunk_sharded``: one transfer for ``k`` steps."""
    return put_batch(chunk, mesh, chunk_sharded(mesh))


def prefetch(items: Iterable[T], put: Callable[[T], U], depth: int = 2) -> Iterator[U]:
    """``put(item)`` for every item, issued ``depth - 1`` items ahead of the consumer.

    When the consumer takes item i, item i + 1 is already put: it was assembled and its copy
    issued just before, while the device still ran the work dispatched on item i - 1. So the
    host's work and the copy overlap the device's instead of preceding it.
    """
    items = iter(items)
    queue = collections.deque(put(item) for item in itertools.islice(items, depth))
    while queue:
        yield queue.popleft()
        for item in itertools.islice(items, 1):
            queue.append(put(item))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """Raises ValueError when the global batch does not split evenly over devices and hosts."""
    n = mesh.size
    if global_batch_size % n or global_batch_size % jax.process_count():
        raise ValueError(
            f"batch_size={global_batch_size} must be divisible by the {n} devices "
            f"and {jax.process_count()} processes"
        )
