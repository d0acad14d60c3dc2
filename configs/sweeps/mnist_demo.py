r"""The seed's four rules on MNIST for 2 epochs each: the README's first command (`make demo`).

    python -m wtfree.sweep configs/sweeps/mnist_demo.py --workdir runs/demo
    python -m wtfree.plot runs/demo/{bp,fa,wm,kp} --out runs/demo/report.png

About a minute of training in all on a 2-core CPU, plus start-up and the one-time preparation
of the offline MNIST copy.
"""


def get_sweep() -> list[dict]:
    return [
        {
            "config": f"configs/mnist_mlp.py:rule={rule}",
            "overrides": {"num_epochs": 2},
            "name": rule,
        }
        for rule in ("bp", "fa", "wm", "kp")
    ]
