r"""Markdown tables of a sweep's runs: test accuracy per epoch, and per layer the final angles.

    .venv/bin/python experiments/results_table.py runs/fmr

Reads every ``<dir>/*/metrics.jsonl``. Runs named ``<rule>_s<seed>``: seeds of one rule are
averaged (mean, and the spread max - min in parentheses). Angles are the last logged values,
averaged over a rule's finished runs (over its unfinished ones where none finished).
"""

import collections
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


def main(root: str) -> None:
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
        print(f"{kind} at the end (mean over seeds):\n")
        print("| rule | " + " | ".join(layers) + " |")
        print("|---|" + "---|" * len(layers))
        for rule, results in runs.items():
            # Angles of finished runs only, where a rule has any (a new seed's are early ones).
            done = [r for r in results if epochs[-1] in r[0]]
            results = done or results
            cells = []
            for layer in layers:
                values = [
                    a[f"align/{kind}/{layer}"] for _, a in results if f"align/{kind}/{layer}" in a
                ]
                fmt = "{:.2f}" if kind == "norm_ratio" else "{:.1f}"
                cells.append(fmt.format(statistics.mean(values)) if values else "–")
            print(f"| {rule} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not paths.as_path(sys.argv[-1]).is_dir():
        given = sys.argv[1:] or "nothing"
        print(f"results_table.py: got {given}; allowed: one sweep directory", file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
