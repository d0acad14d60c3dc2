r"""How biotorch's LeNet error falls with the run's length: configs/biotorch_lenet.py at 20 epochs
(the learning rate dropping at 10 and 15), seed 0, for bp, fa, dfa and usf on MNIST and bp and
fa on Fashion-MNIST, beside the 5-epoch runs of configs/sweeps/biotorch_lenet.py.

    python -m wtfree.sweep configs/sweeps/biotorch_lenet_length.py --workdir runs/biotorch_20

Produces runs/biotorch_20/<dataset>_<rule>_s0; `python experiments/biotorch_table.py
runs/biotorch_20` gives their best-epoch errors (docs/biotorch_lenet.md, "Length").
"""

EPOCHS = 20
RUNS = (("mnist", "bp"), ("mnist", "fa"), ("mnist", "dfa"), ("mnist", "usf"),
        ("fashion_mnist", "bp"), ("fashion_mnist", "fa"))  # fmt: skip
FASHION_MNIST_IDX = "/usr/share/datasets/fashion-mnist"


def get_sweep() -> list[dict]:
    runs = []
    for dataset, rule in RUNS:
        overrides = {"seed": 0}
        if dataset == "fashion_mnist":
            overrides["idx_dir"] = FASHION_MNIST_IDX
        runs.append(
            {
                "config": f"configs/biotorch_lenet.py:rule={rule},dataset={dataset},"
                f"epochs={EPOCHS}",
                "overrides": overrides,
                "name": f"{dataset}_{rule}_s0",
            }
        )
    return runs
