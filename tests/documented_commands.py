r"""Every shell command the docs show, found in the docs and run as written, shortened by flags.

Found where a reader finds them: code blocks (fenced, or indented by four spaces) of README.md
and docs/*.md, the module docstrings of configs/**/*.py, and each examples/*.py. A command is a
line (``\`` continuations joined) starting with ``python``, ``.venv/bin/python`` or ``make``;
``make test`` is the suite itself. A ``for VAR in ...; do ... done`` loop is unrolled, one
command per value, unless its body runs in the background (``&``): then the loop runs as
written, in bash. ``[...]`` marks what is optional and is left out.

Each command runs as written, with only these changes: the flags of ``SHORTEN`` appended,
workdirs and output files (``--workdir``, ``--out``, ``--config.init_from``, paths under
``runs/``) moved under a temporary directory, and the interpreter this one. ``train.py`` and
``wtfree.plot`` run in this process (one JAX start for all of them); the rest as subprocesses.

Run as ``python -m tests.documented_commands RESULTS.json TMPDIR ID...`` (what
tests/test_documented_commands.py does, once for the selected commands): the commands run in
the order of discovery and RESULTS.json gets, per id, the exit code and the output's tail.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PYTHONS = ("python", "python3", ".venv/bin/python")
_LOOP = re.compile(r"for (\w+) in ([^;]+); do$")
_OPTIONAL = re.compile(r"\s*\[[^\[\]]*\]")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
# Tokens that chain commands: split into argv they would become arguments of the first one
# (a documented `python3 -m venv DIR && pip install ...` once made a venv named "&&" here).
_CHAINS = {"&&", "||", ";", "|"}

SUBPROCESS_TIMEOUT = 600  # seconds

# Appended to every command of a program to make it short. Nothing else about a command changes.
SHORTEN = {
    "train.py": (
        "--config.num_train_steps=2",
        "--config.eval_steps=1",
        "--config.mirror.pretrain_batches=1",
    ),
    "experiments/wm_stability.py": ("--steps=2",),
    # Its every (rule, layer, mode) compiles the net's gradient: 6 minutes for ResNet-8 here,
    # 20 s for the seed MLP, a config it documents (configs/<name>.py).
    "experiments/alignment_curvature.py": ("--iters=2", "--config=mnist_mlp"),
    "benchmarks/*.py": ("--help",),  # a benchmark's smallest size is minutes on this machine
}

# What a command that needs what this machine cannot have must do instead: stop at once, exit 2,
# with one line (the last of its output) matching the pattern. The first class whose pattern is
# found in the command applies; every other command must exit 0. A launcher line (srun, gcloud)
# is not a command here: it starts on a cluster the same train.py command shown for one machine.
UNAVAILABLE = (
    # (class, found in the command, the line it must end with)
    ("a cluster (--distributed)", r"--distributed\b", r"^train\.py: error: --distributed: "),
    ("ImageNet", r"imagenet", r"^train\.py: error: dataset=imagenet2012 is not prepared"),
    ("CIFAR-10", r"cifar10", r"^train\.py: error: dataset=cifar10 is not prepared"),
)

# Where a plot's run is not made by an earlier command, a copy of one tiny run stands in (plot
# reads only metrics.jsonl): the seed MLP, shortened as every train.py command.
TINY_RUN = ("train.py", "--config=configs/mnist_mlp.py:rule=bp", *SHORTEN["train.py"])


@dataclasses.dataclass(frozen=True)
class Command:
    """One documented command: where it is written, as written, and the argv that runs it."""

    path: str  # relative to the repository
    line: int
    text: str  # as written, continuations joined
    argv: tuple[str, ...]  # after optional parts are dropped and loop variables set
    shell: bool = False  # a background loop: ``text`` runs in bash

    @property
    def id(self) -> str:
        lines = self.text.splitlines()
        if not self.shell:
            words = " ".join(self.argv)
        elif _HEREDOC.search(lines[0]):  # the command; its script is in the file
            words = lines[0]
        else:
            words = " ".join(lines)
        words = re.sub(r"^\S*python3? ", "", words)
        return f"{self.path}:{self.line}: {words}"

    @property
    def expected(self) -> tuple[str, int, str | None]:
        """(class, exit code, pattern of the last line) this command must end with."""
        for name, found, last_line in UNAVAILABLE:
            if re.search(found, self.text):
                return name, 2, last_line
        return "runs here", 0, None


# ---------------------------------------------------------------------------------------------
# Discovery.
# ---------------------------------------------------------------------------------------------


def _code_lines(lines: list[str], markdown: bool) -> Iterator[tuple[int, list[str]]]:
    """(index of the first line, lines) of every code block: fenced (markdown), or indented by
    at least four spaces after a blank line."""
    block: list[str] = []
    start = 0
    fenced = False
    for i, line in enumerate([*lines, ""]):
        if markdown and line.strip().startswith("```"):
            if fenced:
                yield start, block
                block = []
            fenced, start = not fenced, i + 1
            continue
        if fenced:
            block.append(line)
        elif line.startswith("    ") and line.strip() and (block or not lines[i - 1].strip()):
            if not block:
                start = i
            block.append(line)
        elif block and not line.strip():
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def _logical_lines(start: int, block: list[str]) -> Iterator[tuple[int, str]]:
    """(index, line) with ``\\`` continuations joined and indentation removed."""
    pending, first = "", start
    for i, raw in enumerate(block, start):
        line = raw.strip()
        if not pending:
            first = i
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        if pending or line:
            yield first, pending + line
        pending = ""
    if pending:
        yield first, pending.strip()


def _is_command(words: list[str]) -> bool:
    if not words:
        return False
    if words[0] == "make":
        return words[1:2] != ["test"]
    return words[0] in _PYTHONS


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # unbalanced quotes: not a command line
        return []


def _substitute(line: str, variables: dict[str, str]) -> str:
    """Shell variables as bash sets them: unknown ones are empty."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), line)


