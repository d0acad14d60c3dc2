r"""biotorch's LeNet-MNIST table (configs/biotorch_lenet.py): 3 seeds of bp, fa, dfa, usf, brsf
and frsf, and one of kp, wm, sa and aa, on MNIST and Fashion-MNIST.

    python -m wtfree.sweep configs/sweeps/biotorch_lenet.py --workdir runs/biotorch

Produces runs/biotorch/<dataset>_<rule>_s<seed>, each a train.py workdir; the table of
docs/biotorch_lenet.md is the best epoch's test error of each (`python
experiments/biotorch_table.py runs/biotorch`). Each run is EPOCHS epochs (biotorch's 100 take
about 40 CPU-hours for the 44 runs here); the learning rate drops tenfold at half and three
quarters of the run, as biotorch's at 50 and 75 of 100. Fashion-MNIST is read from the IDX
files of Debian's dataset-fashion-mnist package.
"""

from configs.biotorch_lenet import sweep_run

BIOTORCH_RULES = ("bp", "fa", "dfa", "usf", "brsf", "frsf")
OTHER_RULES = ("kp", "wm", "sa", "aa")
SEEDS = (0, 1, 2)
EPOCHS = 5


def get_sweep() -> list[dict]:
    # bp's seeds first: they decide the learning rate (configs/sweeps/biotorch_lenet_lr.py).
    return [
        sweep_run(rule, dataset, seed, EPOCHS)
        for rule in BIOTORCH_RULES + OTHER_RULES
        for seed in (SEEDS if rule in BIOTORCH_RULES else SEEDS[:1])
        for dataset in ("mnist", "fashion_mnist")
    ]
