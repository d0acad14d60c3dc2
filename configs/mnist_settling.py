r"""The settling rules on MNIST or Fashion-MNIST, each at its paper's MLP setting, or on LeNet
(docs/settling.md).

    for rule in ar pc di pal; do
        python train.py --config=configs/mnist_settling.py:rule=$rule \
            --workdir=runs/settling_$rule --config.num_epochs=1
    done
    python train.py --config=configs/mnist_settling.py:rule=ar,model=lenet \
        --workdir=runs/settling_lenet_ar --config.num_epochs=1
    python train.py --config=configs/mnist_settling.py:rule=pal,model=lenet \
        --workdir=runs/settling_lenet_pal --config.num_train_steps=200
    python train.py --config=configs/mnist_settling.py:rule=pc,dataset=fashion_mnist \
        --config.idx_dir=/usr/share/datasets/fashion-mnist --workdir=runs/settling_fashion_pc \
        --config.num_epochs=1

`rule` is ar (activation relaxation), pc (relaxed predictive coding), di (dynamic inversion;
NDI, its direct solve, unless `--config.settling.dynamic=True`) or pal (phaseless alignment
learning); any other rule (bp, fa, kp, ...) trains at a settling rule's setting for comparison,
`setting` (default `ar`) naming which: `rule=fa,setting=pal` (its learning rate times the
setting's `loss_scale`: the same steps on the mean loss). `model` is mlp (the setting's) or
lenet (wtfree's LeNet: conv 6, conv 16, each 5x5 VALID with 2x2 max pooling, dense 120, 84, 10,
with the setting's activation, loss, batch and rule settings, at a rate of 0.03 on the mean
loss, `LENET_LEARNING_RATE`; every settling rule: pal as in its authors' LeNet, noise after
each conv's pooling, B fixed in the conv layers and learned in the dense ones);
`dataset` mnist (the offline copy works) or fashion_mnist (with `--config.idx_dir=DIR` of its
IDX files, or TFDS). `runlocal=True`: 8 steps of 32.
Every field of the rule's `*Config` is `config.settling.<field>` with the authors' default
(`--config.settling.steps=20`, `--config.settling.feedback=fa`, ...), plus `feedback_init`
(`random`, or `neg_transpose`: B = -W^T, DI's start), `feedback_learning_rate_scale` (B's
step size over W's) and `loss_scale` (the rule settles on this times the mean loss). Time per
epoch and accuracies after one epoch: docs/settling.md.

The settings, and where they depart from the authors' code (docs/settling.md cites its lines):
- ar: 784-300-300-100-10 ReLU, linear output, batch 64, plain SGD at lr 5e-4, T=100 relaxation
  steps of 0.1, error down through W^T (`settling.feedback=bp`), 50 epochs. The code's loss is
  the sum of squares over outputs and examples: `loss_scale` 64 x 10 times wtfree's mean
  squared error. The scale matters: the states start at the activations and 0.9^100 of them is
  left after T steps, which errors 640 times smaller (the mean loss at lr 0.32) do not drown
  (docs/settling.md measured 47 degrees off backprop at the first layer).
- pc: 784-300-100-100-10 ReLU, batch 64, lr 1e-3, T=500 inference steps of 0.01, fixed
  predictions, W^T, 30 epochs; the code's loss is 0.5 x the sum of squares: `loss_scale` 320.
  The code's rate is 5e-4, but its W and B updates take twice the gradient (`dw*2`, `main.py`
  l. 206-214), so 1e-3 here (5e-4 until 2026-12-04: half the authors' step, docs/settling.md).
- di: 784-1000-10 tanh, softmax cross-entropy, NDI with alpha 0 and B = -W^T at init (weight
  transport once, as the authors), B fixed, W ~ U(-0.01, 0.01) (variance scaling 0.03, uniform),
  15 epochs; fa at this setting draws B ~ U(-0.5, 0.5) as the authors' FA does (53 times W's
  limit). The authors train one example at a time at lr 1e-3 with a decay of 1e-6 per example
  not scaled by lr; here batches of 32 at lr 32 x 1e-3 and weight decay 32 x 1e-6 / lr = 1e-3
  (the same steps to first order). Inputs standardized by the training set's mean and std, as
  the authors' (`STANDARDIZE`; pixels k/255 until 2026-12-04).
- pal: the FC part of the authors' LeNet as an MLP, 784-500-10 sigmoid, squared error, batch
  128, 100 time steps of dt 0.1 per batch, tau_xi = tau_HP = 10 dt, sigma 5e-2, regularizer
  5e-5, B learning at 10x W's rate (`bw_lr_factors`), 50 epochs. The authors' W learning rates
  (per-layer factors under an optimizer) do not map to plain SGD: lr 0.03 here, wtfree's choice
  (at 1.0, 0.3 and 0.1 pal and fa reached an infinite loss within 60 steps). With
  `model=lenet` PAL treats the convs as the authors' LeNet does (`settling.pal.is_conv`): their
  B fixed (FA), noise added after each pooling; B learns in dense_0, dense_1 and output. 200
  steps take about 4 min here and stay at chance (10.95 %), as bp's do at this setting (10.28 %);
  B's step is 10 x W's 0.03, 27x under the authors' absolute 8 per time step;
  `--config.settling.feedback_learning_rate_scale=266.67` matches theirs (B within 16 degrees
  of W in 200 steps; docs/settling.md, "LeNet, 200 steps on MNIST").

W and B start from wtfree's variance-scaling normal draw (ReLU and sigmoid layers) where the AR
and PC codes draw N(0, 0.05).
"""