def commands_in(path: str, text: str, first_line: int = 1, markdown: bool = True):
    """The commands in ``text`` (a file's, or a docstring starting at line ``first_line``)."""
    found = []
    lines = text.splitlines()
    for start, block in _code_lines(lines, markdown):
        logical = list(_logical_lines(start, block))
        k = 0
        while k < len(logical):
            i, line = logical[k]
            k += 1
            heredoc = _HEREDOC.search(line)
            if heredoc is not None and _is_command(_split(line[: heredoc.start()])):
                # Its lines go to the command's stdin as written: the script runs in bash.
                end = next(
                    (j for j in range(i + 1, len(lines)) if lines[j].strip() == heredoc[1]),
                    len(lines),
                )
                script = textwrap.dedent("\n".join(lines[i : end + 1]))
                words = tuple(_split(line[: heredoc.start()]))
                found.append(Command(path, first_line + i, script, words, shell=True))
                k = next((n for n, (j, _) in enumerate(logical) if j > end), len(logical))
                continue
            loop = _LOOP.match(line)
            if loop is None:
                words = _split(_OPTIONAL.sub("", _substitute(line, {})))
                if _is_command(words) and _CHAINS & set(words):
                    raise ValueError(
                        f"{path}:{first_line + i}: `{line}` chains commands "
                        f"({' '.join(sorted(_CHAINS & set(words)))}); show one command a line"
                    )
                if _is_command(words):
                    found.append(Command(path, first_line + i, line, tuple(words)))
                continue
            body = []
            while k < len(logical) and not logical[k][1].startswith("done"):
                body.append(logical[k])
                k += 1
            done = logical[k][1] if k < len(logical) else "done"
            k += 1
            if any(_split(b)[-1:] == ["&"] for _, b in body):
                script = "\n".join([line, *(b for _, b in body), done])
                words = _split(_OPTIONAL.sub("", body[0][1]))
                if _is_command(words):
                    found.append(Command(path, first_line + i, script, tuple(words), shell=True))
                continue
            for value in loop.group(2).split():
                for j, b in body:
                    words = _split(_OPTIONAL.sub("", _substitute(b, {loop.group(1): value})))
                    if _is_command(words):
                        text_ = f"{b}  [{loop.group(1)}={value}]"
                        found.append(Command(path, first_line + j, text_, tuple(words)))
    return found


