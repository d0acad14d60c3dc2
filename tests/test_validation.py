"""Every config value is checked before any work: one line naming the key, value and range."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests import fake_data
from tests.test_train import ROOT, tiny_config
from wtfree import config_lib, data
from wtfree import trainer as trainer_lib


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("optimizer.learning_rate", -0.1, "optimizer.learning_rate=-0.1; allowed: a number >= 0"),
        ("num_epochs", -1, "num_epochs=-1; allowed: an integer >= 0"),
        ("mirror.decay", -0.5, "mirror.decay=-0.5; allowed: a number in [0, 1)"),
        ("mirror.decay", 1.0, "mirror.decay=1.0; allowed: a number in [0, 1)"),
        ("mirror.noise_std", 0.0, "mirror.noise_std=0.0; allowed: a number > 0"),
        ("mirror.every", 0, "mirror.every=0; allowed: an integer >= 1"),
        ("mirror.noise", "gaussian", "mirror.noise='gaussian'; allowed: normal, rademacher"),
        ("optimizer.momentum", 1.0, "optimizer.momentum=1.0; allowed: a number in [0, 1)"),
        ("optimizer.weight_decay", -1e-4, "optimizer.weight_decay=-0.0001; allowed"),
        ("optimizer.boundaries", (0.6, 0.3), "optimizer.boundaries=(0.6, 0.3); allowed"),
        ("batch_size", 0, "batch_size=0; allowed: an integer >= 1"),
        ("eval_batch_size", -8, "eval_batch_size=-8; allowed"),
        ("keep_checkpoints", 0, "keep_checkpoints=0; allowed"),
        ("model_kwargs.widths", (16, 0), "model_kwargs.widths=(16, 0); allowed"),
        ("dtype", "float8", "dtype='float8'; allowed: float32, bfloat16, float16"),
    ],
)
def test_out_of_range_values_are_refused(key, value, expected):
    config = tiny_config("wm")
    config_lib.validate(config)  # the tiny config itself is fine
    config = tiny_config("wm", **{key: value})
    with pytest.raises(ValueError) as info:
        config_lib.validate(config)
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


def test_a_run_needs_some_length():
    with pytest.raises(ValueError, match="num_epochs=0 and num_train_steps=0"):
        config_lib.validate(tiny_config("bp", num_epochs=0, num_train_steps=0))
    config_lib.validate(tiny_config("bp", num_epochs=0, num_train_steps=5))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"num_devices": 5}, "num_devices=5; allowed: 1..4"),
        ({"num_devices": 4, "batch_size": 30}, "batch_size=30; allowed: a multiple of the 4"),
        ({"num_devices": 4, "eval_batch_size": 10}, "eval_batch_size=10; allowed: a multiple"),
        ({"idx_dir": "/no/such/dir"}, "idx_dir='/no/such/dir' is not a directory"),
        ({"data_dir": "/no/such/dir"}, "data_dir='/no/such/dir' is not a directory"),
        ({"init_from": "/no/such/run"}, "init_from='/no/such/run' is not a directory"),
        ({"dataset": "cifar10"}, "dataset=cifar10 is not prepared in"),
        ({"dataset": "fashion_mnist"}, "or --config.idx_dir=DIR"),
    ],
)
def test_resources_are_checked(overrides, expected, tmp_path):
    # No fake data: the conftest's TFDS_DATA_DIR holds nothing.
    config = tiny_config("bp", **overrides)
    with pytest.raises(ValueError) as info:
        config_lib.validate_resources(config)
    assert expected in str(info.value)
    if "dataset" in overrides:
        assert f"tfds build {overrides['dataset']} --file_format=array_record" in str(info.value)


def test_idx_dir_without_the_files(tmp_path):
    config = tiny_config("bp", idx_dir=str(tmp_path))
    with pytest.raises(ValueError, match="holds no train-images-idx3-ubyte"):
        config_lib.validate_resources(config)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config.optimizer.learning_rate=-1"], "optimizer.learning_rate=-1.0; allowed"),
        (["--config.idx_dir=/no/such/dir"], "idx_dir='/no/such/dir' is not a directory"),
        (["--config.mirror.noise=gaussian"], "mirror.noise='gaussian'; allowed: normal,"),
    ],
)
def test_train_cli_exits_2_with_one_line(args, expected, tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "--config=configs/mnist_mlp.py", f"--workdir={tmp_path}"]
        + args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"train.py: error: {proc.stderr.split('error: ')[1].strip()}"
    ]
    assert expected in proc.stderr
    assert not os.listdir(tmp_path)  # nothing written


def test_evaluate_cli_refuses_a_negative_step(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "wtfree.evaluate", f"--workdir={tmp_path}", "--step=-3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2
    assert proc.stderr == "wtfree.evaluate: error: --step=-3; allowed: >= 0\n"


@pytest.mark.parametrize("name", ["lillicrap_linear", "song_two_layer"])
def test_the_teacher_configs_pass_the_real_checks(name):
    # No fake data here: linear_teacher is made in memory, and its source's check says so
    # (TFDS once refused it as an unknown builder).
    config = load_config(name)
    config_lib.validate(config)
    config_lib.validate_resources(config)
    config.dataset_kwargs.inputs = 0
    with pytest.raises(ValueError, match="linear_teacher: inputs=0; must be a positive integer"):
        config_lib.validate_resources(config)


def load_config(name):
    import importlib

    return importlib.import_module(f"configs.{name}").get_config()


def test_a_registered_source_is_checked_and_made_with_the_config_options(tmp_path):
    calls = []

    def make(data_dir=None):
        calls.append(("make", data_dir))
        return data.synthetic("mnist", 32)

    def check(data_dir=None):
        calls.append(("check", data_dir))
        if data_dir != str(tmp_path):
            raise ValueError(f"mine: data_dir={data_dir!r}; allowed: {tmp_path}")

    with data.registered("mine", make, check):
        config = tiny_config("bp", dataset="mine")
        config_lib.validate(config)
        with pytest.raises(ValueError, match="mine: data_dir=None; allowed"):
            config_lib.validate_resources(config)
        config.data_dir = str(tmp_path)
        config_lib.validate_resources(config)
        assert data.get("mine", data_dir=str(tmp_path)).num_examples("train") == 32
        with pytest.raises(ValueError, match="dataset mine takes no option idx_dir; allowed: data"):
            data.get("mine", idx_dir=str(tmp_path))
    assert calls == [("check", None), ("check", str(tmp_path)), ("make", str(tmp_path))]
    with pytest.raises(ValueError, match="unknown dataset 'mine'"):
        config_lib.validate(config)


@pytest.mark.parametrize("value, expected", [("true", True), ("No", False), ("1", True)])
def test_bool_arguments_are_parsed_strictly(value, expected):
    assert config_lib.parse_arg(f"runlocal={value}", runlocal=False).runlocal is expected
    with pytest.raises(ValueError, match="runlocal='ture'; allowed: true, false, 1, 0, yes, no"):
        config_lib.parse_arg("runlocal=ture", runlocal=False)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"input_std": 0.3}, "input_mean=None; allowed: a number or 1 per channel"),
        ({"input_mean": (0.1, 0.2), "input_std": 0.3}, "input_mean=(0.1, 0.2); allowed"),
        ({"input_mean": 0.1, "input_std": 0.0}, "input_std=0.0; allowed: a number or 1 per"),
        ({"input_mean": "0.1", "input_std": 0.3}, "input_mean='0.1'; allowed"),
        ({"input_mean": 0.1, "input_std": 0.3, "dataset": "linear_teacher"}, "input_mean=0.1 "),
    ],
)
def test_bad_input_normalization_is_refused(overrides, expected):
    with pytest.raises(ValueError) as info:
        config_lib.validate(tiny_config("bp", **overrides))
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


def test_input_mean_and_std_standardize_what_training_and_evaluation_read():
    with fake_data.synthetic_images(num_examples=64):
        plain = trainer_lib.Trainer(tiny_config("bp"))
        standard = trainer_lib.Trainer(tiny_config("bp", input_mean=0.25, input_std=(0.5,)))
        assert config_lib.input_normalization(standard.config) == ((0.25,), (0.5,))
        x = next(plain.ds.train_batches(32))["image"]
        assert x.min() >= 0 and x.max() <= 1  # pixel / 255: MNIST's own normalization
        y = next(standard.ds.train_batches(32))["image"]
        np.testing.assert_allclose(y, (x - 0.25) / 0.5, rtol=1e-6, atol=1e-6)
        raw = next(standard.ds.train_batches(32, raw=True))["image"]  # normalized on the device
        np.testing.assert_allclose(standard.ds.normalize(raw), y, rtol=1e-6, atol=1e-6)
        x_test = next(plain.ds.eval_batches("test", 32))["image"]
        y_test = next(standard.ds.eval_batches("test", 32))["image"]
        np.testing.assert_allclose(y_test, (x_test - 0.25) / 0.5, rtol=1e-6, atol=1e-6)
