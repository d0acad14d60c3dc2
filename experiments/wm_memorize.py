r"""LeNet memorizing mock MNIST under a rule and a mirror setting: the loss of every step.

    .venv/bin/python experiments/wm_memorize.py RULE,LR,DECAY,BATCH,STEPS,PRETRAIN,ORDER ...

Each argument is one run of configs/mnist_lenet.py on 64 mock MNIST images with random labels
(tfds.testing.mock_data, the rbg PRNG, as the tests use), batches of 32, weight decay 5e-4:
RULE (bp or wm) at learning rate LR, a mirror of decay DECAY with BATCH noise vectors
(learning rate DECAY / BATCH, so B settles at W) and PRETRAIN batches before training, for
STEPS steps on one fixed batch (ORDER ``f``) or on the mock images in turn (``c``). Prints the
largest and the first loss, the mean of the last 5, and every 5th loss. docs/weight_mirrors.md
(item 8) has the measured runs.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # configs import their siblings as `configs.common`

from configs import mnist_lenet  # noqa: E402
from wtfree import sharding  # noqa: E402
from wtfree import trainer as trainer_lib  # noqa: E402


def losses(rule, lr, decay, batch, steps, pretrain, in_turn) -> list[float]:
    config = mnist_lenet.get_config(f"rule={rule}")
    config.batch_size = 32
    config.num_devices = 1
    config.optimizer.learning_rate = lr
    m = config.mirror
    m.decay, m.batch_size, m.pretrain_batches = decay, batch, pretrain
    m.learning_rate = decay / batch
    trainer = trainer_lib.Trainer(config)
    batches = trainer.train_batches(0)
    fixed = sharding.put_batch(next(iter(batches)), trainer.mesh)
    state = trainer.fresh_state()
    step = trainer.train_step
    if trainer.uses_mirror:
        state = trainer.mirror_pretrain(state)
        step = trainer.train_mirror_step
    out = []
    for _ in range(steps):
        batch = sharding.put_batch(next(batches), trainer.mesh) if in_turn else fixed
        state, measurements = step(state, batch)
        out.append(float(measurements["train/loss"]))
    return out


def main() -> None:
    jax.config.update("jax_default_prng_impl", "rbg")
    with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        for spec in sys.argv[1:]:
            rule, lr, decay, batch, steps, pretrain, order = spec.split(",")
            run = losses(
                rule, float(lr), float(decay), int(batch), int(steps), int(pretrain), order == "c"
            )
            print(
                spec,
                "max",
                round(max(run), 2),
                "first",
                round(run[0], 3),
                "last5",
                round(float(np.mean(run[-5:])), 4),
                [round(x, 2) for x in run[::5]],
                flush=True,
            )


if __name__ == "__main__":
    main()
