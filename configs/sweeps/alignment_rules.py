r"""The alignment rules (sa, aa, ia, wm_reg; Kunin et al. 2020) on the seed MLP, the modern MLP
and LeNet on Fashion-MNIST, with the authors' default coefficients.

    python -m wtfree.sweep configs/sweeps/alignment_rules.py --workdir runs/alignment

Runs ``seed_<rule>`` (configs/mnist_mlp.py, 20 epochs, as configs/sweeps/mnist_rules.py runs
bp, fa, wm, kp), ``modern_<rule>`` (configs/mnist_mlp_modern.py, 15 epochs, as
configs/sweeps/mnist_modern.py) and ``lenet_fashion_<rule>`` (configs/mnist_lenet.py on
Fashion-MNIST, 3 epochs, as docs/lenet_results.md; the IDX files of Debian's
dataset-fashion-mnist in /usr/share/datasets/fashion-mnist). README, "Alignment rules", has
the measured accuracies and angles; the MLP runs take 1-3 minutes each on a shared 2-core CPU,
the LeNet runs 3-10.
"""

RULES = ("sa", "aa", "ia", "wm_reg")
FASHION_IDX = "/usr/share/datasets/fashion-mnist"


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
    for rule in RULES:
        runs.append(
            {
                "config": f"configs/mnist_lenet.py:rule={rule},dataset=fashion_mnist",
                "overrides": {"idx_dir": FASHION_IDX},
                "name": f"lenet_fashion_{rule}",
            }
        )
    return runs
