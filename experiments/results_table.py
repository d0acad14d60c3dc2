r"""Markdown tables of a sweep's runs: test accuracy per epoch, and per layer the final angles.

    .venv/bin/python experiments/results_table.py runs/fmr

Reads every ``<dir>/*/metrics.jsonl``. Runs named ``<rule>_s<seed>``: seeds of one rule are
averaged (mean, and the spread max - min in parentheses). Angles are the last logged values,
averaged over a rule's finished runs (over its unfinished ones where none finished).
``--by_layer`` prints the angle tables transposed, a row per layer and a column per rule: for a
model with more layers than rules (the ViT's 25).
"""

import collections
import os
import statistics
import sys

from etils import epath

from wtfree import logs, paths


def load(workdir: epath.Path) -> tuple[dict[int, float], dict[str, float]]:
    accuracy, last = {}, {}
    for d in logs.read_metrics(workdir):
        if "test/accuracy" in d:
            accuracy[round(d["epoch"])] = 100 * d["test/accuracy"]
        for k, v in d.items():
            if k.startswith("align/") and k != "align/delta_angle/output":
                last[k] = v
    return accuracy, last


def main(root: str, by_layer: bool = False) -> None:
    runs = collections.defaultdict(list)
    for workdir in sorted(paths.as_path(root).iterdir()):
        if (workdir / "metrics.jsonl").exists():
            rule, _, seed = workdir.name.rpartition("_s")
            if not (rule and seed.isdigit()):  # not <rule>_s<seed>: a run of its own
                rule = workdir.name
            runs[rule].append(load(workdir))
    epochs = sorted({e for r in runs.values() for acc, _ in r for e in acc})
    print("| rule | runs (finished) | " + " | ".join(f"epoch {e}" for e in epochs) + " |")
    print("|---|---|" + "---|" * len(epochs))
    for rule, results in runs.items():
        cells = []
        for e in epochs:
            values = [acc[e] for acc, _ in results if e in acc]
            if not values:
                cells.append("–")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f}")
            else:
                spread = max(values) - min(values)
                cells.append(f"{statistics.mean(values):.2f} ({spread:.2f}, n={len(values)})")
        finished = sum(epochs[-1] in acc for acc, _ in results)
        print(f"| {rule} | {len(results)} ({finished}) | " + " | ".join(cells) + " |")
    print()
    for kind in ("weight_angle", "delta_angle", "norm_ratio"):
        layers = sorted(
            {
                k.split("/", 2)[2]
                for r in runs.values()
                for _, a in r
                for k in a
                if k.startswith(f"align/{kind}/")
            }
        )
        if not layers:
            continue
        cells = {}
        for rule, results in runs.items():
            # Angles of finished runs only, where a rule has any (a new seed's are early ones).
            done = [r for r in results if epochs[-1] in r[0]]
            results = done or results
            for layer in layers:
                values = [
                    a[f"align/{kind}/{layer}"] for _, a in results if f"align/{kind}/{layer}" in a
                ]
                fmt = "{:.2f}" if kind == "norm_ratio" else "{:.1f}"
                cells[rule, layer] = fmt.format(statistics.mean(values)) if values else "–"
        print(f"{kind} at the end (mean over seeds):\n")
        rows, columns = (layers, list(runs)) if by_layer else (list(runs), layers)
        print(f"| {'layer' if by_layer else 'rule'} | " + " | ".join(columns) + " |")
        print("|---|" + "---|" * len(columns))
        for row in rows:
            keys = [(c, row) if by_layer else (row, c) for c in columns]
            print(f"| {row} | " + " | ".join(cells[k] for k in keys) + " |")
        print()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--by_layer"]
    if len(args) != 1 or not paths.as_path(args[0]).is_dir():
        given = sys.argv[1:] or "nothing"
        print(
            f"results_table.py: got {given}; allowed: one sweep directory [--by_layer]",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        main(args[0], by_layer="--by_layer" in sys.argv[1:])
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
