r"""Plots runs' metrics.jsonl side by side: accuracy, loss, and per layer the alignment angles.

    python -m wtfree.plot runs/mnist_bp runs/mnist_fa runs/mnist_kp --out report.png \
        [--labels bp,fa,kp]

One figure file: test accuracy (for regression runs, which log no accuracy, the test NSE) and
train/test loss against epochs on the first row, then a row
per layer with the angle between B and W and the angle between the rule's error signal and
backprop's (degrees). One line per run, labelled by its workdir's name unless ``--labels``;
layers come from the keys, and a run without a key has no line in that panel. A run still
training can be plotted; a resumed run's re-logged steps count once (the last value).
"""

import argparse
import re
import sys
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from wtfree import logs, paths  # noqa: E402

ANGLES = (("weight_angle", "angle(B, W)"), ("delta_angle", "angle(δ, δ_bp)"))

Series = tuple[list[float], list[float]]  # epochs, values
# Logged by runs from before wtfree stopped measuring it: the error at the logits is the same
# under every rule, so this angle is 0 by construction.
_MEANINGLESS = frozenset({"align/delta_angle/output"})


def load_run(workdir: str) -> dict[str, Series]:
    """``key -> (epochs, values)`` of a run's metrics.jsonl, sorted by step, one value a step.

    Raises FileNotFoundError without a metrics.jsonl, ValueError on a line that is not JSON.
    """
    if not (paths.as_path(workdir) / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{workdir}: no metrics.jsonl")
    try:
        lines = logs.read_metrics(workdir)
    except ValueError as e:
        raise ValueError(f"{workdir}/metrics.jsonl: {e}") from e
    by_key: dict[str, dict[int, tuple[float, float]]] = {}
    for line in lines:
        step, epoch = line.get("step"), line.get("epoch")
        for key, value in line.items():
            if key not in ("step", "epoch") and isinstance(value, int | float):
                # A resumed run logs again the steps after its last checkpoint: keep the last.
                by_key.setdefault(key, {})[step] = (epoch, value)
    series = {}
    for key, points in by_key.items():
        ordered = [points[s] for s in sorted(points)]
        series[key] = ([e for e, _ in ordered], [v for _, v in ordered])
    return series


def _natural(name: str) -> list:
    """Sort key putting Dense_2 before Dense_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def layers_of(runs: Sequence[dict[str, Series]]) -> list[str]:
    """Every layer with an angle in any run, in natural order (layer names may contain '/')."""
    found = set()
    for run in runs:
        for key in run:
            for kind, _ in ANGLES:
                prefix = f"align/{kind}/"
                if key.startswith(prefix) and key not in _MEANINGLESS:
                    found.add(key[len(prefix) :])
    return sorted(found, key=_natural)


def make_figure(workdirs: Sequence[str], labels: Sequence[str] | None = None) -> Figure:
    """The figure of ``workdirs``: a row of accuracy and loss, then a row of angles per layer.

    Raises FileNotFoundError for a workdir without metrics.jsonl, ValueError for a bad file or
    a ``labels`` of another length than ``workdirs``.
    """
    if not workdirs:
        raise ValueError("no run directories given")
    if labels is None:
        labels = [paths.as_path(w).name for w in workdirs]
    if len(labels) != len(workdirs):
        raise ValueError(f"{len(labels)} labels for {len(workdirs)} runs")
    runs = [load_run(w) for w in workdirs]
    layer_names = layers_of(runs)

    nrows = 1 + len(layer_names)
    fig, axes = plt.subplots(nrows, 2, figsize=(11, 3.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def draw(ax, run, key, color, scale=1.0, **kwargs):
        if key in run and key not in _MEANINGLESS:
            epochs, values = run[key]
            ax.plot(epochs, [scale * v for v in values], color=color, **kwargs)

    accuracy, loss = axes[0]
    # Regression runs (squared error on a teacher) log the normalized squared error instead.
    regression = not any("test/accuracy" in run for run in runs)
    regression = regression and any("test/nse" in run for run in runs)
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        color = colors[i % len(colors)]
        if regression:
            draw(accuracy, run, "test/nse", color, label=label, linewidth=1.0)
        else:
            draw(accuracy, run, "test/accuracy", color, scale=100.0, label=label, marker=".")
        draw(loss, run, "train/loss", color, linewidth=1.0)
        draw(loss, run, "test/loss", color, linestyle="--", marker=".")
        for row, layer in enumerate(layer_names, start=1):
            for col, (kind, _) in enumerate(ANGLES):
                draw(axes[row][col], run, f"align/{kind}/{layer}", color, linewidth=1.0)

    if regression:
        accuracy.set(title="test NSE (normalized squared error)", yscale="log")
    else:
        accuracy.set(title="test accuracy", ylabel="%")
    accuracy.legend(fontsize="small")
    loss.set(title="loss", yscale="log")
    loss.legend(
        handles=[
            Line2D([], [], color="gray", label="train"),
            Line2D([], [], color="gray", linestyle="--", label="test"),
        ],
        fontsize="small",
    )
    for row, layer in enumerate(layer_names, start=1):
        for col, (_, title) in enumerate(ANGLES):
            ax = axes[row][col]
            ax.set(title=f"{layer}: {title}", ylabel="degrees")
            ax.set_ylim(bottom=0)
            if not ax.get_lines():
                # Left out on purpose (an input layer's unused B, the logits' error), or a rule
                # without that angle (DFA's B is not shaped like W): say so, not a blank panel.
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_runs(workdirs: Sequence[str], out: str, labels: Sequence[str] | None = None) -> None:
    """Writes ``make_figure(workdirs, labels)`` to ``out`` (format from its extension: .png,
    .pdf, .svg), making its directory if needed."""
    out = paths.as_path(out)
    formats = Figure().canvas.get_supported_filetypes()
    if out.suffix[1:].lower() not in formats:
        raise ValueError(f"--out={out}: allowed extensions: {', '.join(sorted(formats))}")
    fig = make_figure(workdirs, labels)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as f:
            fig.savefig(f, format=out.suffix[1:] or None, dpi=110)
    finally:
        plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wtfree.plot", description=__doc__.splitlines()[0]
    )
    parser.add_argument("workdirs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--out", required=True, help="the figure file (.png, .pdf, .svg)")
    parser.add_argument("--labels", help="comma-separated labels, one per run")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels is not None else None
    try:
        plot_runs(args.workdirs, args.out, labels)
    except (OSError, ValueError) as e:
        print(f"wtfree.plot: error: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
