r"""How biotorch's LeNet error falls with the run's length: configs/biotorch_lenet.py at 20 epochs
(the learning rate dropping at 10 and 15; bp and usf at 0.1), seed 0, for bp, fa, dfa, usf,
brsf and frsf on MNIST and bp and fa on Fashion-MNIST, beside the 5-epoch runs of
configs/sweeps/biotorch_lenet.py.

    python -m wtfree.sweep configs/sweeps/biotorch_lenet_length.py --workdir runs/biotorch_20

Produces runs/biotorch_20/<dataset>_<rule>_s0; `python experiments/biotorch_table.py
runs/biotorch_20` gives their best-epoch errors (docs/biotorch_lenet.md, "Length").
"""

from configs.biotorch_lenet import sweep_run

EPOCHS = 20
RUNS = (("mnist", "bp"), ("mnist", "fa"), ("mnist", "dfa"), ("mnist", "usf"),
        ("fashion_mnist", "bp"), ("fashion_mnist", "fa"),
        ("mnist", "brsf"), ("mnist", "frsf"))  # fmt: skip


# These runs were measured before the table's learning-rate protocol moved bp and usf from 0.1
# to 0.03 (configs/sweeps/biotorch_lenet_lr.py); they keep the rate they ran at.
RATES = {"bp": 0.1, "usf": 0.1}


def get_sweep() -> list[dict]:
    return [sweep_run(rule, dataset, 0, EPOCHS, **_rate(rule)) for dataset, rule in RUNS]


def _rate(rule: str) -> dict:
    return {"optimizer.learning_rate": RATES[rule]} if rule in RATES else {}
