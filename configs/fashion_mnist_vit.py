r"""A small Vision Transformer on Fashion-MNIST (or MNIST), written with stock Flax layers only.

    python train.py --config=configs/fashion_mnist_vit.py:rule=bp \
        --config.idx_dir=/usr/share/datasets/fashion-mnist --workdir=runs/vit/bp
    python train.py --config=configs/fashion_mnist_vit.py:rule=kp,runlocal=True \
        --config.idx_dir=/usr/share/datasets/fashion-mnist --workdir=runs/vit/local_kp

`rule` is any of wtfree.rules.names() but dfa_block (refused in one line: a converted model
has no residual blocks) and the settling rules; under bp the model runs as it is, under any
other rule through ``wtfree.convert`` (wtfree.models.build_stock; under dfa the train step
first computes the output error, which each layer gets through its own B). `dataset` is
fashion_mnist (TFDS, or the IDX files of Debian's dataset-fashion-mnist through
`--config.idx_dir`) or mnist (the offline copy); `runlocal=True` trains 20 steps of batch 32,
for a quick look.

The net (wtfree/models/vit.py): 4x4 patches of 7x7 pixels embedded to 64 by one strided conv,
a class token, learned position embeddings (17 tokens), 4 pre-LN blocks of 4-head
self-attention (nn.MultiHeadDotProductAttention: its query, key, value and out projections are
nn.DenseGeneral) and a 64-128-64 GELU MLP, a final layer norm, a dense head on the class
token; 139,018 parameters. Every weight that multiplies an activation is a stock nn.Conv,
nn.DenseGeneral or nn.Dense kernel, which is what a rule reaches: B and its angle to W are
kept for each, the attention's query, key, value and out projections included. The patch
embedding reads the image itself, so its B would send no error anywhere: convert keeps it on
backprop (the same W gradient) and stores no B for it.

Runtime: the one-epoch bp command below took 138 s wall, start, compile and evaluation
included, on the 2-core machine this was written on with a load average of 9-10 from other
jobs; the steady rate under that load, 7.5-8.8 steps/s over the second half, is about a
minute an epoch. Not measured on a quiet machine.

Measured test accuracy, seed 0, bp: 83.85% after one epoch of its own schedule (warmup and
cosine over 468 steps):

    python train.py --config=configs/fashion_mnist_vit.py:rule=bp \
        --config.idx_dir=/usr/share/datasets/fashion-mnist --config.num_epochs=1 \
        --workdir=runs/vit/bp_1epoch

fa, the same command with rule=fa: 73.42% after one epoch, every hidden B still 87.6-91.9
degrees from W (docs/vit.md). Every rule for the config's 5 epochs, 3 seeds of six of them:
configs/sweeps/fashion_mnist_vit_rules.py and the table in docs/vit.md (bp 87.70, wm 86.83,
usf 86.49, kp 85.74, sa 84.49, fa 81.67; dfa and wm_reg diverge).

Hyperparameters, the same for every rule: SGD, momentum 0.9, learning rate 0.05 with a
linear warmup over the first half epoch and cosine decay to 0 (over 200 steps 0.05 led 0.15
at every logged step: train loss 0.66 against 0.84 at step 100), batch 128, 5 epochs, no
dropout, no augmentation. Weight decay 1e-4 on the kernels only (W, and B where it trains with
W: wtfree.optim.decay_mask), not on the biases (the attention's per-head biases included),
layer-norm scales, class token or position embeddings. Weight mirrors: a mirror batch of 128
after every step, 100 before training, decay 0.1 (as configs/fashion_mnist_resnet.py).
"""

import ml_collections

from configs import common
from wtfree import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(arg, rule="bp", dataset="fashion_mnist", runlocal=False)
    if arg.dataset not in ("mnist", "fashion_mnist"):
        raise ValueError(f"dataset={arg.dataset!r}; this config is for mnist or fashion_mnist")
    config = common.base_config(
        rule=arg.rule,
        dataset=arg.dataset,
        model="vit",
        batch_size=128,
        num_epochs=5,
        learning_rate=0.05,
    )
    config.model_kwargs = ml_collections.ConfigDict(
        dict(patch_size=7, width=64, depth=4, num_heads=4, mlp_dim=128, pool="cls")
    )
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 0.5
    common.set_mirror(config, batch_size=128, pretrain_batches=100, decay=0.1)
    config.log_every_steps = 117  # 4 alignment measurements an epoch
    if arg.runlocal:
        common.set_runlocal(config, batch_size=32, steps=20)
    return config
