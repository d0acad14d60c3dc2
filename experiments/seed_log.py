r"""The seed MLP's 400-epoch runs beside the seed's own log, at epochs 1, 10, 100 and 400.

    .venv/bin/python experiments/seed_log.py runs/seed_400

Reads ``<dir>/{bp,fa,wm,kp}/metrics.jsonl`` (configs/sweeps/seed_400.py): test accuracy after
the epoch, the output layer's angle between B and W (``align/weight_angle/output``) and the
hidden layer's angle between its error and backprop's (``align/delta_angle/hidden_0``), both
logged at the epoch's last step. The seed's values are those of its
experiments/mnist/<rule>-V0/results.json (makrout/Deep-Learning-without-Weight-Transport,
commit 688f47a): ``test_accuracy``, ``weight_angles/layer_1`` and ``delta_angles/layer_1`` of
``epoch_<k-1>``, computed by the seed at the end of epoch k on a sample of training images.
"""

import sys

from wtfree import logs, paths

EPOCHS = (1, 10, 100, 400)
# rule: {epoch: (test accuracy %, output B-W angle, hidden delta angle)}; bp logs no angles.
SEED = {
    "bp": {1: (88.0, None, None), 10: (94.12, None, None), 100: (98.25, None, None),
           400: (98.5, None, None)},
    "fa": {1: (85.49, 40.04, 42.08), 10: (90.86, 29.25, 26.09), 100: (96.34, 41.41, 40.4),
           400: (97.8, 40.03, 34.91)},
    "wm": {1: (78.48, 61.33, 63.44), 10: (90.49, 27.45, 16.91), 100: (97.97, 9.32, 9.14),
           400: (98.49, 3.79, 3.21)},
    "kp": {1: (88.9, 19.75, 19.41), 10: (95.41, 11.18, 12.21), 100: (98.28, 4.93, 4.39),
           400: (98.45, 3.62, 3.15)},
}  # fmt: skip
STEPS_PER_EPOCH = 60000 // 128


def load(workdir) -> dict[int, list]:
    """{epoch: [accuracy, weight angle, delta angle]} of one run, for the epochs it reached."""
    rows: dict[int, list] = {}
    for d in logs.read_metrics(workdir):
        epoch, rest = divmod(d["step"], STEPS_PER_EPOCH)
        if rest or epoch not in EPOCHS:
            continue
        row = rows.setdefault(epoch, [None, None, None])
        if "test/accuracy" in d:
            row[0] = 100 * d["test/accuracy"]
        row[1] = d.get("align/weight_angle/output", row[1])
        row[2] = d.get("align/delta_angle/hidden_0", row[2])
    return rows


def fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(root: str) -> None:
    print(
        "| rule | epoch | accuracy | seed | difference | B-W angle, output | seed "
        "| delta angle, hidden | seed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rule, seed in SEED.items():
        workdir = paths.as_path(root) / rule
        ours = load(workdir) if (workdir / "metrics.jsonl").exists() else {}
        for epoch in EPOCHS:
            acc, weight, delta = ours.get(epoch, (None, None, None))
            s_acc, s_weight, s_delta = seed[epoch]
            diff = None if acc is None else acc - s_acc
            print(
                f"| {rule} | {epoch} | {fmt(acc, 2)} | {s_acc:.2f} | {fmt(diff, 2)} "
                f"| {fmt(weight, 1)} | {fmt(s_weight, 1)} | {fmt(delta, 1)} | {fmt(s_delta, 1)} |"
            )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RUNS_DIR")
    main(sys.argv[1])
