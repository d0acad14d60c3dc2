r"""The settling rules on MNIST at their papers' MLP settings, for their full length, beside bp,
fa and kp at the same settings.

    python -m wtfree.sweep configs/sweeps/settling_mnist.py --workdir runs/settling_mnist
    python experiments/results_table.py runs/settling_mnist

Each run is a train.py workdir of configs/mnist_settling.py with its epochs unchanged (ar 50,
pc 30, di 15, pal 50: the authors'). ``<rule>_s<seed>``: ar, pc, di (NDI) and pal with seeds
0, 1 and 2; ``<rule>_at_<setting>_s0``: bp, fa and kp at each rule's setting (its model,
batch, loss and rate on the mean loss: the same steps), seed 0. Listed seed 0 first, so that a
sweep cut short has every row once. The runs do not depend on each other (``--dry_run`` lists
their commands for running several at once). docs/settling.md has the measured table.
"""

SETTLING = ("di", "ar", "pal", "pc")
BASELINES = ("bp", "fa", "kp")


def get_sweep() -> list[dict]:
    runs = [
        {
            "config": f"configs/mnist_settling.py:rule={rule}",
            "overrides": {"seed": 0},
            "name": f"{rule}_s0",
        }
        for rule in SETTLING
    ]
    runs += [
        {
            "config": f"configs/mnist_settling.py:rule={base},setting={rule}",
            "overrides": {"seed": 0},
            "name": f"{base}_at_{rule}_s0",
        }
        for rule in SETTLING
        for base in BASELINES
    ]
    runs += [
        {
            "config": f"configs/mnist_settling.py:rule={rule}",
            "overrides": {"seed": seed},
            "name": f"{rule}_s{seed}",
        }
        for seed in (1, 2)
        for rule in SETTLING
    ]
    return runs
