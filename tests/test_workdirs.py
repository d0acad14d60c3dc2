"""Workdirs on cloud storage, damaged checkpoints, changed configs, a second run, a NaN."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.fake_gcs import fake_gcs
from tests.test_train import ROOT, tiny_config
from wtfree import checkpoints, errors, logs, train_lib, workdir


@pytest.fixture(autouse=True)
def mock_mnist():
    with tfds.testing.mock_data(num_examples=256, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def final_state(path, config):
    trainer = train_lib.Trainer(config)
    with checkpoints.make_manager(path) as manager:
        return jax.device_get(checkpoints.restore(manager, trainer.abstract_state))


def assert_same_state(a, b):
    assert int(a["step"]) == int(b["step"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_gcs_workdir_trains_resumes_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URL made local would land in ./gs:/...
    root = tmp_path / "bucket_root"
    config = tiny_config("kp", num_train_steps=6, checkpoint_every_steps=3)
    train_lib.train_and_evaluate(config, str(tmp_path / "local"))
    with fake_gcs(str(root)):
        url = "gs://bucket/run"
        # Two runs: 3 steps, then (a longer run is an allowed change) on to 6.
        train_lib.train_and_evaluate(tiny_config("kp", num_train_steps=3), url)
        train_lib.train_and_evaluate(config, url)
        assert_same_state(final_state(url, config), final_state(str(tmp_path / "local"), config))
        lines = logs.read_metrics(url)
        assert [line["step"] for line in lines if "train/loss" in line] == [3, 6]
        result = train_lib.evaluate_checkpoint(url)
    assert not os.path.exists(tmp_path / "gs:")
    run = root / "bucket" / "run"
    assert json.loads((run / "eval_6.json").read_text()) == result
    assert json.loads((run / "config.json").read_text())["num_train_steps"] == 6
    assert sorted(os.listdir(run / "checkpoints")) == ["3", "6"]
    events = os.listdir(run / "tensorboard")
    assert len(events) == 2 and all(e.startswith("events.out.tfevents") for e in events)
    assert all((run / "tensorboard" / e).stat().st_size > 0 for e in events)
    changes = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert [c["changes"] for c in changes] == [{"num_train_steps": [3, 6]}]
