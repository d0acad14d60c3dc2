r"""biotorch's LeNet table beside wtfree's: top-1 test error (%) of the best epoch, per rule.

    .venv/bin/python experiments/biotorch_table.py runs/biotorch

Reads ``<dir>/<dataset>_<rule>_s<seed>/metrics.jsonl`` (configs/sweeps/biotorch_lenet.py).
Per run: the error of the epoch with the best test accuracy (biotorch's protocol: its
validation set is the test set) and of the last epoch. Seeds of a rule are averaged: mean, and
the spread max - min in parentheses. Unfinished runs are left out and counted.
"""

import collections
import json
import statistics
import sys

from etils import epath

from wtfree import logs, paths

DATASETS = ("mnist", "fashion_mnist")
# Benchmarks.md of jsalbert/biotorch, "MNIST & Fashion-MNIST" (LeNet MNIST, 100 epochs).
BIOTORCH = {
    "bp": (0.91, 9.2),
    "fa": (1.7, 13.06),
    "dfa": (1.61, 12.81),
    "usf": (0.94, 9.69),
    "brsf": (0.91, 10.02),
    "frsf": (0.97, 9.61),
}
ORDER = ("bp", "fa", "dfa", "usf", "brsf", "frsf", "kp", "wm", "sa", "aa")


def errors(workdir: epath.Path) -> tuple[float, float, int] | None:
    """(best-epoch error, last-epoch error, epochs) of a finished run, or None."""
    config = workdir / "config.json"
    accuracy = {}
    for d in logs.read_metrics(workdir):
        if "test/accuracy" in d:
            accuracy[round(d["epoch"])] = 100 * (1 - d["test/accuracy"])
    epochs = json.loads(config.read_text())["num_epochs"] if config.exists() else None
    if not accuracy or max(accuracy) != epochs:
        return None
    return min(accuracy.values()), accuracy[max(accuracy)], epochs


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ({max(values) - min(values):.2f})"


def main(root: str) -> None:
    best = collections.defaultdict(list)
    last = collections.defaultdict(list)
    unfinished = collections.Counter()
    epochs = set()
    for workdir in sorted(paths.as_path(root).iterdir()):
        name, _, seed = workdir.name.rpartition("_s")
        dataset = next((d for d in DATASETS if name.startswith(d + "_")), None)
        if dataset is None or not seed.isdigit():
            continue
        rule = name[len(dataset) + 1 :]
        result = errors(workdir)
        if result is None:
            unfinished[rule, dataset] += 1
            continue
        best[rule, dataset].append(result[0])
        last[rule, dataset].append(result[1])
        epochs.add(result[2])
    print(f"epochs per run: {sorted(epochs)}; cells: mean (max - min) over seeds")
    print()
    print(
        "| rule | seeds | MNIST, biotorch | MNIST, best epoch | MNIST, last epoch "
        "| Fashion, biotorch | Fashion, best epoch | Fashion, last epoch |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rules = [r for r in ORDER if any((r, d) in best for d in DATASETS)]
    rules += sorted({r for r, _ in best} - set(rules))
    for rule in rules:
        ours = []
        for i, dataset in enumerate(DATASETS):
            theirs = BIOTORCH.get(rule)
            ours += [
                f"{theirs[i]:.2f}" if theirs else "–",
                cell(best[rule, dataset]),
                cell(last[rule, dataset]),
            ]
        seeds = max(len(best[rule, d]) for d in DATASETS)
        print(f"| {rule} | {seeds} | " + " | ".join(ours) + " |")
    if unfinished:
        print()
        left = ", ".join(f"{r}/{d} x{n}" for (r, d), n in unfinished.items())
        print(f"unfinished (left out): {left}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RUNS_DIR")
    main(sys.argv[1])
