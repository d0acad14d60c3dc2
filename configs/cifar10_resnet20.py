r"""ResNet-20 (He et al. 2016, option A shortcuts) on CIFAR-10, with any learning rule.

    python train.py --config=configs/cifar10_resnet20.py:rule=kp --workdir=runs/cifar10_resnet20/kp
    python train.py --config=configs/cifar10_resnet20.py:rule=kp,runlocal=True --workdir=/tmp/r20

`rule` is any of wtfree.rules.names(); `output_rule` (default: `rule`) the last layer's;
`runlocal=True` trains 10 steps of batch 16 on CPU (it still reads the real CIFAR-10, which TFDS
downloads and prepares on first use; `tfds build cifar10 --file_format=array_record`).

Runtime (not measured here, no GPU and no CIFAR-10 on the machine this was written on): 180
epochs are 70k steps of batch 128; ResNet-20 runs at several thousand images/s on one modern
GPU, so about an hour (wm: plus a mirror batch per step).

Expected test accuracy, from the biotorch benchmark (Sanfiz & Akrout 2021, "Benchmarking the
Accuracy and Robustness of Feedback Alignment Algorithms"; github.com/jsalbert/biotorch README,
ResNet-20 with SGD, 250 epochs, best-on-validation model, top-1 error): bp 90.6% (9.42), usf
85.0% (15.01), brsf 85.1% (14.95), frsf 83.1% (16.94), fa 63.6% (36.38), dfa 60.7% (39.35).
He et al. 2016 (Table 6) report 91.25% for bp. kp and wm are not in that benchmark; with
aligned B they should come close to bp (not measured).

Hyperparameters:
- SGD, momentum 0.9, batch 128, learning rate 0.1, weight decay 1e-4, divided by 10 at 50% and
  75% of training, 180 epochs, random crop (4-pixel padding) and flip: He et al. 2016, sec. 4.2
  (32k and 48k of 64k iterations). biotorch's ResNet-20 benchmark uses the same SGD settings
  with 250 epochs and steps at 100/150/200.
- Learning rate 0.1 for every rule but dfa, which gets 0.01 (on MNIST LeNet it diverges at
  bp's rate and trains at a tenth of it; not measured on ResNet-20). biotorch's SGD benchmark
  configs
  (benchmark_configs/cifar10/resnet_20/sgd/*.yaml) use 0.1 for bp, fa and usf and 0.001 for
  dfa; that small dfa rate compensates for a feedback matrix far larger than wtfree's, whose B
  has backprop's scale at init (not measured here).
- KP: the optimizer applies the same decay (1e-4) and steps to B as to W (Akrout et al. 2019,
  eqs. 16-17), so B - W shrinks by (1 - lr * 1e-4) a step.
- WM: unit-variance noise, a mirror batch of 128 per device after every step and 100 before
  training, decay 0.1 and learning rate 0.1 / 128, which settles B at W in every layer with a
  lag of about 10 steps (docs/weight_mirrors.md: a lag of 30-100 steps, decay 0.01, blows
  LeNet up at backprop's rate). Akrout et al. 2019 give no CIFAR settings (their published
  code is an MLP); not tuned.
- `output_rule` is the rule itself (every layer without weight transport). The last layer's W
  gets its true gradient under every rule; `output_rule` only decides the B that carries the
  error into the pooled features. Xiao et al. 2018's sign-symmetry code defaults to backprop
  for the last layer (github.com/willwx/sign-symmetry); use `:output_rule=bp` for that.
"""

import ml_collections

from configs import common
from wtfree import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(arg, rule="bp", output_rule="", runlocal=False)
    config = common.base_config(
        rule=arg.rule,
        output_rule=arg.output_rule or arg.rule,
        dataset="cifar10",
        model="resnet20",
        batch_size=128,
        num_epochs=180,
        # DFA diverges at bp's rate on MNIST LeNet (measured) and trains at a tenth of it.
        learning_rate=0.01 if arg.rule == "dfa" else 0.1,
    )
    config.augment = True
    config.model_kwargs = ml_collections.ConfigDict(dict(zero_init_residual=False))
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "step"
    config.optimizer.boundaries = (0.5, 0.75)
    # Decay 0.1: B lags W by 10 steps (docs/weight_mirrors.md: 30-100 blew LeNet up).
    common.set_mirror(config, batch_size=128, pretrain_batches=100, decay=0.1)
    config.log_every_steps = 200
    config.checkpoint_every_steps = 2000
    if arg.runlocal:
        common.set_runlocal(config, batch_size=16, steps=10)
    return config
