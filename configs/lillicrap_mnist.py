r"""Lillicrap et al. 2016, Fig. 2a-b: a 784-1000-10 network of logistic units on MNIST.

    python train.py --config=configs/lillicrap_mnist.py:rule=fa --workdir=runs/lmnist_fa
    python -m wtfree.sweep configs/sweeps/lillicrap_mnist.py --workdir runs/lillicrap_mnist

`rule` is bp, fa or shallow (any rule works). Everything but the width is
configs/mnist_mlp.py (the seed experiment): sigmoid hidden and output units, per example the
sum over the 10 outputs of the sigmoid cross-entropy (whose error at the output units is
e = y - y*, the paper's error vector), plain SGD at 0.2, batch 128, W, b and B ~
N(0, 1/(fan_in + fan_out)), 20 epochs, about 2 minutes per run on 2 loaded CPU cores.
Measured test accuracy after 20 epochs: bp 96.10, fa 91.79, shallow 87.87, and fa with
`--config.model_kwargs.feedback_scale=9` (B about the size of U[-0.5, 0.5]) 96.50; the paper
reports 2.1% test error for FA (Fig. 2a). docs/seed_papers.md has the curves.
`runlocal=True` runs 8 small steps.
"""

import ml_collections

from configs import common, mnist_mlp
from wtfree import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(arg, rule="fa", runlocal=False)
    config = mnist_mlp.get_config(f"rule={arg.rule}")
    config.model_kwargs.widths = (1000,)
    config.model_kwargs.feedback_scale = 1.0  # B drawn like W
    config.optimizer.learning_rate = 0.2
    if arg.runlocal:
        common.set_runlocal(config, batch_size=16, steps=8)
    return config
