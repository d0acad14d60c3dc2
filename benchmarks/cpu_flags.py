r"""ResNet-20 on one XLA:CPU device against several simulated ones, and XLA:CPU flags: cores used.

    .venv/bin/python benchmarks/cpu_flags.py                 # about 6 minutes on 2 quiet cores
    .venv/bin/python benchmarks/cpu_flags.py --variants=1,4,xnn --steps=8

Why: benchmarks/devices.py found ResNet-20 (bp, batch 32) faster on 4 simulated CPU devices
than on the one real device (189 against 124 images/s on 2 cores). This script finds out where
one device's time goes, per variant in a fresh process (XLA_FLAGS and the device count are read
when the backend starts):

- ``ms/step``, ``images/s``: the median over ``--repeats`` runs of ``--steps`` train steps of
  resnet_rules.py's setup (configs/cifar10_resnet20.py, mock CIFAR-shaped batch, one
  device-resident batch, global batch ``--batch_size`` split over the devices).
- ``CPU ms/step``: user + system CPU time of the process per step, and ``cores used``, CPU
  time over wall time: on an idle 2-core machine, a program that keeps both cores busy shows
  about 2, one that runs mostly on one thread about 1. Under load both fall (the machine is
  shared), so compare variants of one run only; the load average is printed.
- ``busiest thread``: the share of the process's CPU time spent by its busiest thread during
  the ResNet steps: with 2 cores, 0.5 means the work was split evenly over two threads, 1.0
  that one thread did it all (and the step's wall time is at least that thread's time). Under
  load it moves too: XLA's thread pool steals work, so a thread that the OS keeps waiting
  gets less of it.

Under load, a process with more runnable threads gets a larger share of the cores (the OS
schedules threads, not processes): 4 simulated devices run 4 programs on 4 threads at once and
come out faster than 1 device for that reason alone. Compare device counts on a quiet machine.
- ``MLP bp ms/step``: the seed MLP's bp step (configs/mnist_mlp.py, batch 128, ``--mlp_steps``
  steps, median of ``--repeats``) in the same process: a flag that helps convolutions must
  not slow the small matmuls down.

Variants (``--variants``, comma-separated): ``N`` = N simulated devices, no flags; the named ones
are one device with XLA flags (``VARIANTS``). A variant whose flag this jaxlib does not know
fails in its own process and is reported as such.
"""

import argparse
import json
import os
import subprocess
import sys

import _timing

VARIANTS = {
    "no_eigen_threads": "--xla_cpu_multi_thread_eigen=false",
    "xnn": "--xla_cpu_use_xnnpack=true",
    "xnn_greedy": "--xla_cpu_use_xnnpack=true "
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn": "--xla_cpu_use_onednn=true",
    "concurrent_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "no_thunks": "--xla_cpu_use_thunk_runtime=false",
}

_CHILD = r"""
import json, os, resource, sys, time
import jax
jax.config.update("jax_num_cpu_devices", {devices})
sys.path[:0] = [{bench!r}, os.path.dirname({bench!r})]  # this checkout's wtfree first
import _timing, resnet_rules
from wtfree import sharding

config = resnet_rules.make_config("bp", {batch}, {devices})
trainer, state = resnet_rules.make_trainer(config)
batch = sharding.put_batch(resnet_rules.synthetic_batch({batch}), trainer.mesh)
stepper = _timing.Stepper(resnet_rules.make_step(trainer, batch), state)
stepper({warmup})
def thread_cpu():
    # Per thread of this process: user + system CPU seconds (Linux /proc; empty elsewhere).
    out = {{}}
    root = "/proc/self/task"
    for tid in os.listdir(root) if os.path.isdir(root) else []:
        try:
            stat = open(os.path.join(root, tid, "stat")).read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out

walls, cpus = [], []
threads_before = thread_cpu()
for _ in range({repeats}):
    before = resource.getrusage(resource.RUSAGE_SELF)
    walls.append(stepper({steps}))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
threads_after = thread_cpu()
shares = sorted(
    (t - threads_before.get(tid, 0.0) for tid, t in threads_after.items()), reverse=True
)
busiest = shares[0] / sum(shares) if shares and sum(shares) > 0 else None

# The seed MLP (bp, batch 128) too: a flag that helps convolutions must not slow small matmuls.
from wtfree import trainer
import mlp_rules
mlp = trainer.Trainer(_timing.load_config("mnist_mlp", "rule=bp"))
mlp_batch = sharding.put_batch(mlp_rules.synthetic_batch(128), mlp.mesh)
mlp_stepper = _timing.Stepper(mlp_rules._calling(mlp.train_step, mlp_batch), mlp.fresh_state())
mlp_stepper(20)
mlp_walls = [mlp_stepper({mlp_steps}) for _ in range({repeats})]
result = {{"walls": walls, "cpus": cpus, "mlp_walls": mlp_walls, "busiest": busiest}}
print("RESULT " + json.dumps(result))
"""


def run_variant(name: str, args) -> dict | str:
    """Runs one variant in a fresh process; its timings, or the reason it failed."""
    devices, flags = (int(name), "") if name.isdigit() else (1, VARIANTS[name])
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if flags:
        env["XLA_FLAGS"] = flags
    code = _CHILD.format(
        devices=devices,
        bench=os.path.dirname(os.path.abspath(__file__)),
        batch=args.batch_size,
        warmup=args.warmup,
        repeats=args.repeats,
        steps=args.steps,
        mlp_steps=args.mlp_steps,
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {"devices": devices, "flags": flags, **json.loads(line[len("RESULT ") :])}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return f"failed (exit {proc.returncode}): {tail[:160]}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="1,2,4," + ",".join(VARIANTS))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mlp_steps", type=int, default=200, help="seed MLP steps per run")
    args = parser.parse_args()
    print(f"before: {_timing.load_average()}")
    rows = []
    for name in args.variants.split(","):
        result = run_variant(name, args)
        if isinstance(result, str):
            rows.append([name, "", result, "", "", "", "", "", ""])
            continue
        wall = _timing.median(result["walls"]) / args.steps
        cpu = _timing.median(result["cpus"]) / args.steps
        rows.append(
            [
                name,
                str(result["devices"]),
                result["flags"] or "(none)",
                f"{wall * 1e3:.0f}",
                f"{args.batch_size / wall:.0f}",
                f"{cpu * 1e3:.0f}",
                f"{cpu / wall:.2f}",
                "" if result["busiest"] is None else f"{result['busiest']:.2f}",
                f"{_timing.median(result['mlp_walls']) / args.mlp_steps * 1e3:.2f}",
            ]
        )
        print(f"  {name}: {rows[-1][3]} ms/step, cores used {rows[-1][6]}", flush=True)
    print()
    print(
        f"ResNet-20 bp, global batch {args.batch_size}: median of {args.repeats} runs x "
        f"{args.steps} steps per variant, each in its own process, on {os.cpu_count()} cores"
    )
    header = ["variant", "devices", "XLA_FLAGS", "ms/step", "images/s", "CPU ms/step", "cores"]
    header += ["busiest thread", "MLP bp ms/step"]
    print(_timing.table(header, rows))
    print(f"after: {_timing.load_average()}")


if __name__ == "__main__":
    main()
