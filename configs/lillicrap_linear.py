r"""Lillicrap et al. 2016, Fig. 1d-e: a 30-20-10 linear network learning a random linear map.

    python train.py --config=configs/lillicrap_linear.py:rule=fa --workdir=runs/lin_fa
    python -m wtfree.sweep configs/sweeps/lillicrap_linear.py --workdir runs/lillicrap_linear

`rule` is bp, fa or shallow (any rule works). Inputs x ~ N(0, I_30), targets y* = T x with T's
entries uniform in [-1, 1] (`wtfree.data.teacher`, 10000 training and 1000 test examples, drawn
once from the dataset seed), squared error averaged over the 10 outputs, plain SGD, batch 10,
learning rate 0.01 for every rule, W and B uniform in +-sqrt(3 * 0.1 / fan_in) (small, as the
paper starts near 0). 5000 steps, 4-6 s per run on 2 CPU cores. Measured test NSE after 1000 /
5000 steps and the hidden-update angle to bp at the end (docs/seed_papers.md has the figure):
bp 4.7e-4 / 8.1e-13; fa 0.054 / 3.2e-5, 39.5 deg; shallow 0.79 / 0.50, 90 deg; fa with
`--config.model_kwargs.feedback_scale=4.1` (B from U[-0.5, 0.5], as the paper) 5.8e-4 /
4.7e-10, 32.1 deg. `runlocal=True` runs 8 small steps.
"""

import ml_collections

from configs import common
from wtfree import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(arg, rule="fa", runlocal=False)
    config = common.base_config(
        rule=arg.rule,
        dataset="linear_teacher",
        model="mlp",
        batch_size=10,
        num_epochs=5,
        learning_rate=0.01,
    )
    config.dataset_kwargs = ml_collections.ConfigDict(
        dict(inputs=30, outputs=10, train_examples=10000, test_examples=1000, noise_std=0.0, seed=0)
    )
    config.model_kwargs = ml_collections.ConfigDict(
        dict(
            widths=(20,),
            activation="linear",
            kernel_scale=0.1,
            kernel_mode="fan_in",
            kernel_distribution="uniform",
            feedback_scale=1.0,  # the paper's B, U[-0.5, 0.5], is about 4x larger
        )
    )
    config.loss = "squared_error"
    # Batches this small gain nothing from being split, and need not divide the device count.
    config.num_devices = 1
    config.eval_batch_size = 1000
    config.log_every_steps = 50
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 5000
    if arg.runlocal:
        common.set_runlocal(config, batch_size=10, steps=8)
    return config
