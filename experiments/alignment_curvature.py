r"""Per layer, how fast and how stably B can move under each alignment loss, summed or averaged
over a conv's output positions: the Hessian's extreme eigenvalues in B, and where B's minimum lies.

    .venv/bin/python experiments/alignment_curvature.py --config=fashion_mnist_resnet \
        --idx_dir=/usr/share/datasets/fashion-mnist [--bp_steps=200] [--scale=10]

Builds the config's model (``configs/<name>.py``) for each rule sa, aa, ia, wm_reg, with W
(and batch statistics) at init or after ``--bp_steps`` steps of backprop, and on one training
batch (train mode) computes per layer whose B learns by the loss:

- ``P``: the layer's output positions (1 for dense).
- ``h_max`` / ``h_min``: the largest and smallest eigenvalue of the alignment loss's Hessian in
  that layer's B (power iteration on Hessian-vector products; the loss is quadratic in B), with
  ``positions=sum`` and ``positions=mean``. Heavy ball with step :math:`s\eta` and momentum
  :math:`\mu` converges along a direction of curvature h iff :math:`s\eta h < 2(1+\mu)`, and
  relaxes it by :math:`s\eta h/(1-\mu)` a step while that is below :math:`1-\sqrt\mu`.
  ``eta_h_max`` is :math:`s\eta_\text{max} h_\text{max}` for the config's peak rate and
  ``--scale`` s; above :math:`2(1+\mu)` that direction diverges.
- ``min_norm_ratio``: :math:`\|B^*\|/\|W\|` at the loss's minimum (for wm_reg, whose Hessian is
  :math:`2\alpha I`: :math:`B^* = -\nabla_B R(0)/(2\alpha)`; the other rules: not computed).

Prints one JSON line per rule and layer. README ("Alignment rules", ResNet-8) has the numbers.
"""

import argparse
import importlib
import json
import os
import sys

import jax
import jax.numpy as jnp
from flax import traverse_util

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # configs import their siblings as `configs.common`

from wtfree import layers, sharding  # noqa: E402
from wtfree import trainer as trainer_lib  # noqa: E402
from wtfree.rules import alignment  # noqa: E402

RULES = ("sa", "aa", "ia", "wm_reg")


def _power(hvp, shape, key, iters: int, shift: float = 0.0) -> float:
    """The largest eigenvalue of ``hvp - shift`` (plus ``shift``), by power iteration."""
    v = jax.random.normal(key, shape)
    v = v / jnp.linalg.norm(v)
    value = 0.0
    for _ in range(iters):
        u = hvp(v) - shift * v
        value = float(jnp.vdot(v, u))
        norm = float(jnp.linalg.norm(u))
        if norm <= 1e-6 * abs(shift):  # every eigenvalue is the shift (a multiple of I)
            return shift
        v = u / norm
    return value + shift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fashion_mnist_resnet")
    parser.add_argument("--idx_dir", default=None)
    parser.add_argument("--bp_steps", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="alignment.learning_rate_scale")
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()

    module = importlib.import_module(f"configs.{args.config}")
    config = module.get_config("rule=bp")
    if args.idx_dir:
        config.idx_dir = args.idx_dir
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    batches = trainer.train_batches(0)
    for _ in range(args.bp_steps):
        state, _ = trainer.train_step(state, sharding.put_batch(next(batches), trainer.mesh))
    x = next(batches)["image"]
    eta, mu = config.optimizer.learning_rate, config.optimizer.momentum

    for rule in RULES:
        rule_config = config.copy_and_resolve_references()
        rule_config.rule = rule
        model = trainer_lib.make_model(rule_config, trainer.ds.num_classes)
        variables = model.init(jax.random.key(7), x[:1], train=False)
        feedback = variables["feedback"]
        base = {"params": state["params"], "batch_stats": state["batch_stats"]}
        coefficients = {rule: dict(alignment.ALIGNMENTS[rule].defaults)}

        def sown(feedback, base, x, model=model):
            _, new = model.apply(
                {**base, "feedback": feedback},
                x,
                train=True,
                mutable=["batch_stats", layers.ALIGNMENT_LOSS],
            )
            return new[layers.ALIGNMENT_LOSS]

        flat = traverse_util.flatten_dict(sown(feedback, base, x))
        flat_b = traverse_util.flatten_dict(feedback)
        params = traverse_util.flatten_dict(state["params"])
        for path in sorted({p[:-2] for p in flat}):
            b_path = (*path, layers.FEEDBACK_KERNEL)
            positions = float(flat[(*path, rule, alignment.POSITIONS)])
            row = {"rule": rule, "layer": "/".join(path), "P": positions}
            for mode in alignment.POSITION_MODES:

                def loss(b, base, x, mode=mode, b_path=b_path, flat_b=flat_b, c=coefficients):
                    fb = traverse_util.unflatten_dict({**flat_b, b_path: b})
                    return alignment.total_loss(sown(fb, base, x), c, 1.0, mode)

                # Batch and W as arguments, not constants: XLA would fold the convs at compile.
                grad = jax.jit(jax.grad(loss))
                b0 = jnp.zeros_like(flat_b[b_path])
                g0 = grad(b0, base, x)

                def hvp(v, grad=grad, g0=g0, base=base):
                    return grad(v, base, x) - g0  # the loss is quadratic in B

                shape = b0.shape
                h_max = _power(hvp, shape, jax.random.key(1), args.iters)
                h_min = _power(hvp, shape, jax.random.key(2), args.iters, shift=h_max)
                row[f"h_max_{mode}"] = h_max
                row[f"h_min_{mode}"] = h_min
                row[f"eta_h_max_{mode}"] = args.scale * eta * h_max
                if rule == "wm_reg":
                    b_star = -g0 / (2 * coefficients[rule]["alpha"])
                    w = params[(*path, "kernel")]
                    norm_ratio = jnp.linalg.norm(b_star) / jnp.linalg.norm(w)
                    row[f"min_norm_ratio_{mode}"] = float(norm_ratio)
            row["stability_limit"] = 2 * (1 + mu)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
