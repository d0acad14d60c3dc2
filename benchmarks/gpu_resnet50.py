r"""ResNet-50 at 224x224 in bfloat16 on one accelerator, per rule: images/s, share of peak FLOP/s,
peak memory, and the largest batch that fits. Synthetic data made on the device.

    .venv/bin/python benchmarks/gpu_resnet50.py              # on a GPU: about 10-15 minutes
    .venv/bin/python benchmarks/gpu_resnet50.py --rules=bp,kp,wm --search_rules=bp,wm
    # A smoke run on CPU (seconds per step; the numbers mean nothing there):
    .venv/bin/python benchmarks/gpu_resnet50.py --model=resnet8 --image_size=16 --batch_size=8 \
        --steps=10 --warmup=1 --repeats=1 --dtype=float32 --max_batch=16

What it measures, per rule in ``--rules``, each in a fresh process (so that the device's peak
memory is that rule's alone, and an out-of-memory stops only that probe):

- the train step of configs/imagenet_resnet50.py for the rule (SGD with momentum, weight decay;
  the model at ``--dtype``), jitted as the train loop jits it, on one device, at
  ``--batch_size``, on one batch of random images (N(0, 1), float32 as the input pipeline
  gives them) and labels made on the device, so no host transfer is timed. ``wm`` runs a mirror
  batch (the config's, ``mirror.batch_size`` noise inputs) fused with every ``--mirror_every``-th
  step, as the train loop does; ``--steps`` should be a multiple of it.
- ``images/s``: batch size over the median step time of ``--repeats`` runs of ``--steps``
  steps, after ``--warmup`` steps; ``x bp``: bp's step time over the rule's.
- ``TFLOP/s`` and ``% peak``: XLA's FLOP count of the compiled step(s) (``cost_analysis``;
  for wm the mirror step's share amortized) over the step time, against the device's peak
  dense bfloat16 (or float32) FLOP/s: ``--peak_tflops`` or the table ``PEAK_TFLOPS`` by device
  name (vendor data sheets, dense, no sparsity).
- ``peak GiB``: ``device.memory_stats()["peak_bytes_in_use"]`` after the run (None on CPU,
  whose runtime keeps no such count); ``XLA GiB``: the compiled step's own estimate
  (``memory_analysis``: arguments + outputs + temporaries - aliased), on any backend.
- the largest batch that fits, for each rule in ``--search_rules``: doubling from
  ``--batch_size`` until a probe runs out of memory or reaches ``--max_batch``, then bisection
  down to a multiple of ``--search_step``. Each probe compiles the step anew (tens of seconds
  on a GPU).

Targets (issue 11): kp at least 0.95x bp's images/s, wm (mirror every 10 steps) at least 0.9x.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import _timing

# Peak dense tensor-core TFLOP/s by dtype, from the vendors' data sheets (no sparsity), matched
# against jax's device_kind by substring, first match wins.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756, "float32": 51}),
    ("H100 NVL", {"bfloat16": 835, "float32": 60}),
    ("H100", {"bfloat16": 989, "float32": 67}),  # SXM
    ("H200", {"bfloat16": 989, "float32": 67}),
    ("B200", {"bfloat16": 2250, "float32": 80}),
    ("A100", {"bfloat16": 312, "float32": 19.5}),
    ("L4", {"bfloat16": 121, "float32": 30}),
    ("A10G", {"bfloat16": 70, "float32": 31}),
    ("V100", {"bfloat16": None, "float32": 15.7}),
    ("T4", {"bfloat16": None, "float32": 8.1}),
)
ALL_RULES = ("bp", "fa", "usf", "kp", "wm")
TARGETS = {"kp": 0.95, "wm": 0.9}  # images/s over bp's, at least
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _memory_bytes(compiled) -> int | None:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def measure(args) -> dict:
    """In this process: build, compile and time one rule at one batch size (the child's work)."""
    import jax
    import jax.numpy as jnp

    from wtfree import kinds, rules, sharding, trainer
    from wtfree import steps as steps_lib

    config = _timing.load_config("imagenet_resnet50", f"rule={args.rule}")
    config.model = args.model
    config.dtype = args.dtype
    config.batch_size = args.batch_size
    config.mirror.every = args.mirror_every
    num_classes = 1000
    image_shape = (args.image_size, args.image_size, 3)
    mesh = sharding.make_mesh(1)
    model = trainer.make_model(config, num_classes)
    rng = jax.random.PRNGKey(0)
    _, flags = jax.eval_shape(lambda: steps_lib.init_variables(model, rng, (1, *image_shape)))
    tx, _ = trainer.make_optimizer(config, 1000, 90_000, flags)
    init = functools.partial(steps_lib.init_state, model, tx, input_shape=(1, *image_shape))
    state = jax.jit(init)(rng)

    train_step = steps_lib.make_train_step(model, tx, config.loss)
    step = jax.jit(train_step, donate_argnums=0)
    uses_mirror = trainer.uses_feedback(config, rules.MIRROR)
    mirrored = None
    if uses_mirror:
        # The mirror step train.py builds from config.mirror (the mirror kind's state step).
        mirror_step = kinds.get(rules.MIRROR).make_state_step(model, mesh, config, image_shape).step

        def train_mirror_step(state, batch):
            mirror_rng = steps_lib._mirror_rng(state, 1, state["step"])
            state, measurements = train_step(state, batch)
            return mirror_step(state, mirror_rng), measurements

        mirrored = jax.jit(train_mirror_step, donate_argnums=0)

    key_images, key_labels = jax.random.split(jax.random.PRNGKey(1))
    batch = {
        "image": jax.random.normal(key_images, (args.batch_size, *image_shape), jnp.float32),
        "label": jax.random.randint(key_labels, (args.batch_size,), 0, num_classes),
    }
    # Compiled once, ahead of time, and called as compiled (a jit call would compile again).
    compiled = step.lower(state, batch).compile()
    flops = _flops(compiled)
    memory = _memory_bytes(compiled)
    compiled_mirrored = None
    if mirrored is not None:
        compiled_mirrored = mirrored.lower(state, batch).compile()
        every = args.mirror_every
        flops = ((every - 1) * flops + _flops(compiled_mirrored)) / every
        memory = max(memory or 0, _memory_bytes(compiled_mirrored) or 0) or None

    counter = {"i": 0}

    def one_step(s):
        counter["i"] += 1
        if compiled_mirrored is not None and counter["i"] % args.mirror_every == 0:
            return compiled_mirrored(s, batch)
        return compiled(s, batch)

    device = jax.devices()[0]
    # Multi-device CPU rendezvous needs waits (see _timing.Stepper); one accelerator does not.
    stepper = _timing.Stepper(one_step, state, block_every=8 if device.platform == "cpu" else 10**9)
    start = time.perf_counter()
    stepper(max(args.warmup, 1))
    warmup_s = time.perf_counter() - start
    times = [stepper(args.steps) for _ in range(args.repeats)]
    stats = device.memory_stats() or {}
    return {
        "rule": args.rule,
        "batch_size": args.batch_size,
        "step_s": _timing.median(times) / args.steps,
        "spread": _timing.spread(times),
        "flops": flops,
        "xla_bytes": memory,
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "warmup_s": warmup_s,
        "mirror_batch": config.mirror.batch_size if uses_mirror else None,
    }


def probe(args, rule: str, batch_size: int) -> dict | str:
    """``measure`` in a fresh process; its result, or "oom" / the error's last line."""
    child = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"--rule={rule}",
        f"--batch_size={batch_size}",
    ]
    for name in ("model", "image_size", "dtype", "steps", "warmup", "repeats", "mirror_every"):
        child.append(f"--{name}={getattr(args, name)}")
    proc = subprocess.run(child, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return classify_failure(proc.returncode, proc.stderr)


def classify_failure(returncode: int, stderr: str) -> str:
    """ "oom" when the device ran out of memory, else "exit N: <last line of stderr>"."""
    if any(marker in stderr for marker in OUT_OF_MEMORY):
        return "oom"
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return f"exit {returncode}: {tail[:200]}"


def largest_batch(args, rule: str) -> tuple[int | None, str]:
    """The largest batch (a multiple of ``--search_step``, at most ``--max_batch``) whose probe
    runs, and how the search ended."""
    good, bad, size = None, None, args.batch_size
    while size <= args.max_batch:
        result = probe(args, rule, size)
        print(f"  {rule} batch {size}: {'fits' if isinstance(result, dict) else result}")
        if isinstance(result, dict):
            good, size = size, size * 2
            continue
        if result != "oom":
            return good, f"stopped: {result}"
        bad = size
        break
    if bad is None:
        return good, f"all fit up to --max_batch={args.max_batch}"
    low = good or 0
    while bad - low > args.search_step:
        mid = (low + bad) // 2 // args.search_step * args.search_step
        if mid <= low:
            break
        result = probe(args, rule, mid)
        print(f"  {rule} batch {mid}: {'fits' if isinstance(result, dict) else result}")
        if isinstance(result, dict):
            low = mid
        elif result == "oom":
            bad = mid
        else:
            return low or None, f"stopped: {result}"
    return low or None, f"batch {bad} ran out of memory"


def _gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def report(args, results: dict) -> None:
    ok = {r: v for r, v in results.items() if isinstance(v, dict)}
    first = next(iter(ok.values()), None)
    if first is None:
        print("no rule ran")
        return
    peak = args.peak_tflops or peak_tflops(first["device_kind"], args.dtype)
    bp = ok.get("bp")
    rows = []
    for rule, value in results.items():
        if not isinstance(value, dict):
            rows.append([rule, value, "", "", "", "", "", "", ""])
            continue
        rate = args.batch_size / value["step_s"]
        tflops = value["flops"] / value["step_s"] / 1e12
        ratio = bp["step_s"] / value["step_s"] if bp else None
        target = TARGETS.get(rule)
        verdict = ""
        if target is not None and ratio is not None:
            verdict = f">= {target} {_timing.verdict(ratio >= target)}"
        rows.append(
            [
                rule,
                f"{rate:.1f}",
                f"{value['spread']:.0%}",
                "" if ratio is None else f"{ratio:.3f}",
                f"{tflops:.2f}",
                "n/a" if not peak else f"{100 * tflops / peak:.1f}",
                _gib(value["peak_bytes"]),
                _gib(value["xla_bytes"]),
                verdict,
            ]
        )
    print()
    print(
        f"{args.model} at {args.image_size}x{args.image_size}, {args.dtype}, batch "
        f"{args.batch_size} on one {first['device_kind']} ({first['platform']}): median of "
        f"{args.repeats} runs x {args.steps} steps; wm: a mirror batch of "
        f"{ok.get('wm', {}).get('mirror_batch')} every {args.mirror_every} steps; peak "
        f"{peak or 'unknown (--peak_tflops)'} TFLOP/s"
    )
    header = [
        "rule",
        "images/s",
        "spread",
        "x bp",
        "TFLOP/s",
        "% peak",
        "peak GiB",
        "XLA GiB",
        "target",
    ]
    print(_timing.table(header, rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", default=",".join(ALL_RULES))
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mirror_every", type=int, default=10)
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--search_rules", default="bp", help="rules to find the largest batch of")
    parser.add_argument("--max_batch", type=int, default=1024)
    parser.add_argument("--search_step", type=int, default=16)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rule", default="bp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, _timing.REPO_ROOT)  # this checkout's wtfree first
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return

    print(f"before: {_timing.load_average()}")
    results = {}
    for rule in args.rules.split(","):
        results[rule] = probe(args, rule, args.batch_size)
        value = results[rule]
        if isinstance(value, dict):
            print(f"  {rule}: {args.batch_size / value['step_s']:.1f} images/s")
        else:
            print(f"  {rule}: {value}")
    report(args, results)
    for rule in filter(None, args.search_rules.split(",")):
        size, how = largest_batch(args, rule)
        print(f"largest batch that fits, {rule}: {size} ({how})")
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
