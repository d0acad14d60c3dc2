r"""The learning rates of biotorch's LeNet table (configs/biotorch_lenet.py), measured.

    python -m wtfree.sweep configs/sweeps/biotorch_lenet_lr.py --workdir runs/biotorch_lr

- bp at 0.1, biotorch's rate for its CIFAR LeNet, with the table's 3 seeds on MNIST and
  Fashion-MNIST. The config's rate for bp, usf, brsf, frsf and kp is the largest of 0.1 and
  0.03 at which every seed of bp trains on both datasets (bp at 0.03 is in
  configs/sweeps/biotorch_lenet.py).
- fa at 3x and 10x, and dfa at 3x to 100x, the rates the config takes from biotorch's CIFAR
  configs (0.001 and 0.0001), seed 0 on MNIST: whether their gap to biotorch's MNIST numbers is
  the rate's; and kp at 1/3 and 1/10 of bp's rate, at which it diverges.

`python experiments/biotorch_table.py runs/biotorch_lr` gives the table; a run at another rate
than the config's is a row of its own (e.g. ``fa_lr0.01``).
"""

from configs.biotorch_lenet import DEFAULT_LEARNING_RATE, LEARNING_RATES, sweep_run

SEEDS = (0, 1, 2)
EPOCHS = 5
PROBES = {
    "fa": (3, 10),
    "dfa": (3, 10, 30, 100),
    "kp": (1 / 3, 1 / 10),
}  # multiples of the config's rate


def get_sweep() -> list[dict]:
    runs = []
    for rule, factors in PROBES.items():
        for factor in factors:
            lr = round(LEARNING_RATES.get(rule, DEFAULT_LEARNING_RATE) * factor, 6)
            runs.append(
                sweep_run(rule, "mnist", 0, EPOCHS, f"_lr{lr:g}", **{"optimizer.learning_rate": lr})
            )
    runs += [
        sweep_run("bp", dataset, seed, EPOCHS, "_lr0.1", **{"optimizer.learning_rate": 0.1})
        for seed in SEEDS
        for dataset in ("mnist", "fashion_mnist")
    ]
    return runs
