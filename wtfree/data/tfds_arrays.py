"""TFDS datasets read whole into memory (array_record through `tfds.data_source`, no TensorFlow),
cached beside the data; the sources fashion_mnist, cifar10 and cifar100."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from wtfree import array_cache
from wtfree.data import arrays, core, idx
from wtfree.data.core import Arrays


def read_source(source: Sequence, chunk: int = 8192) -> Arrays:
    """A whole TFDS data source as (uint8 images, int32 labels), read in batches."""
    n = len(source)
    images = np.empty((n, *np.shape(source[0]["image"])), np.uint8)
    labels = np.empty((n,), np.int32)
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        try:
            examples = source.__getitems__(keys)  # one batched array_record read
        except TypeError:  # a source whose __getitems__ is not a bound method
            examples = [source[k] for k in keys]
        for i, example in enumerate(examples, start):
            images[i] = example["image"]
            labels[i] = example["label"]
    return images, labels


def read_builder_split(builder: tfds.core.DatasetBuilder, split: str) -> Arrays:
    """All of a prepared TFDS dataset's split in memory, through a cache file beside its data
    (`array_cache.tfds_path`: keyed by dataset, version and split; none for a data dir that is
    not local). Decoding MNIST example by example takes 6-10 s; reading the cache, 0.1 s."""
    source = builder.as_data_source(split)
    return array_cache.load(
        array_cache.tfds_path(builder.data_dir, split),
        lambda: read_source(source),
        num_examples=len(source),
        image_shape=builder.info.features["image"].shape,
    )


def read_tfds_split(name: str, split: str, data_dir: str | None = None) -> Arrays:
    """All of a TFDS split in memory (`read_builder_split`)."""
    return read_builder_split(tfds.builder(name, data_dir=data_dir), split)


@contextlib.contextmanager
def quiet_tfds():
    """TFDS warns about every unprepared variant folder it looks at (absl WARNING): asking
    whether a dataset is prepared should not print anything."""
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)


def is_prepared(name: str, data_dir: str | None = None) -> bool:
    """Whether the TFDS dataset ``name`` is prepared in ``data_dir``, as array_record files."""
    with quiet_tfds():
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    return prepared and builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def check_prepared(name: str, data_dir: str | None = None) -> None:
    """Raises ValueError, one line with the command that prepares it, when the TFDS dataset
    ``name`` is not prepared (as array_record) in ``data_dir``."""
    if is_prepared(name, data_dir):
        return
    root = tfds.builder(name, data_dir=data_dir).data_dir_root
    where = f" --data_dir={data_dir}" if data_dir else ""
    also = " (or --config.idx_dir=DIR with its IDX files)" if name == "fashion_mnist" else ""
    raise ValueError(
        f"dataset={name} is not prepared in {root}{also}; prepare it with: "
        f"tfds build {name} --file_format=array_record{where}"
    )


def make(name: str, data_dir: str | None = None) -> arrays.ArrayDataset:
    """The TFDS dataset ``name`` held in memory."""
    return arrays.ArrayDataset(name, functools.partial(read_tfds_split, name, data_dir=data_dir))


def _make_fashion_mnist(data_dir: str | None = None, idx_dir: str | None = None):
    if idx_dir is not None:
        return idx.make("fashion_mnist", idx_dir)
    return make("fashion_mnist", data_dir)


def _check_fashion_mnist(data_dir: str | None = None, idx_dir: str | None = None) -> None:
    if idx_dir is not None:
        idx.check(idx_dir)
    else:
        check_prepared("fashion_mnist", data_dir)


core.register("fashion_mnist", _make_fashion_mnist, _check_fashion_mnist)
for _name in ("cifar10", "cifar100"):
    core.register(
        _name,
        functools.partial(make, _name),
        functools.partial(check_prepared, _name),
    )
