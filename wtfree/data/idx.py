"""LeCun's IDX files (MNIST, Fashion-MNIST), gzipped or not, read into memory and cached."""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np
from etils import epath

from wtfree import array_cache
from wtfree.data import arrays, core
from wtfree.data.core import Arrays

IDX_FILES = {  # split -> (images, labels) file names, without .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


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
    if split not in IDX_FILES:
        raise ValueError(f"split={split!r} not in {sorted(IDX_FILES)}")
    images, labels = [read_idx(path) for path in _idx_paths(idx_dir, split)]
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{idx_dir} {split}: images {images.shape}, labels {labels.shape}")
    return images[..., None], labels.astype(np.int32)


def _find(idx_dir: str | os.PathLike, stem: str) -> epath.Path | None:
    paths = [epath.Path(idx_dir) / (stem + ext) for ext in ("", ".gz")]
    return next((p for p in paths if p.exists()), None)


def _idx_paths(idx_dir: str | os.PathLike, split: str) -> list[epath.Path]:
    found = []
    for stem in IDX_FILES[split]:
        path = _find(idx_dir, stem)
        if path is None:
            raise FileNotFoundError(f"{idx_dir} holds no {stem}[.gz]")
        found.append(path)
    return found


def read_idx_split_cached(name: str, idx_dir: str | os.PathLike, split: str) -> Arrays:
    """`read_idx_split` through a cache in `array_cache.user_cache_dir`, keyed by the files'
    bytes (gunzipping and parsing MNIST's IDX files takes 1-3 s; reading the cache, 0.1 s)."""
    if split not in IDX_FILES:
        raise ValueError(f"split={split!r} not in {sorted(IDX_FILES)}")
    return array_cache.load(
        array_cache.files_path(name, split, _idx_paths(idx_dir, split)),
        lambda: read_idx_split(idx_dir, split),
        num_examples=None,
        image_shape=core.SPECS[name].image_shape,
    )


def check(idx_dir: str | os.PathLike) -> None:
    """Raises ValueError, one line, where ``idx_dir`` lacks one of the four IDX files."""
    for split in ("train", "test"):
        for stem in IDX_FILES[split]:
            if _find(idx_dir, stem) is None:
                raise ValueError(
                    f"idx_dir={os.fspath(idx_dir)!r} holds no {stem}[.gz]; allowed: a directory "
                    "with the four MNIST IDX files"
                )


def make(name: str, idx_dir: str | os.PathLike) -> arrays.ArrayDataset:
    """The 28 x 28 dataset ``name`` (mnist or fashion_mnist) from the IDX files in ``idx_dir``."""
    return arrays.ArrayDataset(name, functools.partial(read_idx_split_cached, name, idx_dir))
