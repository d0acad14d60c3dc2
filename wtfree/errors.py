"""The ways a run stops on purpose: one line for the user, and the exit code that goes with it."""


class RunError(Exception):
    """A run (or a command) stopped for a reason its message says in one line: bad input, a
    workdir of another experiment or in use, no readable checkpoint. Exit code 2."""

    exit_code = 2


class Diverged(RunError):
    """The training loss became NaN or infinite. Exit code 3."""

    exit_code = 3


class StorageFull(RunError):
    """The disk (or bucket quota) filled up while the run wrote to its workdir. Exit code 4:
    free space and rerun; the run resumes from its last good checkpoint."""

    exit_code = 4


def one_line(error: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters (orbax's and
    tensorstore's messages run over many lines)."""
    text = " ".join(str(error).strip().split("\n")[0].split())
    # TensorStore appends its whole spec ("See full TensorStore details: ..."): not for a person.
    text = text.split(" See full TensorStore details")[0]
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
