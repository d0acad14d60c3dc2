r"""Every rule on the small ViT (configs/fashion_mnist_vit.py), Fashion-MNIST, 5 epochs.

    python -m wtfree.sweep configs/sweeps/fashion_mnist_vit_rules.py --workdir runs/vit_rules
    python experiments/results_table.py runs/vit_rules
    python -m wtfree.plot runs/vit_rules/{bp,fa,usf,kp,wm,sa}_s0 --out docs/vit_rules.png

Produces runs/vit_rules/<rule>_s<seed>, each a train.py workdir of the ViT config with its
hyperparameters unchanged (SGD momentum 0.9, 0.05 with a half-epoch warmup and cosine decay,
batch 128, weight decay 1e-4 on the kernels): seeds 0, 1 and 2 of bp, fa, usf, kp, wm and sa,
seed 0 of every other rule a converted model takes (dfa_block and the settling rules are
refused by the config). ``dfa_lr0.01_s0`` is dfa at a fifth of the common rate as well, since
dfa diverged at the common rate on the ResNet (docs/results_fashion_mnist_resnet.md). The runs
do not depend on each other: ``--dry_run`` lists their commands for running several at once.
docs/vit.md has the measured table.
"""

SEEDED = ("bp", "fa", "usf", "kp", "wm", "sa")  # three seeds each
ONCE = ("dfa", "frsf", "brsf", "ss", "shallow", "aa", "ia", "wm_reg")
FASHION_MNIST_IDX = "/usr/share/datasets/fashion-mnist"


def _run(rule: str, seed: int, name: str, **overrides) -> dict:
    return {
        "config": f"configs/fashion_mnist_vit.py:rule={rule}",
        "overrides": {"idx_dir": FASHION_MNIST_IDX, "seed": seed, **overrides},
        "name": name,
    }


def get_sweep() -> list[dict]:
    runs = [_run(rule, seed, f"{rule}_s{seed}") for seed in (0, 1, 2) for rule in SEEDED]
    runs += [_run(rule, 0, f"{rule}_s0") for rule in ONCE]
    runs.append(_run("dfa", 0, "dfa_lr0.01_s0", **{"optimizer.learning_rate": 0.01}))
    return runs
