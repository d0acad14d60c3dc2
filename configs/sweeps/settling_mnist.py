r"""The settling rules on MNIST at their papers' MLP settings, for their full length, beside bp,
fa and kp at the same settings.

    python -m wtfree.sweep configs/sweeps/settling_mnist.py --workdir runs/settling_mnist
    python experiments/results_table.py runs/settling_mnist

Each run is a train.py workdir of configs/mnist_settling.py with its epochs unchanged (ar 50,
pc 30, di 15, pal 50: the authors'). ``<rule>_s<seed>``: ar, pc, di (NDI) and pal with seeds
0, 1 and 2; ``<rule>_at_<setting>_s0``: bp, fa and kp at each rule's setting (its model,
batch, loss and rate on the mean loss: the same steps), seed 0. Listed seed 0 first, so that a
sweep cut short has every row once. The runs do not depend on each other (``--dry_run`` lists
their commands for running several at once). docs/settling.md has the measured table;
configs/sweeps/settling_fashion_mnist.py is the same sweep on Fashion-MNIST.
"""

SETTLING = ("di", "ar", "pal", "pc")
BASELINES = ("bp", "fa", "kp")


def settling_runs(rules=SETTLING, arg: str = "", overrides: dict | None = None) -> list[dict]:
    """Seed 0 of each rule in ``rules``, then bp, fa and kp at each one's setting, then seeds
    1 and 2; ``arg`` is appended to each config's ``:arg`` and ``overrides`` to each run's."""
    overrides = overrides or {}

    def run(config_arg: str, name: str, seed: int) -> dict:
        return {
            "config": f"configs/mnist_settling.py:{config_arg}{arg}",
            "overrides": {**overrides, "seed": seed},
            "name": f"{name}_s{seed}",
        }

    runs = [run(f"rule={rule}", rule, 0) for rule in rules]
    runs += [
        run(f"rule={base},setting={rule}", f"{base}_at_{rule}", 0)
        for rule in rules
        for base in BASELINES
    ]
    runs += [run(f"rule={rule}", rule, seed) for seed in (1, 2) for rule in rules]
    return runs


def get_sweep() -> list[dict]:
    return settling_runs()
