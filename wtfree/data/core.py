"""What every data source shares: the Dataset contract, index arithmetic, and the registry."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]
Arrays = tuple[np.ndarray, np.ndarray]  # (images uint8 [N, H, W, C], labels int32 [N])

IMAGENET_SIZE = 224


@dataclasses.dataclass(frozen=True)
class Spec:
    """What an image dataset is, known without reading it."""

    num_classes: int
    image_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None  # per channel, of pixel / 255; None: only pixel / 255
    std: tuple[float, ...] | None = None


SPECS = {
    "mnist": Spec(10, (28, 28, 1)),
    "fashion_mnist": Spec(10, (28, 28, 1)),
    "cifar10": Spec(10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Spec(100, (32, 32, 3), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": Spec(
        1000, (IMAGENET_SIZE, IMAGENET_SIZE, 3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ),
}


def image_datasets() -> tuple[str, ...]:
    """The image datasets whose shapes `image_spec` knows without reading them."""
    return tuple(SPECS)


def image_spec(name: str) -> tuple[int, tuple[int, ...]]:
    """(classes, image shape) of the image dataset ``name`` without reading it."""
    return SPECS[name].num_classes, SPECS[name].image_shape


@functools.lru_cache(maxsize=8)
def scale_offset(spec: Spec, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """x * scale - offset == (x / 255 - mean) / std, flattened over the whole image."""
    std = np.asarray(spec.std, np.float64)
    scale = np.broadcast_to(1 / (255 * std), shape).astype(np.float32).ravel()
    offset = np.broadcast_to(np.asarray(spec.mean) / std, shape).astype(np.float32).ravel()
    return scale, offset


# Host batches are built in buffers aligned to this many bytes: XLA:CPU then takes them as they
# are (jax.device_put aliases the numpy buffer instead of copying it; 0.04 ms against 0.9 ms
# for a 64-step chunk of MNIST). numpy's own large buffers start 16 bytes past a page.
HOST_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts at a multiple of ``HOST_ALIGNMENT`` bytes."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(size + HOST_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % HOST_ALIGNMENT
    return buffer[start : start + size].view(dtype).reshape(shape)


def normalize(images: np.ndarray, spec: Spec) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32: pixel / 255, then (x - mean) / std per channel if given."""
    x = aligned_empty(images.shape, np.float32)
    if spec.mean is None:  # one pass: the same float32 products as astype, then *=
        return np.multiply(images, np.float32(1 / 255), dtype=np.float32, out=x)
    x[...] = images
    # Over whole images, not the channel axis: broadcasting over a length-3 axis is 10x slower.
    scale, offset = scale_offset(spec, images.shape[1:])
    flat = x.reshape(len(x), -1)
    flat *= scale
    flat -= offset
    return x


def normalize_batch(batch: Batch, spec: Spec) -> Batch:
    """Normalizes batch["image"]; padding (mask 0) becomes all zeros."""
    image = normalize(batch["image"], spec)
    if "mask" in batch:
        image[batch["mask"] == 0] = 0
    return {**batch, "image": image}


# ---------------------------------------------------------------------------------------------
# Index arithmetic shared by every source: which examples a process reads at which step.
# ---------------------------------------------------------------------------------------------


def local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    """This process's share of ``global_batch_size``; ValueError where it does not split."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a positive multiple of "
            f"process_count={process_count}"
        )
    return global_batch_size // process_count


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of all training examples in one epoch; identical on every process."""
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def train_step_indices(
    num_examples: int, global_batch_size: int, seed: int, step: int, process_index: int, local: int
) -> np.ndarray:
    """Example indices of this process's part of global batch `step` (a global step)."""
    steps_per_epoch = num_examples // global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"global_batch_size={global_batch_size} > {num_examples} train examples")
    epoch, j = divmod(step, steps_per_epoch)
    start = j * global_batch_size + process_index * local
    return _epoch_permutation(seed, epoch, num_examples)[start : start + local]


