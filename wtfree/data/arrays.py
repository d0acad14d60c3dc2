"""Datasets held in memory as uint8 images and int32 labels: batching, augmentation, synthetic."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from wtfree.data import core
from wtfree.data.core import Arrays, Batch


def _take(array: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``np.take(array, idx, axis=0)`` into an aligned buffer (``idx`` valid by construction;
    ``mode="clip"`` is numpy's fast path for ``out=``)."""
    out = core.aligned_empty((len(idx), *array.shape[1:]), array.dtype)
    return np.take(array, idx, axis=0, out=out, mode="clip")


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


class ArrayDataset(core.Dataset):
    """A dataset held in memory as uint8 images and int32 labels."""

    raw_batches = True

    def __init__(
        self,
        name: str,
        load_split: Callable[[str], Arrays],
        prepare: Callable[[], object] | None = None,
        spec: core.Spec | None = None,
    ):
        super().__init__(name, spec)
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
        local = core.local_batch_size(global_batch_size, process_index, process_count)
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
        local = core.local_batch_size(global_batch_size, process_index, process_count)
        images, labels = self.arrays(split)
        for idx, mask in core.eval_positions(len(labels), global_batch_size, process_index, local):
            batch = {
                "image": images[idx],
                "label": np.where(mask > 0, labels[idx], 0),
                "mask": mask,
            }
            yield core.normalize_batch(batch, self.spec)


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
                core.train_step_indices(
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
            x = np.concatenate(parts, out=core.aligned_empty(x.shape, x.dtype))
        image = core.normalize(x, self._dataset.spec) if self._normalized else x
        return {
            "image": image.reshape(n, self._local, *image.shape[1:]),
            "label": _take(self._labels, idx).reshape(n, self._local),
        }


def synthetic(name: str, num_examples: int = 256, seed: int = 0) -> ArrayDataset:
    """``num_examples`` random uint8 images per split, of the image dataset ``name``'s shape,
    with random labels: a dataset that needs no disk, for smoke runs and tests
    (``data.registered(name, functools.partial(synthetic, name))``)."""

    def load(split: str) -> Arrays:
        num_classes, shape = core.image_spec(name)
        rng = np.random.default_rng([seed, len(split)])
        images = rng.integers(0, 256, (num_examples, *shape), dtype=np.uint8)
        return images, rng.integers(0, num_classes, num_examples).astype(np.int32)

    return ArrayDataset(name, load)
