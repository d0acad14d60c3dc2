r"""configs/sweeps/settling_mnist.py's sweep on Fashion-MNIST: the same rules, settings, lengths,
seeds and baselines.

    apt-get install -y dataset-fashion-mnist  # IDX files in /usr/share/datasets/fashion-mnist
    python -m wtfree.sweep configs/sweeps/settling_fashion_mnist.py \
        --workdir runs/settling_fashion_mnist
    python experiments/results_table.py runs/settling_fashion_mnist
"""

from configs.sweeps.settling_mnist import SETTLING, settling_runs

IDX_DIR = "/usr/share/datasets/fashion-mnist"


def get_sweep() -> list[dict]:
    return settling_runs(SETTLING, ",dataset=fashion_mnist", {"idx_dir": IDX_DIR})