def eval_positions(num_examples: int, global_batch_size: int, process_index: int, local: int):
    """Per eval batch: (indices, mask) of this process; padding has index 0 and mask 0.

    Global batch b covers examples [b * G, (b + 1) * G); process p reads its contiguous slice of
    it, so all processes yield the same number of batches and every example appears once.
    """
    num_batches = -(-num_examples // global_batch_size)
    for b in range(num_batches):
        positions = b * global_batch_size + process_index * local + np.arange(local)
        mask = positions < num_examples
        yield np.where(mask, positions, 0), mask.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The contract of a dataset.
# ---------------------------------------------------------------------------------------------


class Dataset:
    """A dataset that yields numpy batches for one process of many.

    Attributes:
      name: the dataset's registered name.
      spec: its classes, input shape and normalization (`Spec`).
      num_classes: the number of labels (for regression: of outputs).
      image_shape: the shape of one input in the batches, (H, W, C) for images.
    """

    def __init__(self, name: str, spec: Spec | None = None):
        self.name = name
        self.spec = SPECS[name] if spec is None else spec
        self.num_classes = self.spec.num_classes
        self.image_shape = self.spec.image_shape

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def num_examples(self, split: str) -> int:
        """The number of examples in `split` ("train" or "test")."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Writes what the dataset needs on disk, once (the offline MNIST copy); else nothing."""

    # Whether ``train_batches(..., raw=True)`` gives uint8 images for ``normalize`` to turn,
    # on the device, into what ``raw=False`` gives.
    raw_batches = False

    def normalize(self, images):
        """uint8 images [..., H, W, C] (a jax or numpy array) -> the float32 images of
        ``train_batches``, in jax.numpy: ``x * scale - offset`` as `normalize` computes it
        on the host (equal to rounding; ``tests/test_data.py``)."""
        import jax.numpy as jnp

        x = jnp.asarray(images).astype(jnp.float32)
        if self.spec.mean is None:
            return x * jnp.float32(1 / 255)
        scale, offset = scale_offset(self.spec, self.image_shape)
        shape = self.image_shape
        return x * scale.reshape(shape) - offset.reshape(shape)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Full global batches per epoch; the remainder of each epoch is dropped."""
        return self.num_examples("train") // global_batch_size

    def train_batches(
        self,
        global_batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        augment: bool = False,
    ) -> Iterator[Batch]:
        """Infinite training batches of this process, from global step `start_step` on.

        Epoch e visits the examples in the order `default_rng([seed, e]).permutation(n)`; global
        batch j of the epoch is `perm[j * G:(j + 1) * G]` and process p gets its slice
        `[p * B:(p + 1) * B]` with B = G // process_count. So the processes' batches together
        equal the one-process batch, and resuming at `start_step` continues the same stream.

        Args:
          global_batch_size: G, the batch size summed over all processes.
          seed: the shuffling (and augmentation) seed, a non-negative int.
          start_step: the global step of the first batch.
          process_index: this process, in [0, process_count).
          process_count: the number of processes that read the data.
          augment: random crop (4 pixels of zero padding) and flip for cifar; random resized crop
            and flip for imagenet2012 (else the eval crop); not supported for mnist.

        Returns:
          An iterator of {"image": float32 [B, H, W, C], "label": int32 [B]}.
        """
        raise NotImplementedError

    def eval_batches(
        self,
        split: str = "test",
        global_batch_size: int = 1024,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[Batch]:
        """One pass over `split`: every example once across processes, in order.

        All processes yield the same number of batches of the same local size B; the last ones are
        padded, and "mask" (float32 [B]) is 1 for real examples and 0 for padding.
        """
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# The registry: a name -> how to make the dataset, and how to check up front that it can be.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """A registered data source.

    Attributes:
      make: ``make(**options) -> Dataset``; the options are the config's ``data_dir``,
        ``idx_dir``, ``num_workers`` where set, and its ``dataset_kwargs``.
      check: ``check(**options)``, the same options: raises ValueError, one line saying what is
        missing and how to get it, where ``make`` would fail for want of data on this machine;
        None: nothing to check.
    """

    make: Callable[..., Dataset]
    check: Callable[..., None] | None = None


_SOURCES: dict[str, Source] = {}


def register(
    name: str, make: Callable[..., Dataset], check: Callable[..., None] | None = None
) -> Source | None:
    """Makes ``name`` a dataset a config can name; returns the source it replaces, if any."""
    previous = _SOURCES.get(name)
    _SOURCES[name] = Source(make, check)
    return previous


@contextlib.contextmanager
def registered(name: str, make: Callable[..., Dataset], check: Callable[..., None] | None = None):
    """``register`` for the time of a ``with`` block, then what was there before."""
    previous = register(name, make, check)
    try:
        yield
    finally:
        if previous is None:
            del _SOURCES[name]
        else:
            _SOURCES[name] = previous


def names() -> tuple[str, ...]:
    """The registered dataset names."""
    return tuple(sorted(_SOURCES))


def _source(name: str) -> Source:
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(names())}")
    return _SOURCES[name]


def _check_options(name: str, fn: Callable, options: dict) -> None:
    """An option ``fn`` does not take is one line naming the ones it takes."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        allowed = ", ".join(sorted(params)) or "none"
        raise ValueError(f"dataset {name} takes no option {', '.join(unknown)}; allowed: {allowed}")


def _options(data_dir, idx_dir, num_workers, kwargs) -> dict:
    given = {"data_dir": data_dir, "idx_dir": idx_dir, "num_workers": num_workers}
    return {k: v for k, v in given.items() if v is not None} | dict(kwargs)


def get(name: str, data_dir=None, idx_dir=None, *, num_workers=None, **kwargs) -> Dataset:
    """The dataset ``name``, made by its registered source.

    Args:
      name: a registered name (`names`).
      data_dir: the TFDS data dir; None for TFDS's default.
      idx_dir: mnist / fashion_mnist only: a directory of IDX files, read instead of TFDS.
      num_workers: imagenet2012 only: grain worker processes (0: none; None: up to 16).
      **kwargs: the source's own options (linear_teacher: its sizes, noise and seed).
    """
    make = _source(name).make
    options = _options(data_dir, idx_dir, num_workers, kwargs)
    _check_options(name, make, options)
    return make(**options)


def check(name: str, data_dir=None, idx_dir=None, *, num_workers=None, **kwargs) -> None:
    """Raises ValueError (one line) where ``get`` with these arguments would fail for want of
    data on this machine; reads no data."""
    source = _source(name)
    options = _options(data_dir, idx_dir, num_workers, kwargs)
    _check_options(name, source.make, options)
    if source.check is not None:
        source.check(**options)
