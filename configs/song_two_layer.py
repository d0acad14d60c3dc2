r"""Song, Xu & Lafferty 2021: an over-parameterized two-layer network trained by feedback
alignment under squared error, with and without L2 regularization.

    python train.py --config=configs/song_two_layer.py --workdir=runs/song_l2_0.01 \
        --config.optimizer.weight_decay=0.01
    python -m wtfree.sweep configs/sweeps/song_l2.py --workdir runs/song_l2

A 20-1000-1 tanh network (the second layer linear) fits n = 50 examples of a random linear
teacher (`wtfree.data.teacher`: x ~ N(0, I_20), y* = T x, T uniform in [-1, 1]) by full-batch
gradient descent (batch = n, 5000 steps) on the squared error, learning rate 0.002 (0.05
diverges: with one rate for both layers, the second layer's curvature, ~p, caps it), `rule=fa`
in both layers: the first layer's error comes through the fixed random B of the second. L2
regularization is `optimizer.weight_decay` (lambda W added to every kernel's gradient, i.e.
(lambda/2)||W||^2 in the loss). The alignment the paper studies is
`align/weight_cosine/output`, cos(B, W) of the second layer.

24-32 s per run on 2 loaded CPU cores (it evaluates after every step: one step is an epoch).
Measured cos(B, W) of the second layer after 5000 steps for lambda = 0, 0.03, 0.1, 0.3, 1
(configs/sweeps/song_l2.py): 0.021, 0.025, 0.062, 0.774, 0.9999 (0.020 at init); the training
NSE goes to 1e-6 at lambda = 0 and stays at 0.059 at lambda = 1 (docs/seed_papers.md).
`runlocal=True` runs 8 steps.
"""

import ml_collections

from configs import common
from wtfree import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(arg, rule="fa", runlocal=False)
    n = 50
    config = common.base_config(
        rule=arg.rule,
        dataset="linear_teacher",
        model="mlp",
        batch_size=n,
        num_epochs=5000,  # one full-batch step per epoch
        learning_rate=0.002,
    )
    config.dataset_kwargs = ml_collections.ConfigDict(
        dict(inputs=20, outputs=1, train_examples=n, test_examples=1000, noise_std=0.0, seed=0)
    )
    config.model_kwargs = ml_collections.ConfigDict(
        dict(
            widths=(1000,),
            activation="tanh",
            kernel_scale=1.0,
            kernel_mode="fan_in",
            kernel_distribution="normal",
        )
    )
    config.loss = "squared_error"
    # Batches this small gain nothing from being split, and need not divide the device count.
    config.num_devices = 1
    config.eval_batch_size = 1000
    config.log_every_steps = 20
    config.checkpoint_every_steps = 5000
    if arg.runlocal:
        common.set_runlocal(config, batch_size=16, steps=8)
        config.dataset_kwargs.train_examples = 16  # still full-batch
    return config
