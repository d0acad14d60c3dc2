r"""Plots runs' metrics.jsonl side by side: accuracy, loss, and per layer the alignment angles.

    python -m wtfree.plot runs/mnist_bp runs/mnist_fa runs/mnist_kp --out report.png \
        [--labels bp,fa,kp]

One figure file: test accuracy (for regression runs, which log no accuracy, the test NSE),
train/test loss, then per layer the angle between B and W and the angle between the rule's
error signal and backprop's (degrees), against epochs. Only what some run measured gets a
panel (bp has no B, DFA's B is not shaped like W, an input layer's B is never used), on a grid
of 2 to 4 columns that grows with the panels. One line per run, labelled by its workdir's
name unless ``--labels``; layers come from the keys. A run still training can be plotted; a
resumed run's re-logged steps count once (the last value).
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


def _grid(n: int) -> tuple[int, int]:
    """(rows, columns) for ``n`` panels: 2 columns, up to 4 as the panels grow in number."""
    cols = 1 if n == 1 else 2 if n <= 8 else 3 if n <= 18 else 4
    return -(-n // cols), cols


def make_figure(workdirs: Sequence[str], labels: Sequence[str] | None = None) -> Figure:
    """The figure of ``workdirs``: accuracy (or NSE) and loss, then the angles per layer, one
    panel each; only panels some run measured, on a grid that grows with their number.

    Raises FileNotFoundError for a workdir without metrics.jsonl, ValueError for a bad file,
    runs that measured nothing, or a ``labels`` of another length than ``workdirs``.
    """
    if not workdirs:
        raise ValueError("no run directories given")
    if labels is None:
        labels = [paths.as_path(w).name for w in workdirs]
    if len(labels) != len(workdirs):
        raise ValueError(f"{len(labels)} labels for {len(workdirs)} runs")
    runs = [load_run(w) for w in workdirs]

    def measured(*keys: str) -> bool:
        return any(key in run and key not in _MEANINGLESS for run in runs for key in keys)

    # (title, [(key, scale, style)], axes settings), each a panel where some run has a key.
    panels = []
    # Regression runs (squared error on a teacher) log the normalized squared error instead.
    if measured("test/accuracy"):
        style = {"marker": "."}
        panels.append(("test accuracy", [("test/accuracy", 100.0, style)], {"ylabel": "%"}))
    elif measured("test/nse"):
        style = {"linewidth": 1.0}
        title = "test NSE (normalized squared error)"
        panels.append((title, [("test/nse", 1.0, style)], {"yscale": "log"}))
    loss_keys = [("train/loss", 1.0, {"linewidth": 1.0})]
    loss_keys.append(("test/loss", 1.0, {"linestyle": "--", "marker": "."}))
    if measured("train/loss", "test/loss"):
        panels.append(("loss", loss_keys, {"yscale": "log"}))
    for layer in layers_of(runs):
        for kind, title in ANGLES:
            key = f"align/{kind}/{layer}"
            if measured(key):
                style = {"linewidth": 1.0}
                panels.append((f"{layer}: {title}", [(key, 1.0, style)], {"ylabel": "degrees"}))
    if not panels:
        raise ValueError(f"nothing measured to plot in {', '.join(map(str, workdirs))}")

    nrows, ncols = _grid(len(panels))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys, settings) in zip(axes.flat, panels, strict=False):
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            for j, (key, scale, style) in enumerate(keys):
                if key in run:
                    epochs, values = run[key]
                    line_label = label if j == 0 else None
                    ax.plot(
                        epochs,
                        [scale * v for v in values],
                        color=colors[i % len(colors)],
                        label=line_label,
                        **style,
                    )
        ax.set(title=title, xlabel="epoch", **settings)
        ax.title.set_fontsize("small" if len(panels) > 8 else "medium")
        if settings.get("ylabel") == "degrees":
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    # The runs' legend on the first panel; train / test line styles on the loss panel.
    first = axes.flat[0]
    handles = first.get_legend_handles_labels()[0]
    if panels[0][0] != "loss":
        first.legend(fontsize="small")
        handles = []
    titles = [title for title, _, _ in panels]
    if "loss" in titles:
        handles += [
            Line2D([], [], color="gray", label="train"),
            Line2D([], [], color="gray", linestyle="--", label="test"),
        ]
        axes.flat[titles.index("loss")].legend(handles=handles, fontsize="small")
    for ax in axes.flat[len(panels) :]:
        ax.remove()
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
