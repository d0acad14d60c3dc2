r"""Kolen-Pollack on MNIST (configs/mnist_mlp.py) with the weight decay that KP relies on.

    python -m wtfree.sweep configs/sweeps/mnist_kp_decay.py --workdir runs/mnist_kp_decay
    python -m wtfree.plot runs/mnist_kp_decay/kp_wd* --out runs/mnist_kp_decay/report.png

Produces runs/mnist_kp_decay/kp_wd{0,0.0001,0.001,0.01}: KP at the seed's learning rate 0.3 with
optimizer.weight_decay (the same decay for W and B; the seed's default is none) in
{0, 1e-4, 1e-3, 1e-2}, 20 epochs each, each taking what configs/mnist_mlp.py's docstring says.
KP's matched updates keep B - W fixed, and only the decay shrinks it (Akrout et al. 2019): the
report's angle(B, W) panels show how fast each decay aligns B with W, and its accuracy panel
what each decay costs or gains (not measured here yet).
"""

WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)


def get_sweep() -> list[dict]:
    return [
        {
            "config": "configs/mnist_mlp.py:rule=kp",
            "overrides": {
                "optimizer.learning_rate": 0.3,
                "optimizer.weight_decay": decay,
                "num_epochs": 20,
            },
            "name": f"kp_wd{decay:g}",
        }
        for decay in WEIGHT_DECAYS
    ]
