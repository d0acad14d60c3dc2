r"""How biotorch's LeNet error falls with the run's length: configs/biotorch_lenet.py at 20 epochs
(the learning rate dropping at 10 and 15), seed 0, for bp, fa, dfa and usf on MNIST and bp and
fa on Fashion-MNIST, beside the 5-epoch runs of configs/sweeps/biotorch_lenet.py.

    python -m wtfree.sweep configs/sweeps/biotorch_lenet_length.py --workdir runs/biotorch_20

Produces runs/biotorch_20/<dataset>_<rule>_s0; `python experiments/biotorch_table.py
runs/biotorch_20` gives their best-epoch errors (docs/biotorch_lenet.md, "Length").
"""

from configs.biotorch_lenet import sweep_run

EPOCHS = 20
RUNS = (("mnist", "bp"), ("mnist", "fa"), ("mnist", "dfa"), ("mnist", "usf"),
        ("fashion_mnist", "bp"), ("fashion_mnist", "fa"))  # fmt: skip


def get_sweep() -> list[dict]:
    return [sweep_run(rule, dataset, 0, EPOCHS) for dataset, rule in RUNS]