def _docstring(path: str) -> tuple[str, int] | None:
    """A Python file's module docstring and the line it starts on."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    if not tree.body or not isinstance(tree.body[0], ast.Expr):
        return None
    node = tree.body[0].value
    if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
        return None
    return node.value, node.lineno


def discover(root: str = ROOT) -> list[Command]:
    """Every documented command, in the order README.md, docs/*.md, configs/, examples/."""

    def rel(path: str) -> str:
        return os.path.relpath(path, root)

    found = []
    markdown = [os.path.join(root, "README.md")]
    markdown += sorted(glob.glob(os.path.join(root, "docs", "**", "*.md"), recursive=True))
    for path in markdown:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                found += commands_in(rel(path), f.read())
    for path in sorted(glob.glob(os.path.join(root, "configs", "**", "*.py"), recursive=True)):
        doc = _docstring(path)
        if doc is not None:
            found += commands_in(rel(path), doc[0], first_line=doc[1], markdown=False)
    for path in sorted(glob.glob(os.path.join(root, "examples", "*.py"))):
        argv = ("python", rel(path))
        found.append(Command(rel(path), 1, " ".join(argv), argv))
    return found


# ---------------------------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------------------------


def _program(argv: tuple[str, ...] | list[str]) -> str:
    """``train.py``, ``-m wtfree.plot``, ``experiments/x.py``, ``make``, ..."""
    if argv[0] == "make":
        return "make"
    if argv[1:2] == ("-m",) or argv[1:2] == ["-m"]:
        return "-m " + argv[2]
    return argv[1] if len(argv) > 1 else ""


def _shorten_flags(program: str) -> tuple[str, ...]:
    for pattern, extra in SHORTEN.items():
        if fnmatch.fnmatch(program, pattern):
            return extra
    return ()


_PATH_FLAGS = ("--workdir", "--out", "--config.init_from")


def _moved(path: str, tmp: str) -> str:
    if "://" in path or path.startswith(tmp):
        return path
    return os.path.join(tmp, path.lstrip("/"))


def _expand_braces(word: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if match is None:
        return [word]
    head, tail = word[: match.start()], word[match.end() :]
    return [w for part in match.group(1).split(",") for w in _expand_braces(head + part + tail)]


def prepare_argv(argv, tmp: str) -> list[str]:
    """``argv`` with brace expansion, its outputs moved under ``tmp``, and shortened."""
    out = [sys.executable if argv[0] in _PYTHONS else argv[0]]
    words = iter(argv[1:])
    for word in words:
        name, eq, value = word.partition("=")
        if name in _PATH_FLAGS and eq:
            out.append(f"{name}={_moved(value, tmp)}")
        elif word in _PATH_FLAGS:
            out += [word, _moved(next(words), tmp)]
        elif word.startswith("runs/"):
            for expanded in _expand_braces(word):
                path = _moved(expanded, tmp)
                out += sorted(glob.glob(path)) or [path] if "*" in path else [path]
        else:
            out += _expand_braces(word)
    return out + list(_shorten_flags(_program(argv)))


def _shell_script(loop: str, tmp: str) -> str:
    """A background loop as bash runs it, its commands prepared as ``prepare_argv`` does (the
    loop's variables left for bash to set), each job's exit code kept."""
    first, *body, last = loop.splitlines()
    lines = [first]
    for line in body:
        words = _split(_OPTIONAL.sub("", line))
        background = words[-1:] == ["&"]
        argv = prepare_argv(words[:-1] if background else words, tmp) if words else []
        lines.append(" ".join(f'"{w}"' if "$" in w else shlex.quote(w) for w in argv))
        lines[-1] += " &" if background else ""
    # bash's `wait` returns 0 whatever its jobs returned: wait for each, keep a failure.
    lines.append(re.sub(r"\bwait\s*$", 'for job in $(jobs -p); do wait "$job" || exit; done', last))
    return "\n".join(lines)


class _Capture:
    """This process's stdout and stderr (the file descriptors) into a file, for a while."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self._file = open(self.path, "ab")  # noqa: SIM115
        os.dup2(self._file.fileno(), 1)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self._file.close()


def _run_logged(argv: list[str], log: str) -> int:
    """Runs ``argv`` with its output appended to ``log``; one that hangs (a cluster that never
    answers) is killed, with its children, after ``SUBPROCESS_TIMEOUT`` seconds: exit 124."""
    with open(log, "ab") as f:
        process = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True
        )
        try:
            return process.wait(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            f.write(f"[documented_commands] killed after {SUBPROCESS_TIMEOUT} s\n".encode())
            return 124


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path)


def _exit_code(code) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


class Runner:
    """Runs commands in order; remembers which train command makes which workdir."""

    def __init__(self):
        self.tmp = ""  # where the current command's file keeps its runs
        self.tiny = ""  # TINY_RUN's workdir
        self.log = os.devnull  # the current command's log
        self.makers: dict[str, list[str]] = {}  # workdir -> the train argv that makes it
        self.swept: set[str] = set()  # the workdirs of the sweeps' runs
        self.notes: list[str] = []

    def say(self, message: str) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"[documented_commands] {message}\n")
        self.notes.append(message)

    # In-process programs.

    def train(self, argv: list[str]) -> int:
        from absl import flags

        import train

        # config_flags defines a flag per override as it parses, reading them from sys.argv.
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()
        saved, sys.argv = sys.argv, ["train.py", *argv[2:]]
        try:
            train.main(train._parse_flags(sys.argv))
        except SystemExit as e:
            return _exit_code(e.code)
        finally:
            sys.argv = saved
        return 0

    def plot(self, argv: list[str]) -> int:
        from wtfree import plot

        args, runs = argv[3:], []
        for i, word in enumerate(args):
            if not word.startswith(self.tmp) or (i > 0 and args[i - 1] == "--out"):
                runs.append(word)
                continue
            paths = [word]
            if "*" in word:  # as bash would expand it had the sweep made all its runs
                made = {w for w in self.makers if fnmatch.fnmatch(w, word)}
                paths = sorted(made | set(glob.glob(word))) or [word]
            for path in paths:
                # A run in a sweep's workdir that the sweep does not list: a name the docs got
                # wrong (a copy of the tiny run would hide it).
                parent = os.path.dirname(path)
                listed = [w for w in self.swept if os.path.dirname(w) == parent]
                if listed and path not in listed:
                    names = ", ".join(sorted(os.path.basename(w) for w in listed))
                    print(f"wtfree.plot: no run {path} in the sweep's list: {names}", flush=True)
                    return 2
                self.ensure_run(path, tiny=True)
            runs += paths
        return plot.main(runs)

    def register_sweep(self, argv: list[str]) -> tuple[int, list[list[str]]]:
        """The sweep's own check and list of runs (``--dry_run``); each run's workdir is
        remembered as made by its train command."""
        from wtfree import sweep

        listing = os.path.join(self.tmp, "sweep_listing.txt")
        with _Capture(listing):
            code = sweep.main([*argv[3:], "--dry_run"])
        with open(listing, encoding="utf-8") as f:
            printed = f.read()
        os.remove(listing)
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(printed)
        runs = [shlex.split(line) for line in printed.splitlines() if "train.py" in line]
        for run in runs:
            workdir = next(w.partition("=")[2] for w in run if w.startswith("--workdir="))
            self.makers[workdir] = [*run, *SHORTEN["train.py"]]
            self.swept.add(workdir)
        return code, runs

    def sweep(self, argv: list[str]) -> int:
        """The sweep's dry run, then its first run, shortened; a later command that reads
        another of its runs gets it made then."""
        code, runs = self.register_sweep(argv)
        if code != 0:
            return code
        self.say(f"the sweep lists {len(runs)} runs; running the first, shortened")
        return self.dispatch([*runs[0], *SHORTEN["train.py"]]) if runs else 1

    def ensure_run(self, workdir: str, tiny: bool = False) -> None:
        """Makes ``workdir`` (or the runs matching it) if no earlier command did."""
        if glob.glob(workdir) if "*" in workdir else os.path.exists(workdir):
            return
        matches = sorted(w for w in self.makers if fnmatch.fnmatch(w, workdir))
        if not tiny and matches:
            self.say(f"making {matches[0]}, read by this command, as its sweep would")
            self.dispatch(self.makers[matches[0]])
            return
        if "*" not in workdir:
            if not os.path.exists(self.tiny):
                self.dispatch([sys.executable, *TINY_RUN, f"--workdir={self.tiny}"])
            self.say(f"{workdir}: a copy of a tiny run stands in (plot reads its metrics.jsonl)")
            shutil.copytree(self.tiny, workdir)

    def subprocess(self, argv: list[str]) -> int:
        if _program(argv).startswith(("experiments/", "-m wtfree.evaluate")):
            for word in argv[2:]:
                if word.startswith(self.tmp):
                    self.ensure_run(word)
            if _program(argv) == "-m wtfree.evaluate":
                workdir = argv[argv.index("--workdir") + 1] if "--workdir" in argv else None
                if workdir:
                    self.ensure_run(workdir)
        return _run_logged(argv, self.log)

    def make(self, argv: list[str]) -> int:
        """A make target: its recipe (``make -n``), each line as a documented command."""
        result = subprocess.run(
            ["make", "-n", "--no-print-directory", "-o", ".venv/.installed", *argv[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            self.say(result.stderr.strip())
            return result.returncode
        for line in result.stdout.splitlines():
            words = shlex.split(line)
            # make's own messages ("make: Nothing to be done", "make[1]: ..." under make test).
            if not words or re.match(r"make(\[\d+\])?:", words[0]):
                continue
            if os.path.basename(words[0]).startswith("python"):
                words[0] = "python"
            code = self.dispatch(prepare_argv(words, self.tmp))
            if code:
                return code
        return 0

    def dispatch(self, argv: list[str]) -> int:
        program = _program(argv)
        self.say(f"$ {shlex.join(argv)}")
        if program == "make":
            return self.make(argv)
        # jax.distributed.initialize() must come before anything else JAX does: its own process.
        alone = any(w.startswith(("--distributed", "--coordinator_address")) for w in argv)
        with _Capture(self.log):
            if program == "train.py" and not alone:
                workdir = next((w for w in argv if w.startswith("--workdir=")), "=")
                self.makers.setdefault(workdir.partition("=")[2], argv)
                return self.train(argv)
            if program == "-m wtfree.plot":
                return self.plot(argv)
            if program == "-m wtfree.sweep":
                return self.sweep(argv)
        return self.subprocess(argv)

    def run(self, command: Command, tmp: str) -> int:
        # Each file's commands share one directory: a file's plot reads its own sweep's runs,
        # and two files that both use runs/x cannot disagree about x.
        self.tmp = os.path.join(tmp, _slug(command.path))
        self.tiny = os.path.join(tmp, "tiny_run")
        os.makedirs(self.tmp, exist_ok=True)
        if command.shell and _HEREDOC.search(command.text.splitlines()[0]):
            first, rest = command.text.split("\n", 1)
            interpreter = shlex.quote(sys.executable)
            script = re.sub(r"^\S*python3?(?= )", lambda m: interpreter, first) + "\n" + rest
            self.say(f"$ {script}")
            return _run_logged(["bash", "-c", script], self.log)
        if command.shell:
            script = _shell_script(command.text, self.tmp)
            self.say(f"$ {script}")
            return _run_logged(["bash", "-c", script], self.log)
        return self.dispatch(prepare_argv(command.argv, self.tmp))


def _last_line(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("[documented_commands]")]
    return lines[-1] if lines else ""


def _result(code, log: str, start: float) -> dict:
    with open(log, encoding="utf-8", errors="replace") as f:
        output = f.read()
    return {
        "exit": code,
        "seconds": round(time.perf_counter() - start, 1),
        "last_line": _last_line(log),
        "traceback": "Traceback (most recent call last)" in output,
        "tail": output[-4000:],
    }


def main(argv: list[str]) -> int:
    results_path, tmp, *ids = argv
    wanted = set(ids)
    results = {}
    runner = Runner()
    passed: dict[tuple[str, ...], str] = {}  # a command as written -> the first id that passed
    for command in discover():
        if wanted and command.id not in wanted:
            continue
        log = os.path.join(tmp, "logs", f"{len(results):03d}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        runner.log = log
        start = time.perf_counter()
        # The same train or sweep command in another file: running it again proves nothing
        # (a later command of this file that reads its runs gets them made).
        same = ("python", *command.argv[1:]) if not command.shell else (command.text,)
        if same in passed and _program(command.argv) in ("train.py", "-m wtfree.sweep"):
            runner.say(f"the same command as {passed[same]}, which passed")
            code = 0
            if _program(command.argv) == "-m wtfree.sweep":  # its runs, for later commands
                runner.tmp = os.path.join(tmp, "work", _slug(command.path))
                os.makedirs(runner.tmp, exist_ok=True)
                runner.register_sweep(prepare_argv(command.argv, runner.tmp))
            results[command.id] = _result(0, log, start)
            continue
        try:
            code = runner.run(command, os.path.join(tmp, "work"))
        except Exception as e:  # a traceback in this process: the command failed
            import traceback

            with open(log, "a", encoding="utf-8") as f:
                traceback.print_exc(file=f)
            code = f"{type(e).__name__}: {e}"
        results[command.id] = _result(code, log, start)
        if code == 0 and not results[command.id]["traceback"]:
            passed.setdefault(same, command.id)
        with open(results_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    sys.exit(main(sys.argv[1:]))
