"""benchmarks/gpu_resnet50.py at a tiny size on CPU: it measures, and its batch search bisects."""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import gpu_resnet50  # noqa: E402


def tiny_args(**overrides) -> argparse.Namespace:
    values = dict(
        rule="bp",
        model="resnet8",
        image_size=8,
        dtype="float32",
        batch_size=4,
        steps=2,
        warmup=1,
        repeats=1,
        mirror_every=2,
        max_batch=1024,
        search_step=16,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


def test_measure_runs_wm_and_counts_its_flops_and_memory(rbg_prng_and_mock_data):
    """wm: the train step and, every 2nd step, the fused mirror step (rbg keys: fast compiles)."""
    result = gpu_resnet50.measure(tiny_args(rule="wm"))
    assert result["rule"] == "wm" and result["platform"] == "cpu"
    assert result["step_s"] > 0 and result["flops"] > 0 and result["xla_bytes"] > 0
    assert result["peak_bytes"] is None  # the CPU runtime keeps no peak
    assert result["mirror_batch"] == 32  # the imagenet config's


def test_largest_batch_doubles_then_bisects_to_the_step(monkeypatch):
    probed = []

    def fake_probe(args, rule, batch_size):
        probed.append(batch_size)
        return {"step_s": 1.0} if batch_size <= 100 else "oom"

    monkeypatch.setattr(gpu_resnet50, "probe", fake_probe)
    size, how = gpu_resnet50.largest_batch(tiny_args(batch_size=16), "bp")
    assert size == 96 and "ran out of memory" in how
    assert probed[:4] == [16, 32, 64, 128]
    size, how = gpu_resnet50.largest_batch(tiny_args(batch_size=16, max_batch=64), "bp")
    assert size == 64 and "all fit" in how


def test_a_failure_other_than_memory_stops_the_search(monkeypatch):
    monkeypatch.setattr(gpu_resnet50, "probe", lambda args, rule, b: "exit 1: boom")
    assert gpu_resnet50.largest_batch(tiny_args(), "bp") == (None, "stopped: exit 1: boom")


def test_failures_and_peaks_are_recognized():
    oom = "jaxlib.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 123 bytes."
    assert gpu_resnet50.classify_failure(1, oom) == "oom"
    assert (
        gpu_resnet50.classify_failure(1, "Traceback\nValueError: bad\n")
        == "exit 1: ValueError: bad"
    )
    assert gpu_resnet50.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989
    assert gpu_resnet50.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756
    assert gpu_resnet50.peak_tflops("cpu", "bfloat16") is None
