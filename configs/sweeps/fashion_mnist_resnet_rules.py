r"""The paper's comparison on a residual net with batch norm: every rule, Fashion-MNIST, 5 epochs.

    python -m wtfree.sweep configs/sweeps/fashion_mnist_resnet_rules.py --workdir runs/fmr
    python -m wtfree.plot runs/fmr/{bp,fa,dfa,usf,frsf,brsf,kp,wm}_s0 --out docs/fmr.png

Produces runs/fmr/<rule>_s<seed>, each a train.py workdir of configs/fashion_mnist_resnet.py
(ResNet-8, batch norm after every conv, every conv and the classifier learning by the rule):
one run per rule with seed 0, and seeds 1 and 2 as well for bp, kp and wm. README ("A residual
net on Fashion-MNIST") has the measured table.
"""

RULES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm")
SEEDED = ("bp", "kp", "wm")  # three seeds each
FASHION_MNIST_IDX = "/usr/share/datasets/fashion-mnist"


def get_sweep() -> list[dict]:
    # Rules whose runs do not depend on each other; dfa and wm last (their code changed last).
    order = [(rule, 0) for rule in RULES if rule not in ("dfa", "wm")]
    order += [(rule, seed) for seed in (1, 2) for rule in SEEDED if rule != "wm"]
    order += [("dfa", 0)] + [("wm", seed) for seed in (0, 1, 2)]
    return [
        {
            "config": f"configs/fashion_mnist_resnet.py:rule={rule}",
            "overrides": {"idx_dir": FASHION_MNIST_IDX, "seed": seed},
            "name": f"{rule}_s{seed}",
        }
        for rule, seed in order
    ]
