r"""The seed's four rules on MNIST (configs/mnist_mlp.py), 20 epochs each, one after another.

    python -m wtfree.sweep configs/sweeps/mnist_rules.py --workdir runs/mnist_rules
    python -m wtfree.plot runs/mnist_rules/{bp,fa,wm,kp} --out runs/mnist_rules/report.png

Produces runs/mnist_rules/{bp,fa,wm,kp}, each a train.py workdir (metrics.jsonl, TensorBoard
events, checkpoints, config.json), with each rule's seed learning rate (bp 0.2, fa 0.2, wm 0.05,
kp 0.3). Each run takes what configs/mnist_mlp.py's docstring says for 20 epochs and ends at
about 96-97% test accuracy; the angle between B and W falls towards 0 for wm and kp and stays
large for fa (bp has no B). Rerunning the command resumes every run where it stopped.
"""

RULES = ("bp", "fa", "wm", "kp")


def get_sweep() -> list[dict]:
    return [
        {
            "config": f"configs/mnist_mlp.py:rule={rule}",
            "overrides": {"num_epochs": 20},
            "name": rule,
        }
        for rule in RULES
    ]
