r"""ResNet-18 on ImageNet (ILSVRC 2012), with any learning rule: the setting of Akrout et al. 2019.

    python train.py --config=configs/imagenet_resnet18.py:rule=kp --workdir=runs/in_r18/kp
    python train.py --config=configs/imagenet_resnet18.py:rule=kp,runlocal=True \
        --workdir=/tmp/in_r18   # 4 steps of batch 8, float32, on CPU

ImageNet must be prepared by the user first: TFDS cannot download it. Put ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar in ~/tensorflow_datasets/downloads/manual/ (or <data_dir>/downloads/
manual/) and run `tfds build imagenet2012 --file_format=array_record` (with --data_dir to
match `--config.data_dir`); wtfree reads it with `tfds.data_source`, which needs array_record.
`runlocal=True` still reads the prepared dataset; it evaluates on 2 batches only
(`config.eval_steps`).

`rule` is any of wtfree.rules.names(); `output_rule` (default: `rule`) the last layer's. DFA
routes the error to the stem and to every block through its own fixed B: about 950M entries for
ResNet-18 at 224x224 with 1000 classes, 3.8 GB in float32 on every device.

Runtime: not measured (no accelerator and no ImageNet where this was written). 90 epochs are
112590 steps of batch 1024; wm adds one forward pass of the mirror batch per step.

Expected accuracy: backprop ResNet-18 with this recipe should reach about 69.8% top-1 / 89.1% top-5
(torchvision's resnet18 weights: 69.76 / 89.08, trained with this schedule at batch 256).
The numbers of Akrout et al. 2019 for each rule (their ImageNet table, ResNet-18 and ResNet-50)
could not be retrieved when this file was written, so none are quoted here: take them from the
paper. Its abstract says that wm and kp outperform feedback alignment and sign-symmetry on
ImageNet and nearly match backprop.

Hyperparameters:
- SGD, momentum 0.9, weight decay 1e-4, batch 1024 with learning rate 0.4 (0.1 per 256 images,
  linearly scaled: Goyal et al. 2017, "Accurate, Large Minibatch SGD"), 5 warm-up epochs
  (Goyal et al. 2017), divided by 10 at epochs 30, 60 and 80 of 90 (He et al. 2016;
  Goyal et al. 2017). Random resized crops and flips for training, the central 224 of the
  256-resized image for evaluation (wtfree/data/imagenet.py).
- dfa: a tenth of bp's learning rate (on MNIST LeNet DFA diverges at bp's rate and trains at a
  tenth of it; not measured on ImageNet).
- bfloat16 compute, float32 parameters, optimizer state and loss.
- KP: the optimizer gives B W's steps and decay (Akrout et al. 2019, eqs. 16-17).
- WM: unit-variance noise, a mirror batch of 32 per device after every step and 500 before
  training, decay 0.01 and learning rate 0.01 / 32, which settles B at W in every layer. A
  provisional setting, not a tuned one: Akrout et al. 2019's ResNet mirror settings are not in
  their published code.
- `output_rule` is the rule itself. The last layer's W gets its true gradient under every rule;
  `output_rule` only picks the B that carries the error into the pooled features. Xiao et al.
  2018's sign-symmetry ImageNet code defaults to backprop for the last layer
  (github.com/willwx/sign-symmetry, `--lalgo`); `:output_rule=bp` reproduces that.
"""

import ml_collections

from configs import common
from wtfree import config_lib

BATCH_SIZE = 1024
BASE_LEARNING_RATE = 0.1 * BATCH_SIZE / 256  # Goyal et al. 2017, linear scaling


def get_config(arg: str | None = None, model: str = "resnet18") -> ml_collections.ConfigDict:
    arg = config_lib.parse_arg(arg, rule="bp", output_rule="", runlocal=False)
    config = common.base_config(
        rule=arg.rule,
        output_rule=arg.output_rule or arg.rule,
        dataset="imagenet2012",
        model=model,
        batch_size=BATCH_SIZE,
        num_epochs=90,
        # DFA diverges at bp's rate on MNIST LeNet (measured) and trains at a tenth of it.
        learning_rate=BASE_LEARNING_RATE / (10 if arg.rule == "dfa" else 1),
    )
    config.augment = True
    config.model_kwargs = ml_collections.ConfigDict(dict(zero_init_residual=False))
    config.dtype = "bfloat16"
    config.eval_batch_size = 1024
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "step"
    config.optimizer.warmup_epochs = 5.0
    config.optimizer.boundaries = (30 / 90, 60 / 90, 80 / 90)
    common.set_mirror(config, batch_size=32, pretrain_batches=500, decay=0.01)
    config.log_every_steps = 500
    config.checkpoint_every_steps = 2000
    if arg.runlocal:
        common.set_runlocal(config, batch_size=8, steps=4)
        config.eval_batch_size = 8
        config.dtype = "float32"  # bfloat16 convolutions are slow on CPU
    return config
