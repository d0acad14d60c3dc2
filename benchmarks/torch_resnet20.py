r"""ResNet-20's train step in PyTorch (CPU) and in wtfree, side by side in one run, and the ratio.

    .venv/bin/python benchmarks/torch_resnet20.py --torch_python=/work/torchvenv/bin/python
    .venv/bin/python benchmarks/torch_resnet20.py --make_venv=/tmp/torchvenv   # pip install torch
    .venv/bin/python benchmarks/torch_resnet20.py --torch_python=... --batch_sizes=32,128 \
        --rules=bp,fa,kp,wm --steps=10 --repeats=5

The peer is PyTorch's own autograd on the same work: CIFAR ResNet-20 (He et al. 2016, option A
shortcuts: strided identity, zero-padded channels; convs without bias, batch norm with eps 1e-5,
ReLU, global average pooling, a 64 x 10 linear layer), a batch of 32x32x3 images held in memory,
softmax cross-entropy, SGD with momentum 0.9, weight decay 1e-4, learning rate 0.1, train mode.
PyTorch runs in a separate Python (``--torch_python``, or the venv ``--make_venv`` builds with
``pip install torch``): torch is never a dependency of wtfree and no test imports it. It is a
worker process kept alive for the whole run and asked over a pipe to time ``--steps`` steps, so
its runs interleave with wtfree's in a fresh random order each repeat (benchmarks/_timing.py):
while one side runs, the other waits on the pipe. Its intra-op threads are set to the cores
XLA:CPU uses (``os.cpu_count()``; ``--torch_threads=2,1`` times each count, ``torch ... 1t``).

The torch step is timed in NCHW (``torch nchw``) and in channels-last memory (``torch nhwc``,
oneDNN's preferred layout); ``x torch`` compares each run with the fastest torch run
(the median over repeats of the per-repeat ratio of wtfree's images/s to torch's). wtfree's
steps are benchmarks/resnet_rules.py's (configs/cifar10_resnet20.py, ``wm`` with a mirror batch
every step). With ``--biotorch`` the worker also times biotorch's fa/usf/frsf/brsf/dfa ResNet-20
where biotorch imports in the torch venv.

``CPU ms/step`` is the CPU time (all threads, user + system) of the process that ran the step,
per step: under load, when the two sides get different shares of the cores, it still compares
the work each does (a spinning thread counts too).

The machine may be shared: the load average is printed before and after each table.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import _timing

_WORKER = r"""
import contextlib, json, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F



class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x
        if self.stride != 1 or self.pad:  # option A
            s = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.pad))
        return F.relu(y + s)


class ResNet20(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(3):
                blocks.append(Block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def make_runner(name, batch):
    torch.manual_seed(0)
    layout = "nhwc" if "nhwc" in name.split() else "nchw"
    model, kwargs = ResNet20(), {}
    if name.startswith("biotorch"):  # biotorch's layers in place of this ResNet-20's
        from biotorch.module.biomodule import BioModule

        rule = name.split()[1]
        model = BioModule(model, mode=rule, output_dim=10)
        if rule == "dfa":  # biotorch's dfa needs the targets and the loss in forward
            kwargs = {"loss_function": F.cross_entropy}
    memory = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    model = model.to(memory_format=memory).train()
    x = torch.randn(batch, 3, 32, 32).to(memory_format=memory)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        extra = {"targets": y, **kwargs} if kwargs else {}
        loss = F.cross_entropy(model(x, **extra), y)
        loss.backward()
        opt.step()
        return loss

    return step


runners = {}
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                  "mkldnn": torch.backends.mkldnn.is_available()}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    key = (cmd["name"], cmd["batch"])
    try:
        if key not in runners:
            with contextlib.redirect_stdout(sys.stderr):  # biotorch prints; stdout is the pipe
                runners[key] = make_runner(cmd["name"], cmd["batch"])
        step = runners[key]
        torch.set_num_threads(cmd["threads"])
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(cmd["steps"]):
            step()
        reply = {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}
    except Exception as e:  # reported back, so that one missing peer does not stop the run
        reply = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(reply), flush=True)
"""

BIOTORCH_RULES = ("fa", "usf", "frsf", "brsf", "dfa")


class TorchWorker:
    """A PyTorch process kept alive over a pipe: ``worker(name, batch, steps) -> seconds``.

    ``name``: ``torch nchw`` / ``torch nhwc`` (memory format), ``biotorch <rule>``; a last
    word ``<n>t`` sets torch's intra-op threads to n for that run (default: the cores).
    """

    def __init__(self, python: str):
        self.cpu: dict[str, list[float]] = {}  # per name, the worker's CPU seconds of each call
        self.proc = subprocess.Popen(
            [python, "-c", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def __call__(self, name: str, batch: int, steps: int) -> float:
        last = name.split()[-1]
        threads = int(last[:-1]) if last.endswith("t") and last[:-1].isdigit() else os.cpu_count()
        cmd = {"name": name, "batch": batch, "steps": steps, "threads": threads}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise RuntimeError(reply["error"])
        self.cpu.setdefault(name, []).append(reply["cpu"])
        return reply["seconds"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def with_cpu_time(run, cpu: list[float]):
    """``run`` (returning wall seconds) that also appends this process's CPU seconds to ``cpu``."""

    def timed():
        start = time.process_time()
        seconds = run()
        cpu.append(time.process_time() - start)
        return seconds

    return timed


