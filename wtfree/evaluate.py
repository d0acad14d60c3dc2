r"""Evaluates a run's checkpoint on the test set; prints and writes the metrics.

    python -m wtfree.evaluate --workdir runs/mnist_kp [--step 4680]

The model, data and rule come from the run's own ``config.json``; the result is printed as JSON
and written to ``WORKDIR/eval_<step>.json``.
"""

import json
import sys

from absl import app, flags

from wtfree import errors, logs, loop

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")


def main(argv: list[str]) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logs.quiet()
    if _STEP.value is not None and _STEP.value < 0:
        print(f"wtfree.evaluate: error: --step={_STEP.value}; allowed: >= 0", file=sys.stderr)
        sys.exit(2)
    try:
        result = loop.evaluate_checkpoint(_WORKDIR.value, _STEP.value)
    except (errors.RunError, ValueError) as e:
        print(f"wtfree.evaluate: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
