"""wtfree.plot on synthetic metrics, and wtfree.sweep's loading, commands and failure handling."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from wtfree import plot, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")


def write_run(workdir, lines):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return str(workdir)


def synthetic_lines(with_weight_angle=True, layers=("Dense_0", "Dense_1")):
    lines = []
    for step in (0, 10, 20, 30):
        train = {"step": step, "epoch": step / 20, "train/loss": 1.0 / (1 + step)}
        for layer in layers:
            train[f"align/delta_angle/{layer}"] = 45.0 - step
            if with_weight_angle:
                train[f"align/weight_angle/{layer}"] = 80.0 - step
                train[f"align/norm_ratio/{layer}"] = 1.0
        lines.append(train)
        if step >= 20:
            lines.append({"step": step, "epoch": step / 20, "test/loss": 0.5, "test/accuracy": 0.9})
    return lines


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_plot_runs_writes_a_png(tmp_path):
    a = write_run(tmp_path / "kp", synthetic_lines())
    b = write_run(tmp_path / "bp", synthetic_lines(with_weight_angle=False))
    out = tmp_path / "figs" / "report.png"
    plot.plot_runs([a, b], str(out))
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_figure_panels_and_lines(tmp_path):
    a = write_run(tmp_path / "kp", synthetic_lines())
    b = write_run(tmp_path / "bp", synthetic_lines(with_weight_angle=False))
    fig = plot.make_figure([a, b], labels=["KP", "BP"])
    assert titles(fig) == [
        "test accuracy",
        "loss",
        "Dense_0: angle(B, W)",
        "Dense_0: angle(δ, δ_bp)",
        "Dense_1: angle(B, W)",
        "Dense_1: angle(δ, δ_bp)",
    ]
    accuracy, loss, weight_angle, delta_angle = fig.axes[:4]
    assert [line.get_label() for line in accuracy.get_lines()] == ["KP", "BP"]
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == ["KP", "BP"]
    assert len(loss.get_lines()) == 4  # train and test, per run
    assert len(weight_angle.get_lines()) == 1  # bp has no B: no line
    assert len(delta_angle.get_lines()) == 2
    # Accuracy in percent, at the two test epochs.
    assert list(accuracy.get_lines()[0].get_xdata()) == [1.0, 1.5]
    assert list(accuracy.get_lines()[0].get_ydata()) == pytest.approx([90.0, 90.0])


def test_only_measured_panels_on_a_grid_that_grows(tmp_path):
    # bp measures no B: no angle(B, W) panels; no test accuracy yet: no accuracy panel.
    lines = [line for line in synthetic_lines(with_weight_angle=False) if "test/loss" not in line]
    fig = plot.make_figure([write_run(tmp_path / "bp", lines)])
    assert titles(fig) == ["loss", "Dense_0: angle(δ, δ_bp)", "Dense_1: angle(δ, δ_bp)"]
    assert "not measured" not in [t.get_text() for ax in fig.axes for t in ax.texts]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["bp", "train", "test"]
    # 20 layers: 42 panels on 4 columns, 11 rows, each panel at least 5 x 2.9 inches.
    layers = tuple(f"block_{i}/conv" for i in range(20))
    fig = plot.make_figure([write_run(tmp_path / "deep", synthetic_lines(layers=layers))])
    assert len(fig.axes) == 42
    assert fig.axes[0].get_gridspec().get_geometry() == (11, 4)
    width, height = fig.get_size_inches()
    assert width / 4 >= 5 and height / 11 >= 2.9
    regression = [{"step": 5, "epoch": 1.0, "test/nse": 0.1, "train/loss": 0.2}]
    fig = plot.make_figure([write_run(tmp_path / "teacher", regression)])
    assert titles(fig) == ["test NSE (normalized squared error)", "loss"]
    with pytest.raises(ValueError, match="nothing measured"):
        plot.make_figure([write_run(tmp_path / "empty", [{"step": 0, "epoch": 0.0}])])


def test_layers_natural_order_with_slashes(tmp_path):
    layers = ("block_10/conv", "block_2/conv", "Dense_0")
    run = write_run(tmp_path / "r", synthetic_lines(layers=layers))
    assert plot.layers_of([plot.load_run(run)]) == ["Dense_0", "block_2/conv", "block_10/conv"]


def test_resumed_steps_count_once(tmp_path):
    lines = [
        {"step": 10, "epoch": 0.5, "train/loss": 3.0},
        {"step": 20, "epoch": 1.0, "train/loss": 2.0},
        {"step": 10, "epoch": 0.5, "train/loss": 1.0},  # logged again after a resume
    ]
    series = plot.load_run(write_run(tmp_path / "r", lines))
    assert series["train/loss"] == ([0.5, 1.0], [1.0, 2.0])


def test_plot_missing_metrics(tmp_path, capsys):
    good = write_run(tmp_path / "good", synthetic_lines())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plot.plot_runs([good, str(empty)], str(tmp_path / "x.png"))
    assert plot.main([good, str(empty), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty: no metrics.jsonl" in err
    assert not (tmp_path / "x.png").exists()


def test_plot_cli_labels_mismatch(tmp_path, capsys):
    good = write_run(tmp_path / "good", synthetic_lines())
    assert plot.main([good, "--out", str(tmp_path / "x.png"), "--labels", "a,b"]) == 2
    assert "2 labels for 1 runs" in capsys.readouterr().err


def write_sweep(tmp_path, body, name="s.py"):
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def test_load_sweep_and_command(tmp_path):
    path = write_sweep(
        tmp_path,
        "def get_sweep():\n"
        "    return [\n"
        "        {'config': 'configs/mnist_mlp.py:rule=kp',\n"
        "         'overrides': {'optimizer.learning_rate': 0.3, 'num_epochs': 2},\n"
        "         'name': 'kp_lr0.3'},\n"
        "        {'config': 'configs/mnist_mlp.py:rule=fa',\n"
        "         'overrides': {'optimizer.weight_decay': 1e-4, 'model_kwargs.widths': (8, 4),\n"
        "                       'model_kwargs.activation': 'relu'}},\n"
        "        {'config': 'configs/mnist_mlp.py'},\n"
        "    ]\n",
    )
    runs = sweep.load_sweep(path)
    assert [run.name for run in runs] == [
        "kp_lr0.3",
        "mnist_mlp-rule=fa-optimizer.weight_decay=0.0001-model_kwargs.widths=_8__4_"
        "-model_kwargs.activation=relu",
        "mnist_mlp",
    ]
    workdir = str(tmp_path / "sweep")
    assert sweep.command(runs[0], workdir) == [
        sys.executable,
        "train.py",
        "--config=configs/mnist_mlp.py:rule=kp",
        f"--workdir={workdir}/kp_lr0.3",
        "--config.optimizer.learning_rate=0.3",
        "--config.num_epochs=2",
    ]
    assert sweep.command(runs[1], workdir)[4:] == [
        "--config.optimizer.weight_decay=0.0001",
        "--config.model_kwargs.widths=(8, 4)",
        "--config.model_kwargs.activation=relu",
    ]
    assert sweep.command(runs[2], workdir) == [
        sys.executable,
        "train.py",
        "--config=configs/mnist_mlp.py",
        f"--workdir={workdir}/mnist_mlp",
    ]
    assert os.path.isfile(os.path.join(sweep.REPO_ROOT, "train.py"))


def test_relative_workdir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = sweep.Run(config="configs/mnist_mlp.py", overrides={}, name="a")
    assert sweep.command(run, "runs/s")[3] == f"--workdir={tmp_path}/runs/s/a"


@pytest.mark.parametrize("sweep_file", ["mnist_rules.py", "mnist_kp_decay.py"])
def test_shipped_sweeps(sweep_file):
    runs = sweep.load_sweep(os.path.join(sweep.REPO_ROOT, "configs", "sweeps", sweep_file))
    names = [run.name for run in runs]
    assert len(runs) == 4 and len(set(names)) == 4
    assert all(SAFE.fullmatch(name) for name in names)
    assert all(run.overrides["num_epochs"] == 20 for run in runs)
    if sweep_file == "mnist_rules.py":
        assert [run.config for run in runs] == [
            f"configs/mnist_mlp.py:rule={rule}" for rule in ("bp", "fa", "wm", "kp")
        ]
    else:
        assert [run.overrides["optimizer.weight_decay"] for run in runs] == [0, 1e-4, 1e-3, 1e-2]
        assert {run.overrides["optimizer.learning_rate"] for run in runs} == {0.3}


def test_derived_names_are_safe_and_distinct():
    names = {
        sweep.make_name("configs/mnist_mlp.py:rule=kp", {"x": value})
        for value in ("a/b", "../c", "d e", 1e-5, -1, (1, 2), 0)
    }
    assert len(names) == 7
    assert all(SAFE.fullmatch(name) and ".." not in name.split("/") for name in names)


@pytest.mark.parametrize(
    "body, message",
    [
        ("x = 1\n", "defines no get_sweep()"),
        ("def get_sweep():\n    return [{'overrides': {}}]\n", "entry 0 has no 'config'"),
        ("def get_sweep():\n    return []\n", "non-empty list"),
        ("def get_sweep():\n    return [{'config': 'configs/nope.py'}]\n", "does not exist"),
        ("def get_sweep():\n    return [{'config': 'configs/mnist_mlp.py', 'nme': 'a'}]\n", "nme"),
        (
            "def get_sweep():\n    return [{'config': 'configs/mnist_mlp.py', 'name': '../a'}]\n",
            "safe",
        ),
        (
            "def get_sweep():\n    return [{'config': 'configs/mnist_mlp.py'}] * 2\n",
            "entries 0 and 1 have the same name 'mnist_mlp'",
        ),
        ("import no_such_module\n", "ModuleNotFoundError"),
        ("def get_sweep():\n    return {}['lr']\n", "get_sweep() raised KeyError: 'lr'"),
    ],
)
def test_bad_sweep_files(tmp_path, capsys, body, message):
    path = write_sweep(tmp_path, body)
    with pytest.raises(sweep.SweepError, match=re.escape(message)):
        sweep.load_sweep(path)
    assert sweep.main([path, "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and path in err


def test_missing_sweep_file(tmp_path, capsys):
    assert sweep.main([str(tmp_path / "nope.py"), "--workdir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"wtfree.sweep: error: no sweep file {tmp_path}/nope.py\n"


def test_dry_run_prints_commands(tmp_path, capsys, monkeypatch):
    def no_runs(*args, **kwargs):
        raise AssertionError("a dry run started a process")

    monkeypatch.setattr(subprocess, "run", no_runs)
    path = os.path.join(sweep.REPO_ROOT, "configs", "sweeps", "mnist_kp_decay.py")
    workdir = str(tmp_path / "my runs")  # a space, to be quoted
    assert sweep.main([path, "--workdir", workdir, "--dry_run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = [sweep.command(run, workdir) for run in sweep.load_sweep(path)]
    assert [shlex.split(line) for line in printed] == expected


def test_sweep_goes_on_after_a_failure(tmp_path, capsys, monkeypatch):
    started = []

    def fake_run(argv, cwd, check):
        started.append(argv)
        return subprocess.CompletedProcess(argv, 3 if len(started) == 1 else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    path = write_sweep(
        tmp_path,
        "def get_sweep():\n"
        "    return [{'config': 'configs/mnist_mlp.py', 'name': n} for n in ('a', 'b')]\n",
    )
    assert sweep.main([path, "--workdir", str(tmp_path / "w")]) == 1
    assert [argv[3] for argv in started] == [f"--workdir={tmp_path}/w/{n}" for n in "ab"]
    err = capsys.readouterr().err
    assert "run a failed with exit code 3" in err
    assert err.splitlines()[-1] == "wtfree.sweep: 1 of 2 runs failed: a (exit 3)"


def test_a_bad_run_stops_the_sweep_before_any_run_starts(tmp_path):
    path = write_sweep(
        tmp_path,
        "def get_sweep():\n"
        "    return [{'config': 'configs/mnist_mlp.py', 'name': 'good'},\n"
        "            {'config': 'configs/mnist_mlp.py:rule=nope', 'name': 'bad_rule'},\n"
        "            {'config': 'configs/mnist_mlp.py', 'name': 'bad_lr',\n"
        "             'overrides': {'optimizer.learning_rate': -1.0}}]\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "wtfree.sweep", path, "--workdir", str(tmp_path / "w")],
        cwd=sweep.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        "wtfree.sweep: error: run bad_rule: unknown rule 'nope'; known rules: aa, ar, bp,"
    )
    assert not (tmp_path / "w").exists()
    with pytest.raises(
        sweep.SweepError, match=r"run bad_lr: optimizer.learning_rate=-1.0; allowed"
    ):
        sweep.validate_runs(sweep.load_sweep(path)[2:])
    typo = sweep.Run(config="configs/mnist_mlp.py", overrides={"optimizr.lr": 1}, name="t")
    with pytest.raises(sweep.SweepError, match="run t: "):
        sweep.validate_runs([typo])


def test_dry_run_into_a_closed_pipe_ends_quietly(tmp_path):
    # `--dry_run | head -1`: 600 long commands overflow the pipe's buffer (64 KiB), so the
    # sweep still writes when the reader has gone; it ends with exit 0 and no traceback.
    path = write_sweep(
        tmp_path,
        "def get_sweep():\n"
        "    return [{'config': 'configs/mnist_mlp.py', 'name': f'r{i:04d}' + 'x' * 120}\n"
        "            for i in range(600)]\n",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "wtfree.sweep", path, "--workdir", str(tmp_path), "--dry_run"],
        cwd=sweep.REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert "train.py" in process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 0, stderr
    assert stderr == ""
