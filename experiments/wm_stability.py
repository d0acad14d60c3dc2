r"""Short runs that separate why weight mirrors destabilize training: lag, noise, norm of B.

    .venv/bin/python experiments/wm_stability.py --config=mnist_lenet:rule=wm --lr=0.01 \
        --mode=mirror --steps=300 [--set mirror.decay=0.1 ...]

Trains ``--steps`` steps of a config (``configs/<name>.py:<arg>``; its rule should store B, e.g.
wm) at learning rate ``--lr``, and after every step sets B by ``--mode``:

- ``mirror``: the train loop's own mirror step (noise batch, Hebbian product, decay): wm itself.
- ``ema``: the mirror step's expectation without noise, B <- (1 - lambda) B + lambda W (lambda
  the mirror decay): the same lag as ``mirror``, no noise.
- ``delay:K``: B = W from K steps ago, no noise ("delayed backprop"); ``delay:0`` is backprop.
- ``nolag``: B = W + (B_mirror - B_ema), where B_mirror and B_ema are run side by side from the
  same start: the mirror's noise without its lag.
- ``fixed``: B is never updated after the start.

B starts at W (``ema``, ``delay``, ``nolag``) or after the config's mirror pretraining
(``mirror``, ``fixed``). Prints one JSON line: whether the loss stayed finite, the train loss
at the start and averaged over the last 50 steps, the test accuracy on 2000 test images, and
per layer whose B is used the angle of B to W and ||B||/||W|| (last, and max over the run).
docs/weight_mirrors.md has the measured table.
"""

import argparse
import collections
import functools
import importlib
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # configs import their siblings as `configs.common`

from wtfree import metrics, sharding  # noqa: E402
from wtfree import steps as steps_lib  # noqa: E402
from wtfree import trainer as trainer_lib  # noqa: E402


def load_config(spec: str, lr: float, sets: list[str]):
    name, _, arg = spec.partition(":")
    config = importlib.import_module(f"configs.{name}").get_config(arg or None)
    config.optimizer.learning_rate = lr
    for item in sets:
        key, _, value = item.partition("=")
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        old = node[leaf]
        if isinstance(old, bool):  # bool("False") is True
            node[leaf] = value.lower() in ("1", "true")
        else:
            node[leaf] = (
                type(old)(value) if old is not None and not isinstance(old, tuple) else value
            )
    if "mirror.learning_rate" not in " ".join(sets):
        m = config.mirror
        m.learning_rate = m.decay / (m.batch_size * m.noise_std**2)
    return config


