r"""LeNet (configs/mnist_lenet.py) on MNIST and Fashion-MNIST, one run per rule, 3 epochs each.

    python -m wtfree.sweep configs/sweeps/lenet_rules.py --workdir runs/lenet

Produces runs/lenet/{mnist,fashion_mnist}_{bp,fa,dfa,usf,kp,wm}, each a train.py workdir.
Fashion-MNIST is read from the IDX files of Debian's dataset-fashion-mnist package
(`apt-get install dataset-fashion-mnist`). docs/lenet_results.md has the measured accuracies
after each epoch and the seconds per epoch on a shared 2-core CPU.
"""

RULES = ("bp", "fa", "dfa", "usf", "kp", "wm")
FASHION_MNIST_IDX = "/usr/share/datasets/fashion-mnist"


def get_sweep() -> list[dict]:
    runs = []
    for dataset in ("mnist", "fashion_mnist"):
        for rule in RULES:
            overrides = {"num_epochs": 3}
            if dataset == "fashion_mnist":
                overrides["idx_dir"] = FASHION_MNIST_IDX
            runs.append(
                {
                    "config": f"configs/mnist_lenet.py:rule={rule},dataset={dataset}",
                    "overrides": overrides,
                    "name": f"{dataset}_{rule}",
                }
            )
    return runs
