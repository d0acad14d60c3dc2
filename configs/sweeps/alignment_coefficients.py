r"""Each alignment rule's coefficients one at a time over a 10x range, on the seed MLP.

    python -m wtfree.sweep configs/sweeps/alignment_coefficients.py --workdir runs/coefficients

For every rule of wtfree.rules.alignment (ia, wm_reg, sa, aa) and each of its coefficients
(alpha, beta and, for ia, gamma), a run with that coefficient at 1/sqrt(10) and at sqrt(10)
times the authors' default (a 10x range around it), the others at their defaults; plus one run
per rule at the defaults. configs/mnist_mlp.py (sigmoid 784-500-10, plain SGD at 0.2), 5 epochs
each: 22 runs of about a minute on a quiet 2-core CPU. Run names are
``<rule>-<coefficient>x<factor>`` and ``<rule>-default``. README ("Alignment rules") has the
measured accuracies and angles, and how IA's spread across the range compares with wm_reg's.
"""

import math

from wtfree.rules import alignment

# IA and wm_reg first: their comparison is the point of the sweep.
RULES = ("ia", "wm_reg", "sa", "aa")
FACTORS = (1 / math.sqrt(10), math.sqrt(10))
EPOCHS = 5


def get_sweep() -> list[dict]:
    runs = []
    for rule in RULES:
        spec = alignment.ALIGNMENTS[rule]
        config = f"configs/mnist_mlp.py:rule={rule}"
        runs.append(
            {"config": config, "overrides": {"num_epochs": EPOCHS}, "name": f"{rule}-default"}
        )
        for coefficient, default in spec.defaults.items():
            for factor in FACTORS:
                runs.append(
                    {
                        "config": config,
                        "overrides": {
                            "num_epochs": EPOCHS,
                            f"alignment.coefficients.{rule}.{coefficient}": default * factor,
                        },
                        "name": f"{rule}-{coefficient}x{factor:.2f}",
                    }
                )
    return runs
