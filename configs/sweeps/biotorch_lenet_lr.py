r"""The learning-rate protocol of biotorch's LeNet table (configs/biotorch_lenet.py): bp at 0.1,
biotorch's rate for its CIFAR LeNet, with the table's 3 seeds on MNIST and Fashion-MNIST.

    python -m wtfree.sweep configs/sweeps/biotorch_lenet_lr.py --workdir runs/biotorch_lr0.1

The config's rate for bp, usf, brsf, frsf and kp is the largest of 0.1 and 0.03 at which every
seed of bp trains on both datasets; bp at 0.03 is in configs/sweeps/biotorch_lenet.py. The
runs are named as the table's (`python experiments/biotorch_table.py runs/biotorch_lr0.1`).
"""

from configs.biotorch_lenet import sweep_run

LEARNING_RATE = 0.1
SEEDS = (0, 1, 2)
EPOCHS = 5


def get_sweep() -> list[dict]:
    return [
        sweep_run("bp", dataset, seed, EPOCHS, **{"optimizer.learning_rate": LEARNING_RATE})
        for seed in SEEDS
        for dataset in ("mnist", "fashion_mnist")
    ]