def use_rademacher_mirror_noise() -> None:
    """Makes the layers' mirror noise +-1 with equal odds (unit variance, as the Gaussian's).

    Only ``wtfree.layers`` sees the swap (its global ``jax`` becomes a copy whose
    ``random.normal`` draws signs); there, ``random.normal`` draws only mirror noise and the
    alignment rules' noise input, which wm does not use.
    """
    import types

    from wtfree import layers

    def rademacher(key, shape=(), dtype=jnp.float32):
        return jax.random.rademacher(key, shape, dtype)

    random = types.SimpleNamespace(**{**vars(jax.random), "normal": rademacher})
    layers.jax = types.SimpleNamespace(**{**vars(jax), "random": random})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--mode", default="mirror")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--idx_dir", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--trace", type=int, default=0, help="every this many steps, record loss, angles, norms"
    )
    parser.add_argument(
        "--no_pretrain", action="store_true", help="mirror: B starts at W, no pretraining"
    )
    parser.add_argument(
        "--noise",
        default="normal",
        choices=("normal", "rademacher"),
        help="mirror: the noise's distribution (unit variance either way)",
    )
    parser.add_argument(
        "--mirrors_per_step", type=int, default=1, help="mirror: mirror batches after each step"
    )
    args = parser.parse_args()

    config = load_config(args.config, args.lr, args.set)
    if args.noise == "rademacher":
        use_rademacher_mirror_noise()
    if args.idx_dir:
        config.idx_dir = args.idx_dir
    if args.seed is not None:
        config.seed = args.seed
    config.num_train_steps = args.steps
    config.eval_steps = 2
    config.eval_batch_size = 1000
    trainer = trainer_lib.Trainer(config)
    state = trainer.fresh_state()
    mode, _, k = args.mode.partition(":")
    decay = config.mirror.decay

    def as_w(state):
        """W, keyed like the feedback collection."""
        params = traverse_util.flatten_dict(state["params"])
        # B at <layer>/feedback_kernel, its W at <layer>/kernel.
        return {
            p: params[(*p[:-1], "kernel")] for p in traverse_util.flatten_dict(state["feedback"])
        }

    def set_b(state, b):
        # Copies: the train step donates the state, and B may be W's own buffer.
        b = {p: jnp.array(v, copy=True) for p, v in b.items()}
        return {**state, "feedback": traverse_util.unflatten_dict(b)}

    if mode in ("mirror", "fixed") and not args.no_pretrain:
        if trainer.uses_mirror:
            state = trainer.mirror_pretrain(state)
    else:
        state = set_b(state, as_w(state))
    ema = jax.jit(lambda b, w: {p: (1 - decay) * b[p] + decay * w[p] for p in b})
    history = collections.deque(maxlen=int(k or 0) + 1)
    shadow = None
    if mode == "nolag":
        copy = functools.partial(jax.tree.map, lambda v: jnp.array(v, copy=True))
        shadow = {"mirror": copy(state), "ema": copy(as_w(state))}
    measure = jax.jit(
        lambda s: {
            p: (metrics.angle(b, w), jnp.linalg.norm(b) / jnp.linalg.norm(w), jnp.linalg.norm(w))
            for p, b, w in (
                (p, traverse_util.flatten_dict(s["feedback"])[p], as_w(s)[p]) for p in as_w(s)
            )
        }
    )
    # The first layer's B sends no error anywhere: leave it out of the report.
    first = min(as_w(state), key=lambda p: ("conv_init" not in p[0], "conv_0" != p[0], p))
    batches = trainer.train_batches(0)
    losses, worst, trace = [], {}, []
    start = time.time()
    finite = True
    for step in range(args.steps):
        batch = sharding.put_batch(next(batches), trainer.mesh)
        if mode == "mirror" and (step + 1) % config.mirror.every:
            state, m = trainer.train_step(state, batch)  # no mirror batch this step
        elif mode == "mirror":
            state, m = trainer.train_mirror_step(state, batch)
            for i in range(1, args.mirrors_per_step):
                key = jax.random.fold_in(steps_lib._mirror_rng(state, 5, step), i)
                state = trainer.mirror_step(state, key)
        else:
            state, m = trainer.train_step(state, batch)
            w = as_w(state)
            if mode == "ema":
                state = set_b(state, ema(traverse_util.flatten_dict(state["feedback"]), w))
            elif mode == "delay":
                history.append({p: jnp.array(v, copy=True) for p, v in w.items()})
                state = set_b(state, history[0])
            elif mode == "nolag":
                # mirror_step donates its input: hand it a copy of W.
                params = jax.tree.map(lambda v: jnp.array(v, copy=True), state["params"])
                mirrored = trainer.mirror_step(
                    {**shadow["mirror"], "params": params},
                    steps_lib._mirror_rng(state, 1, step),
                )
                shadow = {"mirror": mirrored, "ema": ema(shadow["ema"], w)}
                bm = traverse_util.flatten_dict(mirrored["feedback"])
                state = set_b(state, {p: w[p] + bm[p] - shadow["ema"][p] for p in w})
            elif mode != "fixed":
                raise SystemExit(f"unknown mode {args.mode!r}")
        loss = float(m["train/loss"])
        losses.append(loss)
        if not math.isfinite(loss) or loss > 1e4:
            finite = False
            break
        if step % 25 == 24:
            for p, (_, r, _) in jax.device_get(measure(state)).items():
                if p != first:
                    name = "/".join(p[:-1])
                    worst[name] = max(worst.get(name, 0.0), float(r))
        if args.trace and (step % args.trace == args.trace - 1 or step == 0):
            now = jax.device_get(measure(state))
            named = {"/".join(p[:-1]): v for p, v in now.items() if p != first}
            trace.append(
                {
                    "step": step + 1,
                    "loss": round(float(np.mean(losses[-args.trace :])), 4),
                    "angle": {k: round(float(a), 1) for k, (a, _, _) in named.items()},
                    "ratio": {k: round(float(r), 3) for k, (_, r, _) in named.items()},
                    "w_norm": {k: round(float(n), 3) for k, (_, _, n) in named.items()},
                }
            )
    out = {
        "config": args.config,
        "lr": args.lr,
        "mode": args.mode,
        "set": args.set,
        "mirror": {
            k: config.mirror.get(k)
            for k in ("decay", "batch_size", "learning_rate", "every", "per_layer_batch")
        },
        "noise": args.noise,
        "steps": len(losses),
        "finite": finite,
        "loss_first": round(float(np.mean(losses[:10])), 4),
        "loss_last50": round(float(np.mean(losses[-50:])), 4),
        "seconds": round(time.time() - start, 1),
    }
    if finite:
        out["test_accuracy"] = round(trainer.evaluate(state)["test/accuracy"], 4)
    end = jax.device_get(measure(state))
    out["angle"] = {
        "/".join(p[:-1]): round(float(a), 1) for p, (a, _, _) in end.items() if p != first
    }
    out["norm_ratio"] = {
        "/".join(p[:-1]): round(float(r), 2) for p, (_, r, _) in end.items() if p != first
    }
    out["max_norm_ratio"] = {k: round(v, 2) for k, v in worst.items()}
    if trace:
        out["trace"] = trace
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
