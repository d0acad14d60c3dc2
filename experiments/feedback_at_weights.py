r"""A step-0 checkpoint whose every trained B starts equal to its W: a diagnostic, not a rule.

    .venv/bin/python experiments/feedback_at_weights.py \
        --config=configs/fashion_mnist_resnet.py:rule=sa \
        --config.idx_dir=/usr/share/datasets/fashion-mnist --out=runs/b_at_w/sa_init
    .venv/bin/python train.py --config=configs/fashion_mnist_resnet.py:rule=sa \
        --config.idx_dir=/usr/share/datasets/fashion-mnist \
        --config.init_from=runs/b_at_w/sa_init --workdir=runs/b_at_w/sa

The run's own fresh state (same seed, so the same W, batch statistics and optimizer state),
with B = W in every layer that has a B. A rule whose B learns toward W (sa, kp, wm) then starts
where it would end; a gap to bp that remains is made during training (B's lag or noise), and a
gap that closes was made while B was still aligning. B = W is weight transport, once, at the
start: use it to find where a rule loses accuracy, never as a result of the rule.
"""

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from wtfree import checkpoints, steps
from wtfree import trainer as trainer_lib

# Configs import their siblings as `configs.common`: the repository root must be importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config.", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Where the checkpoint goes (a workdir).", required=True)


def main(argv) -> None:
    del argv
    trainer = trainer_lib.Trainer(_CONFIG.value)
    state = steps.feedback_at_weights(trainer.fresh_state())
    with checkpoints.make_manager(_OUT.value) as manager:
        checkpoints.save(manager, state, force=True)
        manager.wait_until_finished()
    n = len(jax.tree.leaves(state["feedback"]))
    print(f"{_OUT.value}: step 0, B = W in {n} layers", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
