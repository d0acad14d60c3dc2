r"""The modern MNIST MLP (configs/mnist_mlp_modern.py) under bp, fa, wm and kp.

    python -m wtfree.sweep configs/sweeps/mnist_modern.py --workdir runs/modern
    python -m wtfree.plot runs/modern/{bp,fa,wm,kp} --out runs/modern/report.png

Each run is a train.py workdir; README, "Results", has the measured accuracies.
"""


def get_sweep() -> list[dict]:
    return [
        {"config": f"configs/mnist_mlp_modern.py:rule={rule}", "overrides": {}, "name": rule}
        for rule in ("bp", "wm", "kp", "fa")
    ]
