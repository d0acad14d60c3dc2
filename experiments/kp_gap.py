r"""Kolen-Pollack's gap ||B - W|| per layer at the end of a run, against the closed form.

    .venv/bin/python experiments/kp_gap.py runs/fmr/kp_s0 runs/fmr_kp/kp_wd0.005 ...

For each KP workdir: rebuilds the run's initial state from its config.json and seed, restores
its newest checkpoint, and prints per layer ||B_T - W_T|| / ||B_0 - W_0|| beside
``optim.matched_decay_gap`` (the factor the matched decay alone predicts, from the run's
schedule, momentum and decay) and the final angle between B and W.
"""

import json
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from wtfree import checkpoints, optim, paths
from wtfree import trainer as trainer_lib


def _kernels(tree) -> dict[str, np.ndarray]:
    # W at <layer>/kernel; B at <layer>/feedback_kernel (at <layer>/kernel in older workdirs).
    flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
    out = {}
    for k, v in flat.items():
        for suffix in ("/feedback_kernel", "/kernel"):
            if k.endswith(suffix):
                out[k.removesuffix(suffix)] = v
                break
    return out


def gaps(workdir: str) -> tuple[float, dict[str, tuple[float, float]]]:
    """Returns (predicted factor, {layer: (measured factor, angle in degrees)})."""
    workdir = paths.as_path(workdir)
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    trainer = trainer_lib.Trainer(config)
    start = trainer.fresh_state()
    with checkpoints.make_manager(workdir) as manager:
        # As saved, without a target tree: runs of older versions carried other leaves.
        end = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
    steps = int(end["step"])
    opt = config.optimizer
    predicted = optim.matched_decay_gap(
        trainer.schedule, steps, opt.weight_decay, momentum=opt.momentum, nesterov=opt.nesterov
    )
    w0, b0 = _kernels(start["params"]), _kernels(start["feedback"])
    w1, b1 = _kernels(end["params"]), _kernels(end["feedback"])
    measured = {}
    for name in sorted(b1):
        if name not in w1 or np.array_equal(b0[name], b1[name]):
            continue  # not trained by KP (e.g. the input layer's B, which sends no error)
        factor = np.linalg.norm(b1[name] - w1[name]) / np.linalg.norm(b0[name] - w0[name])
        cos = np.vdot(b1[name], w1[name]) / np.linalg.norm(b1[name]) / np.linalg.norm(w1[name])
        measured[name] = (float(factor), float(np.degrees(np.arccos(np.clip(cos, -1, 1)))))
    return predicted, measured


def main(workdirs: list[str]) -> None:
    for workdir in workdirs:
        predicted, measured = gaps(workdir)
        print(f"{workdir}: predicted ||B - W|| factor {predicted:.4g}")
        for name, (factor, angle) in measured.items():
            print(f"  {name:28s} measured {factor:.4g}  angle(B, W) {angle:.1f} deg")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: experiments/kp_gap.py KP_WORKDIR [KP_WORKDIR ...]")
    main(sys.argv[1:])
