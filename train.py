r"""Trains and evaluates a model with a learning rule, as configured.

    python train.py --config=configs/mnist_mlp.py:rule=kp --workdir=runs/mnist_kp \
        [--config.num_epochs=20 --config.optimizer.learning_rate=0.3 ...]

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from wtfree import config_lib, errors, logs, loop

_WORKDIR = flags.DEFINE_string("workdir", None, "Where logs and checkpoints go.", required=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first: one process per host. With no other flag it "
    "detects the cluster itself (TPU pods, SLURM, Open MPI, GKE).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (implies --distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in all (with --coordinator_address)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (with --coordinator_address)."
)
config_flags.DEFINE_config_file(
    "config", None, "A config file, with an optional :arg.", lock_config=True
)


def _fail(message: str, exit_code: int = 2) -> None:
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag, config file, :arg or override is one line and exit 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, ValueError, KeyError, AttributeError, TypeError) as e:
        message = str(e)
        if isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):
            e = e.args[0]  # how ml_collections reports some misspelled overrides
        if isinstance(e, KeyError) and e.args:  # a misspelled override of the locked config
            message = f"unknown config key {e.args[0]}"
        if "Traceback" in message:  # a config file's own error, wrapped by config_flags
            message = message.strip().splitlines()[-1]
        _fail(" ".join(message.split()) or type(e).__name__)
    return []


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    if _DISTRIBUTED.value or _COORDINATOR.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    config = flags.FLAGS.config
    if not flags.FLAGS["verbosity"].present:
        logs.quiet()
    try:
        config_lib.validate(config)
        config_lib.validate_resources(config)
    except ValueError as e:
        _fail(str(e))
    logs.say(f"Config:\n{config}")
    try:
        loop.train_and_evaluate(config, _WORKDIR.value)
    except errors.RunError as e:  # a bad workdir, no readable checkpoint, a diverged run
        _fail(str(e), e.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
