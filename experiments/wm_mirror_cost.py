r"""What a mirror batch adds to LeNet's train step: the two timed side by side in one process.

    .venv/bin/python experiments/wm_mirror_cost.py

configs/mnist_lenet.py under wm on MNIST (batches of 128): a train step alone, a train step and
a mirror batch with the config's mirror (decay 0.5, 640 noise vectors), and with the old one
(decay 0.01, 128). Each timing is 20 steps after a warm step; prints the median of 6 rounds,
in ms per step and relative to the train step alone, with the load average. docs/weight_mirrors.md
has the measured numbers.
"""

import os
import sys
import time

import jax
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # configs import their siblings as `configs.common`

from configs import mnist_lenet  # noqa: E402
from wtfree import sharding  # noqa: E402
from wtfree import trainer as trainer_lib  # noqa: E402

STEPS, ROUNDS = 20, 6


def make_trainer(mirror: dict | None = None) -> trainer_lib.Trainer:
    config = mnist_lenet.get_config("rule=wm")
    config.num_devices = 1
    m = config.mirror
    for key, value in (mirror or {}).items():
        m[key] = value
    m.learning_rate = m.decay / (m.batch_size * m.noise_std**2)
    return trainer_lib.Trainer(config)


def main() -> None:
    new, old = make_trainer(), make_trainer(dict(decay=0.01, batch_size=128))
    source = new.train_batches(0)
    batches = [sharding.put_batch(next(source), new.mesh) for _ in range(STEPS)]
    steps = {
        "train step alone": (new, new.train_step),
        "train step + the config's mirror batch": (new, new.train_mirror_step),
        "train step + the old mirror batch": (old, old.train_mirror_step),
    }
    states = {name: trainer.fresh_state() for name, (trainer, _) in steps.items()}
    times = {name: [] for name in steps}
    for _ in range(ROUNDS):
        for name, (_, step) in steps.items():
            state, measurements = step(states[name], batches[0])
            jax.block_until_ready(measurements)
            start = time.perf_counter()
            for batch in batches:
                state, measurements = step(state, batch)
            jax.block_until_ready(state)
            times[name].append((time.perf_counter() - start) / STEPS)
            states[name] = state
    print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    base = np.median(times["train step alone"])
    for name, values in times.items():
        t = np.median(values)
        print(f"{name}: {1000 * t:.1f} ms/step, {t / base:.2f}x, {468 * t:.1f} s per epoch")


if __name__ == "__main__":
    main()
