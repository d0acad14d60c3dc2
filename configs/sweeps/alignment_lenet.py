r"""The alignment rules on LeNet-5 / Fashion-MNIST (configs/mnist_lenet.py), 3 epochs each.

    python -m wtfree.sweep configs/sweeps/alignment_lenet.py \
        --workdir runs/alignment_lenet

At the config's learning rate for bp (0.01, momentum 0.9) with the authors' default
coefficients, sa diverges within 200 steps as fa does there (measured: loss 6e5 at step 100,
chance accuracy after epoch 1): B relaxes towards its minimum at 2 eta alpha / (1 - mu) =
2e-4 a step, so for the first thousands of steps it is still the random B of fa. These runs
therefore use fa's LeNet rate, 0.001, and every coefficient 50 times the default, which makes
that per-step rate 1e-3, the modern MLP's (configs/mnist_mlp_modern.py: 2 * 0.05 * 1e-3 / 0.1);
bp is rerun at 0.001 beside them, and ia and wm_reg also at their default coefficients
(``<rule>_x1``), since at 50 times those they diverge (measured). Each run takes 3-10 minutes
on a shared 2-core CPU. README ("Alignment rules") has the measured numbers.

The runs ``<rule>_lr0.01_s100_mean`` keep the config's rate, 0.01, and the default coefficients,
and give B its own step size instead: ``alignment.learning_rate_scale`` 100, from the budget
(SA's per-step relaxation 2 alpha s eta / (1 - mu) just below momentum's critical damping,
2 alpha s eta = (1 - sqrt(mu))^2, which is s = 131 here; the same 2 alpha s eta = 2e-3 as the
ResNet-8 sweep's s = 10 at 0.1), with the conv primitives averaged over output positions
(``alignment.positions=mean``); one epoch each.
"""

from wtfree.rules import alignment

RULES = ("sa", "aa", "ia", "wm_reg")
SCALE = 50.0
LEARNING_RATE = 0.001
FASHION_IDX = "/usr/share/datasets/fashion-mnist"


def get_sweep() -> list[dict]:
    base = {"idx_dir": FASHION_IDX, "optimizer.learning_rate": LEARNING_RATE}
    runs = [
        {
            "config": "configs/mnist_lenet.py:rule=bp,dataset=fashion_mnist",
            "overrides": base,
            "name": "bp_lr0.001",
        }
    ]
    for rule in RULES:
        coefficients = {
            f"alignment.coefficients.{rule}.{k}": v * SCALE
            for k, v in alignment.ALIGNMENTS[rule].defaults.items()
        }
        runs.append(
            {
                "config": f"configs/mnist_lenet.py:rule={rule},dataset=fashion_mnist",
                "overrides": {**base, **coefficients},
                "name": f"{rule}_x{SCALE:g}",
            }
        )
    for rule in ("ia", "wm_reg"):
        runs.append(
            {
                "config": f"configs/mnist_lenet.py:rule={rule},dataset=fashion_mnist",
                "overrides": base,
                "name": f"{rule}_x1",
            }
        )
    fast = {
        "idx_dir": FASHION_IDX,
        "num_epochs": 1,
        "alignment.learning_rate_scale": 100.0,
        "alignment.positions": "mean",
    }
    for rule in RULES:
        runs.append(
            {
                "config": f"configs/mnist_lenet.py:rule={rule},dataset=fashion_mnist",
                "overrides": fast,
                "name": f"{rule}_lr0.01_s100_mean",
            }
        )
    return runs
