r"""ResNet-8 with batch norm on Fashion-MNIST (or MNIST), any rule: the paper's setting, small.

    python train.py --config=configs/fashion_mnist_resnet.py:rule=wm \
        --config.idx_dir=/usr/share/datasets/fashion-mnist --workdir=runs/fmr/wm_s0
    python train.py --config=configs/fashion_mnist_resnet.py:rule=kp,dataset=mnist \
        --workdir=runs/mnist_resnet/kp
    python -m wtfree.sweep configs/sweeps/fashion_mnist_resnet_rules.py --workdir runs/fmr

`rule` is any of wtfree.rules.names() but di and pal: ar and pc (fixed predictions) settle one
state per residual block's output (docs/settling.md, "Residual nets": `rule=ar,runlocal=True`
trains 20 steps in about a minute here), `--config.settling.<field>` as in
configs/mnist_settling.py; `dataset` is fashion_mnist (TFDS, or the IDX files of
Debian's dataset-fashion-mnist through `--config.idx_dir`) or mnist (the offline copy);
`runlocal=True` trains 20 steps of batch 32, for a quick look.

The net: He et al.'s CIFAR ResNet with one basic block per stage (ResNet-8: a 3x3 conv stem,
three stages of one block of two 3x3 convs at 8, 16 and 32 channels and 28x28, 14x14 and 7x7,
option-A shortcuts, global average pooling, a dense output layer; 19,074 parameters), batch
norm after every conv, every conv and the output layer learning by the rule (no weight
transport anywhere; batch norm, pooling and the additions by autodiff, as in the paper).

Runtime: an epoch (468 steps of batch 128) takes 28 s for bp alone on the 2-core machine this
was written on; with three other jobs sharing it, 5-10 minutes. wm adds a mirror batch of 128
per step.

Measured test accuracy after 5 epochs (README, "A residual net on Fashion-MNIST", has every
epoch and the angles): mean of seeds 0-2 bp 90.93, wm 90.58, kp 90.25 (spreads 0.1-0.5); seed 0
usf 89.47, frsf 87.64, brsf 87.32, fa 81.62, dfa (lr 0.01) 64.00. kp's B ends 31-46 degrees
from W at this decay, as the closed form of its matched decay says it must; at weight decay
5e-3 it ends within 0.7 degrees at 90.77% (configs/sweeps/fashion_mnist_resnet_kp_decay.py).

The alignment rules (Kunin et al. 2020; configs/sweeps/alignment_resnet.py, README "Alignment
rules", ResNet-8), seed 0, at the authors' settings (default coefficients, B stepped at W's
rate, conv primitives summed over positions): sa 88.43 (B 16-18 degrees from W on the convs, 6
on the output layer: B relaxes by only e^-2.3 over these 2340 steps), aa 90.08 (convs 2-6
degrees, output 21), while ia and wm_reg diverge within 117 steps (B NaN; measured curvature:
ia's first stage is past momentum SGD's stability limit, wm_reg's minimum is 800 times W there).
The same sweep runs them with ``alignment.learning_rate_scale=10`` and ``positions=mean`` (sa,
seeds 0-2: 89.54, B within 3 degrees; ia stable across a 10x range of alpha, 72.7-84.3;
wm_reg diverges), aa at the authors' settings over seeds 0-2 (90.11; its output B 21-24
degrees from W), and sa with ``alignment.momentum=0`` and ``learning_rate_scale=5000`` (91.18
over seeds 0-2, B within 0.2 degrees of W: without momentum on B it follows W in one step).

Hyperparameters, the same for every rule unless said:
- SGD, momentum 0.9, learning rate 0.1 with cosine decay to 0 over the run, batch 128, weight
  decay 5e-4 on every kernel (for kp, the same decay on B: Akrout et al. 2019's matched decay),
  5 epochs. dfa gets 0.01: it diverges at 0.1 (measured: train loss 54 at step 117).
- Weight mirrors: unit-variance noise, a mirror batch of 128 after every step and 100 before
  training, decay 0.1 and learning rate 0.1 / 128 (B settles at W, lagging it by about 10
  steps; docs/weight_mirrors.md explains why not 0.01).
"""

import dataclasses

import ml_collections

from configs import common
from wtfree import config_lib, settling
from wtfree.kinds import settling as settling_kind

# ar and pc settle one state per block's output (docs/settling.md, "Residual nets"); AR's states
# start at zero: from the activations, what T steps leave of them outweighs the mean loss's error.
SETTLING = {"ar": {"init": "zeros"}, "pc": {}}
# dfa diverges at 0.1 here (measured: train loss 54 at step 117, 124 at step 234, seed 0).
LEARNING_RATES = {"dfa": 0.01}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(arg, rule="bp", dataset="fashion_mnist", runlocal=False)
    if arg.dataset not in ("mnist", "fashion_mnist"):
        raise ValueError(f"dataset={arg.dataset!r}; this config is for mnist or fashion_mnist")
    config = common.base_config(
        rule=arg.rule,
        dataset=arg.dataset,
        model="resnet8",
        batch_size=128,
        num_epochs=5,
        learning_rate=LEARNING_RATES.get(arg.rule, 0.1),
    )
    config.model_kwargs = ml_collections.ConfigDict(dict(width=8))
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.schedule = "cosine"
    # Mirror decay 0.1: B lags W by about 1/decay = 10 steps. docs/weight_mirrors.md: a lag of
    # 30-100 steps (decay 0.01) is what blows training up; 100 batches at this decay settle B.
    common.set_mirror(config, batch_size=128, pretrain_batches=100, decay=0.1)
    if arg.rule in SETTLING:
        values = {f.name: f.default for f in dataclasses.fields(settling.get(arg.rule).config)}
        values.update({**settling_kind.KIND_KEYS, **SETTLING[arg.rule]})
        config.settling = ml_collections.ConfigDict(
            {
                k: ml_collections.config_dict.placeholder(float) if v is None else v
                for k, v in values.items()
            }
        )
    config.log_every_steps = 117  # 4 alignment measurements an epoch
    if arg.runlocal:
        common.set_runlocal(config, batch_size=32, steps=20)
    return config
