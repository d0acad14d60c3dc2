r"""ResNet-50 on ImageNet (ILSVRC 2012), with any learning rule: the setting of Akrout et al. 2019.

    python train.py --config=configs/imagenet_resnet50.py:rule=kp --workdir=runs/in_r50/kp
    python train.py --config=configs/imagenet_resnet50.py:rule=kp,runlocal=True \
        --workdir=/tmp/in_r50   # 4 steps of batch 8, float32, on CPU

ImageNet must be prepared by the user first: TFDS cannot download it. Put ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar in ~/tensorflow_datasets/downloads/manual/ (or <data_dir>/downloads/
manual/) and run `tfds build imagenet2012 --file_format=array_record` (with --data_dir to
match `--config.data_dir`); wtfree reads it with `tfds.data_source`, which needs array_record.
`runlocal=True` still reads the prepared dataset; it evaluates on 2 batches only
(`config.eval_steps`).

`rule` is any of wtfree.rules.names(); `output_rule` (default: `rule`) the last layer's. DFA
routes the error to the stem and to every block through its own fixed B: about 5.7G entries for
ResNet-50 at 224x224 with 1000 classes, 23 GB in float32 on every device.

Everything else (runtime, hyperparameters and their sources) as configs/imagenet_resnet18.py.

Expected accuracy: backprop ResNet-50 with this recipe should reach about 76.1% top-1 / 92.9%
top-5 (torchvision's resnet50 weights: 76.13 / 92.86, trained with this schedule at batch 256).
The numbers of Akrout et al. 2019 per rule could not be retrieved when this file was written.
"""

import ml_collections

from configs import imagenet_resnet18


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return imagenet_resnet18.get_config(arg, model="resnet50")
