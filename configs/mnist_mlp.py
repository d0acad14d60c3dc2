r"""The seed experiment: MNIST, MLP 784-500-10, sigmoid units, plain SGD (Akrout et al. 2019).

    python train.py --config=configs/mnist_mlp.py:rule=kp --workdir=runs/mnist_kp \
        --config.num_epochs=20

`rule` is one of bp, fa, dfa, usf (= ss), frsf, brsf, kp, wm; each gets the seed's learning rate
(bp 0.2, fa 0.2, wm 0.05, kp 0.3; the others 0.2). On a 2-core CPU machine an epoch takes a few
seconds (README, "Results", has the measured times and accuracies); after 20 epochs every rule
is at about 96-97% test accuracy, and after 400 epochs the seed reports bp 98.50, fa 97.80,
wm 98.49, kp 98.45.

The alignment rules sa, aa, ia, wm_reg (Kunin et al. 2020: B learns by an alignment loss whose
coefficients and input are `config.alignment`, common.set_alignment) get 0.2 too. Measured
after 20 epochs with the authors' default coefficients (README, "Alignment rules"; bp 96.26):
sa 95.67 with B 5.3 degrees from W at the output layer; aa 94.87 (29.7 degrees) on the layers'
own inputs and 95.66 (5.3 degrees) on noise (`--config.alignment.input=normal`); ia 90.79;
wm_reg 93.12.

Where this deliberately differs from the seed's numpy code (makrout/Deep-Learning-without-
Weight-Transport):
- Biases get the same step as weights: the seed divides their summed-then-averaged gradient by
  the batch size once more (lr / batch^2), which freezes them in practice.
- The mirror mode is linear with the bias blocked (y = W x, as the paper's eq. 6); the seed
  feeds sigmoid(W x + b). Its small-noise slope is sigmoid'(0) = 1/4, so the mirror learning
  rate here is the seed's 0.01 times 1/4, and the noise has the std of the seed's uniform noise
  (amplitude 0.1: std 0.1/sqrt(12)), Rademacher by default; `--config.mirror.noise=uniform`
  draws the seed's uniform noise itself, `normal` Gaussian noise (2 epochs: the same accuracy
  and angle with all three, README "Issue 11").
- The seed's rescaling of B after each mirror pass is dead code (it rebinds a local), so there
  is none here.
- KP's decay: the seed's default factor is 1, i.e. no decay; `optimizer.weight_decay` sets it
  (matched for W and B).
- Pixels are k/255 (the seed's keras MNIST does the same); the offline copy of MNIST is the
  same 60k/10k images as keras'.
- Data order: every epoch visits the training images in a fresh random order (a permutation
  drawn from the seed and the epoch, as every wtfree config does); the seed's code walks them
  in the same fixed order every epoch. There is no option for the fixed order.
"""

import ml_collections

from configs import common
from wtfree import config_lib

LEARNING_RATES = {"bp": 0.2, "fa": 0.2, "wm": 0.05, "kp": 0.3}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(arg, rule="bp")
    config = common.base_config(
        rule=arg.rule,
        dataset="mnist",
        model="mlp",
        batch_size=128,
        num_epochs=20,
        learning_rate=LEARNING_RATES.get(arg.rule, 0.2),
    )
    config.model_kwargs = ml_collections.ConfigDict(
        dict(
            widths=(500,),
            activation="sigmoid",
            # W, b and B ~ N(0, 1/(fan_in + fan_out)), as the seed draws them.
            kernel_scale=0.5,
            kernel_mode="fan_avg",
            kernel_distribution="normal",
            random_bias=True,
        )
    )
    config.loss = "sigmoid_xent"
    # Weight mirrors (rule=wm) as the seed runs them: one epoch's worth of mirror batches before
    # training, then one after every training step; no decay.
    common.set_mirror(
        config,
        batch_size=128,
        pretrain_batches=60000 // 128,
        decay=0.0,
        noise_std=0.1 / 12**0.5,
        learning_rate=0.01 / 4,
    )
    return config