import dataclasses
import math

import ml_collections

from configs import common
from wtfree import config_lib, rules, settling
from wtfree.kinds import settling as settling_kind

placeholder = ml_collections.config_dict.placeholder
MODELS = ("mlp", "lenet")
DATASETS = ("mnist", "fashion_mnist")

# setting -> (widths, activation, loss, batch size, learning rate, epochs, model kwargs)
SETTINGS = {
    "ar": ((300, 300, 100), "relu", "squared_error", 64, 5e-4, 50, {}),
    "pc": ((300, 100, 100), "relu", "squared_error", 64, 1e-3, 30, {}),  # 5e-4 x the code's 2
    "di": (
        (1000,),
        "tanh",
        "softmax_xent",
        32,
        0.032,
        15,
        dict(kernel_scale=0.03, kernel_distribution="uniform"),
    ),
    "pal": ((500,), "sigmoid", "squared_error", 128, 0.03, 50, {}),
}
# LeNet's rate on the mean loss (the rule's on its loss_scale times it is this over the scale):
# at the MLP settings' 0.32 bp's LeNet collapsed to a constant output within 100 steps, and
# after 200 steps (200 test images) bp reached 41 % at 0.03 and 23 % at 0.1.
LENET_LEARNING_RATE = 0.03
# DI's inputs: (pixel / 255 - mean) / std over the whole training set, as the authors standardize
# them (mnist_classification.py l. 43-47); the mean and std of wtfree's copies' training images.
STANDARDIZE = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
# DI's FA baseline draws B ~ U(-0.5, 0.5) (dynamic-inversion mnist_classification.py l. 64, 82):
# 53 times the limit of W's own draw at this setting, sqrt(3 x 0.03 / 1000).
DI_FA_FEEDBACK_LIMIT = 0.5
# Each setting's entries of config.settling that differ from the rule's *Config defaults.
OVERRIDES = {
    "ar": {"loss_scale": 64 * 10.0},  # the code's sum of squares over examples and outputs
    "pc": {"loss_scale": 64 * 10.0 / 2},  # its half sum of squares
    "pal": {"feedback_learning_rate_scale": 10.0},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(
        arg, rule="ar", setting="", model="mlp", dataset="mnist", runlocal=False
    )
    is_settling = rules.get(arg.rule).feedback == rules.SETTLING
    setting = arg.setting or (arg.rule if is_settling else "ar")
    if setting not in SETTINGS:
        raise ValueError(f"setting={setting!r}; allowed: {', '.join(SETTINGS)}")
    if is_settling and setting != arg.rule:
        raise ValueError(f"setting={setting!r} with rule={arg.rule!r}; allowed: {arg.rule}")
    if arg.model not in MODELS:
        raise ValueError(f"model={arg.model!r}; allowed: {', '.join(MODELS)}")
    if arg.dataset not in DATASETS:
        raise ValueError(f"dataset={arg.dataset!r}; allowed: {', '.join(DATASETS)}")
    widths, activation, loss, batch_size, lr, epochs, kwargs = SETTINGS[setting]
    scale = OVERRIDES.get(setting, {}).get("loss_scale", 1.0)
    if arg.model == "lenet":
        lr = LENET_LEARNING_RATE / scale
    if not is_settling:  # the same steps on the mean loss the other rules train on
        lr *= scale
    config = common.base_config(
        rule=arg.rule,
        dataset=arg.dataset,
        model=arg.model,
        batch_size=batch_size,
        num_epochs=epochs,
        learning_rate=lr,
    )
    if arg.model == "lenet":  # He's init for ReLU (LeNet's default), Glorot's scale otherwise
        scale = 2.0 if activation == "relu" else 1.0
        config.model_kwargs = ml_collections.ConfigDict(
            {"activation": activation, "padding": "VALID", "kernel_scale": scale}
        )
    else:
        config.model_kwargs = ml_collections.ConfigDict(
            {"widths": widths, "activation": activation, "kernel_distribution": "normal", **kwargs}
        )
    config.loss = loss
    if setting == "di":
        config.optimizer.weight_decay = 32 * 1e-6 / lr
        config.input_mean, config.input_std = STANDARDIZE[arg.dataset]
        if arg.rule == "fa" and arg.model == "mlp":  # the authors' FA: B ~ U(-0.5, 0.5)
            config.model_kwargs.feedback_scale = DI_FA_FEEDBACK_LIMIT / math.sqrt(
                3 * kwargs["kernel_scale"] / widths[-1]
            )
    if is_settling:
        config.settling = ml_collections.ConfigDict()
        values = {f.name: f.default for f in dataclasses.fields(settling.get(arg.rule).config)}
        values.update(settling_kind.KIND_KEYS)
        values.update(OVERRIDES.get(arg.rule, {}))
        if arg.rule == "di":
            values["feedback_init"] = "neg_transpose"
        for key, value in values.items():
            config.settling[key] = placeholder(float) if value is None else value
    config.log_every_steps = 200
    if arg.runlocal:
        common.set_runlocal(config, batch_size=32, steps=8)
    return config
