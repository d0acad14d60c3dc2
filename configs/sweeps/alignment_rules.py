r"""The alignment rules (sa, aa, ia, wm_reg; Kunin et al. 2020) on the seed MLP and the modern
MLP, with the authors' default coefficients.

    python -m wtfree.sweep configs/sweeps/alignment_rules.py --workdir runs/alignment

Runs ``seed_<rule>`` (configs/mnist_mlp.py, 20 epochs, as configs/sweeps/mnist_rules.py runs
bp, fa, wm, kp) and ``modern_<rule>`` (configs/mnist_mlp_modern.py, 15 epochs, as
configs/sweeps/mnist_modern.py). LeNet on Fashion-MNIST has its own sweep,
configs/sweeps/alignment_lenet.py. README, "Alignment rules", has the measured accuracies and
angles; each run takes 1-6 minutes on a shared 2-core CPU.
"""

RULES = ("sa", "aa", "ia", "wm_reg")


def get_sweep() -> list[dict]:
    runs = []
    for rule in RULES:
        runs.append(
            {
                "config": f"configs/mnist_mlp.py:rule={rule}",
                "overrides": {"num_epochs": 20},
                "name": f"seed_{rule}",
            }
        )
    for rule in RULES:
        runs.append(
            {"config": f"configs/mnist_mlp_modern.py:rule={rule}", "name": f"modern_{rule}"}
        )
    return runs
