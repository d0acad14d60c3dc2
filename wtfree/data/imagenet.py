"""imagenet2012 with grain over `tfds.data_source`: decoding and cropping in worker processes."""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from wtfree.data import core, tfds_arrays
from wtfree.data.core import IMAGENET_SIZE, Batch

_IMAGENET_RESIZE = 256  # eval: resize the shorter side to 256, then take the central 224.


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


def imagenet_eval_crop(image, size: int = IMAGENET_SIZE) -> np.ndarray:
    """Resize the shorter side to 256 and take the central 224 x 224 (as one resize of a box)."""
    image = _to_pil(image)
    w, h = image.size
    side = min(w, h) * size / _IMAGENET_RESIZE
    left, top = (w - side) / 2, (h - side) / 2
    return _resize_box(image, (left, top, left + side, top + side), size)


def imagenet_train_crop(
    image,
    rng: np.random.Generator,
    size: int = IMAGENET_SIZE,
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
        index = core.train_step_indices(
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
            image = np.zeros((IMAGENET_SIZE, IMAGENET_SIZE, 3), np.uint8)
            return {"image": image, "label": np.int32(0), "mask": np.float32(0)}
        example = self.source[index]
        image = imagenet_eval_crop(example["image"])
        return {"image": image, "label": np.int32(example["label"]), "mask": np.float32(1)}


class ImageNetDataset(core.Dataset):
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
        return iter(ds.map(functools.partial(core.normalize_batch, spec=self.spec)))

    def train_batches(
        self,
        global_batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        augment: bool = False,
    ) -> Iterator[Batch]:
        local = core.local_batch_size(global_batch_size, process_index, process_count)
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
        local = core.local_batch_size(global_batch_size, process_index, process_count)
        n = self.num_examples(split)
        examples = _ImageNetEvalExample(
            self._source(split), n, global_batch_size, local, process_index
        )
        num_batches = -(-n // global_batch_size)
        return self._iterate(examples, 0, num_batches * local, local)


def _make(data_dir: str | None = None, num_workers: int | None = None) -> ImageNetDataset:
    return ImageNetDataset(data_dir, num_workers=num_workers)


def _check(data_dir: str | None = None, num_workers: int | None = None) -> None:
    del num_workers
    tfds_arrays.check_prepared("imagenet2012", data_dir)


core.register("imagenet2012", _make, _check)
