"""In-memory datasets cached as one .npz array file per split, so a run starts in a second."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging
from etils import epath

Arrays = tuple[np.ndarray, np.ndarray]  # (images uint8 [N, H, W, C], labels int32 [N])

# Part of every cache file's name: a change of the layout below makes new names, never a misread.
FORMAT = 1


def user_cache_dir() -> epath.Path:
    """Where caches of data outside a TFDS data dir go (IDX files): $XDG_CACHE_HOME/wtfree,
    by default ~/.cache/wtfree."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return epath.Path(root) / "wtfree"


def is_local(path: epath.PathLike) -> bool:
    """Whether ``path`` is on this machine's file system (not gs://, s3://, ...)."""
    return "://" not in os.fspath(path)


def tfds_path(builder_data_dir: epath.PathLike, split: str) -> epath.Path | None:
    """The cache of ``split`` beside a prepared TFDS dataset, whose directory
    (``<data_dir>/<name>/<version>``) keys it by dataset and version; None where that
    directory is not local."""
    if not is_local(builder_data_dir):
        return None
    return epath.Path(builder_data_dir) / f"wtfree_arrays.{split}.v{FORMAT}.npz"


def files_path(name: str, split: str, files: Sequence[epath.PathLike]) -> epath.Path:
    """The cache of ``split`` of dataset ``name`` read from ``files``, in `user_cache_dir`,
    keyed by the files' bytes (reading them whole costs a fraction of decoding them)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(epath.Path(f).read_bytes())
    return user_cache_dir() / f"{name}.{split}.{digest.hexdigest()[:24]}.v{FORMAT}.npz"


def read(path: epath.Path, num_examples: int | None, image_shape: Sequence[int]) -> Arrays | None:
    """The cached arrays, or None where the file is missing, unreadable or not what the split
    holds (uint8 images of ``image_shape``, as many int32 labels, ``num_examples`` of each if
    given)."""
    if not path.exists():
        return None
    try:
        with path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        logging.warning("Ignoring the damaged array cache %s (%s); rebuilding it", path, e)
        return None
    good = (
        images.dtype == np.uint8
        and images.shape[1:] == tuple(image_shape)
        and labels.dtype == np.int32
        and labels.shape == images.shape[:1]
        and (num_examples is None or len(labels) == num_examples)
    )
    if not good:
        logging.warning(
            "Ignoring the array cache %s: images %s%s, labels %s%s; rebuilding it",
            path,
            images.dtype,
            images.shape,
            labels.dtype,
            labels.shape,
        )
        return None
    return images, labels


def write(path: epath.Path, arrays: Arrays) -> None:
    """Writes ``arrays`` to ``path`` atomically (a temporary file, then a rename), so a reader
    never sees half a file; where the directory is not writable, leaves it uncached."""
    images, labels = arrays
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            np.savez(f, images=images, labels=np.asarray(labels, np.int32))
        tmp.replace(path)
    except OSError as e:
        logging.info("Not caching the arrays at %s: %s", path, e)
        with contextlib.suppress(OSError):  # not there, or its directory is not either
            tmp.unlink()


def load(
    path: epath.Path | None,
    load_slowly: Callable[[], Arrays],
    *,
    num_examples: int | None,
    image_shape: Sequence[int],
) -> Arrays:
    """``load_slowly()``'s arrays, through the cache file at ``path`` (None: no cache).

    The first call decodes the data and writes the cache; later calls read the cache (a
    fraction of a second for MNIST's 47 MB). A damaged cache, or one whose shapes or dtypes do
    not match, is rebuilt.
    """
    if path is None:
        return load_slowly()
    start = time.perf_counter()
    arrays = read(path, num_examples, image_shape)
    if arrays is not None:
        logging.info("Read %s in %.2f s", path, time.perf_counter() - start)
        return arrays
    images, labels = load_slowly()
    arrays = images, np.asarray(labels, np.int32)
    write(path, arrays)
    return arrays