def make_venv(path: str) -> str:
    """A venv at ``path`` with PyPI's torch (and biotorch, without its pinned dependencies)."""
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "torch", "numpy"], check=True)
    return python


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch_python", default="", help="a Python with torch installed")
    parser.add_argument("--make_venv", default="", help="or: build a torch venv here first")
    parser.add_argument(
        "--torch_threads",
        default=str(os.cpu_count()),
        help="comma-separated intra-op thread counts to time torch at (default: the cores)",
    )
    parser.add_argument("--rules", default="bp,fa,usf,kp,wm,dfa,frsf,brsf")
    parser.add_argument("--batch_sizes", default="32,128")
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--torch_layouts", default="nchw,nhwc", help="torch memory formats to time: nchw, nhwc"
    )
    parser.add_argument("--biotorch", action="store_true", help="also time biotorch's rules")
    args = parser.parse_args()
    if not args.torch_python and not args.make_venv:
        print("pass --torch_python=PYTHON (with torch) or --make_venv=DIR", file=sys.stderr)
        sys.exit(2)
    python = make_venv(args.make_venv) if args.make_venv else args.torch_python
    if not os.path.exists(python):
        print(f"--torch_python={python}: no such file", file=sys.stderr)
        sys.exit(2)

    import jax
    import resnet_rules

    from wtfree import sharding

    print(f"before: {_timing.load_average()}")
    worker = TorchWorker(python)
    print(
        f"torch {worker.info['torch']}, {worker.info['threads']} threads by default (oneDNN: "
        f"{worker.info['mkldnn']}); jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} cores"
    )
    rules = args.rules.split(",")
    threads = [int(t) for t in args.torch_threads.split(",")]
    layouts = args.torch_layouts.split(",")
    torch_names = [f"torch {layout} {t}t" for t in threads for layout in layouts]
    if args.biotorch:
        torch_names += [f"biotorch {r} {threads[0]}t" for r in BIOTORCH_RULES]
    results = {}
    for batch_size in map(int, args.batch_sizes.split(",")):
        runs, cpu = {}, {}
        for name in list(torch_names):
            try:
                worker(name, batch_size, args.warmup)
            except RuntimeError as e:
                print(f"{name}: skipped ({e})")
                continue
            runs[name] = functools.partial(worker, name, batch_size, args.steps)
        batch_np = resnet_rules.synthetic_batch(batch_size)
        for rule in rules:
            config = resnet_rules.make_config(rule, batch_size)
            trainer, state = resnet_rules.make_trainer(config)
            batch = sharding.put_batch(batch_np, trainer.mesh)
            stepper = _timing.Stepper(resnet_rules.make_step(trainer, batch), state)
            stepper(args.warmup)
            name = f"wtfree {rule}"
            cpu[name] = []
            runs[name] = with_cpu_time(functools.partial(stepper, args.steps), cpu[name])
        worker.cpu.clear()  # the warm-up calls' CPU time is not timed
        t0 = time.perf_counter()
        times = _timing.interleaved(runs, args.repeats)
        cpu.update(worker.cpu)
        print(f"\nbatch {batch_size}: timed in {time.perf_counter() - t0:.0f} s")
        torch_ref = min(
            (n for n in times if n.startswith("torch ")),
            key=lambda n: _timing.median(times[n]),
        )
        ratios = _timing.paired_ratios(times, torch_ref)
        rows = []
        for name, ts in times.items():
            per_step = _timing.median(ts) / args.steps
            cpu_per_step = _timing.median(cpu[name]) / args.steps
            speed = _timing.median([1 / r for r in ratios[name]])  # images/s over torch's
            rows.append(
                [
                    name,
                    f"{per_step * 1e3:.1f}",
                    f"{cpu_per_step * 1e3:.1f}",
                    f"{_timing.spread(ts):.0%}",
                    f"{batch_size / per_step:.0f}",
                    f"{speed:.2f}",
                ]
            )
            results[f"{name} @{batch_size}"] = {
                "images_per_s": batch_size / per_step,
                "x_torch": speed,
                "cpu_ms_per_step": cpu_per_step * 1e3,
            }
        print(
            f"ResNet-20 train step, batch {batch_size} of 32x32x3 in memory: median of "
            f"{args.repeats} interleaved runs x {args.steps} steps; x torch = images/s over "
            f"{torch_ref}'s (per-repeat ratio, median)"
        )
        header = ["step", "ms/step", "CPU ms/step", "spread", "images/s", "x torch"]
        print(_timing.table(header, rows))
        print(f"load: {_timing.load_average()}")
    worker.close()
    print(f"after: {_timing.load_average()}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
