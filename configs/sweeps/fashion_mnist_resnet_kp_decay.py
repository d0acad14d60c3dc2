r"""Kolen-Pollack on the residual net (configs/fashion_mnist_resnet.py) as its weight decay grows.

    python -m wtfree.sweep configs/sweeps/fashion_mnist_resnet_kp_decay.py --workdir runs/fmr_kp
    python -m wtfree.plot runs/fmr_kp/kp_wd* --out runs/fmr_kp/report.png

Produces runs/fmr_kp/kp_wd{0.0005,0.002,0.005}: KP with optimizer.weight_decay (the same decay
for W and B, Akrout et al. 2019's matched decay) in {5e-4, 2e-3, 5e-3}, 2 epochs each on
Fashion-MNIST (shorter than the comparison, whose 5 epochs use 5e-4). KP's matched updates keep
B - W fixed and only the decay shrinks it, by about lr * decay / (1 - momentum) a step; README
("A residual net on Fashion-MNIST") has the measured angles.
"""

WEIGHT_DECAYS = (5e-4, 2e-3, 5e-3)
FASHION_MNIST_IDX = "/usr/share/datasets/fashion-mnist"


def get_sweep() -> list[dict]:
    return [
        {
            "config": "configs/fashion_mnist_resnet.py:rule=kp",
            "overrides": {
                "idx_dir": FASHION_MNIST_IDX,
                "optimizer.weight_decay": decay,
                "num_epochs": 2,
            },
            "name": f"kp_wd{decay:g}",
        }
        for decay in WEIGHT_DECAYS
    ]
