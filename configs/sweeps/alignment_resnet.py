r"""The alignment rules (sa, aa, ia, wm_reg) on ResNet-8 / Fashion-MNIST, 5 epochs each.

    python -m wtfree.sweep configs/sweeps/alignment_resnet.py --workdir runs/resnet_align

configs/fashion_mnist_resnet.py (bp's recipe: SGD momentum 0.9 at 0.1 with cosine decay, batch
128, weight decay 5e-4 on W; B of these rules gets none, its loss has its own decay). Runs:

- ``<rule>_default``: the authors' default coefficients, B stepped at W's rate
  (``alignment.learning_rate_scale`` 1) and the conv primitives summed over output positions
  (``alignment.positions=sum``): the authors' settings.
- ``<rule>_s10_mean``: the same coefficients, B's step size 10 times W's and the primitives
  that read x averaged over a conv's positions. 10 comes from the budget, not from accuracy:
  SA's B relaxes to its minimum by :math:`2\alpha s\eta_t/(1-\mu)` a step, which momentum
  cannot speed past critical damping, :math:`2\alpha s\eta = (1-\sqrt\mu)^2` (s = 13.2 here);
  the largest round s below it, 10, shrinks B's distance from its minimum by
  :math:`\exp(-2\alpha s\sum_t\eta_t/(1-\mu)) = e^{-23}` over the run (at s = 1: e^-2.3, and
  by 0.02 a step at the peak rate instead of 0.002). With s = 10 and summed positions, AA's
  curvature on the first stage (784 positions) times the rate would pass heavy ball's
  stability limit :math:`2(1+\mu)` for any input-covariance eigenvalue above ~1, hence ``mean``.
- ``<rule>_alpha_x<f>_s10_mean`` for ia and wm_reg: alpha at 1/sqrt(10) and sqrt(10) times its
  default (a 10x range), as ``<rule>_s10_mean`` otherwise: their stability across coefficients.

- ``sa_s10_mean_seed<n>`` and ``aa_default_seed<n>`` (n = 1, 2): seeds 1 and 2 of the two
  candidates for the targets (seed 0 is the run without the suffix).
- ``sa_s5000_m0`` (and ``_seed<n>``): SA with B's own momentum 0 (``alignment.momentum``) and
  s = 5000, so that :math:`2\alpha s\eta = 1` at the peak rate: plain SGD puts B on its
  minimum (W) every step, where heavy ball at s = 10 leaves it ~40 steps behind.

README ("Alignment rules", ResNet-8) has the measured accuracies and angles; each run takes 3-5
minutes with a 2-core machine to itself.
"""

import math

from wtfree.rules import alignment

RULES = ("sa", "aa", "ia", "wm_reg")
SCALE = 10.0
FASHION_MNIST_IDX = "/usr/share/datasets/fashion-mnist"
FACTORS = (1 / math.sqrt(10), math.sqrt(10))


def _run(rule: str, name: str, **overrides) -> dict:
    return {
        "config": f"configs/fashion_mnist_resnet.py:rule={rule}",
        "overrides": {"idx_dir": FASHION_MNIST_IDX, **overrides},
        "name": name,
    }


def get_sweep() -> list[dict]:
    fast = {"alignment.learning_rate_scale": SCALE, "alignment.positions": "mean"}
    runs = [_run(rule, f"{rule}_default") for rule in RULES]
    runs += [_run(rule, f"{rule}_s{SCALE:g}_mean", **fast) for rule in RULES]
    for seed in (1, 2):
        runs.append(_run("sa", f"sa_s{SCALE:g}_mean_seed{seed}", **fast, seed=seed))
        runs.append(_run("aa", f"aa_default_seed{seed}", seed=seed))
    no_momentum = {"alignment.learning_rate_scale": 5000.0, "alignment.momentum": 0.0}
    runs.append(_run("sa", "sa_s5000_m0", **no_momentum))
    runs += [_run("sa", f"sa_s5000_m0_seed{seed}", **no_momentum, seed=seed) for seed in (1, 2)]
    for rule in ("ia", "wm_reg"):
        alpha = alignment.ALIGNMENTS[rule].defaults["alpha"]
        for factor in FACTORS:
            key = f"alignment.coefficients.{rule}.alpha"
            name = f"{rule}_alpha_x{factor:.2f}_s{SCALE:g}_mean"
            runs.append(_run(rule, name, **fast, **{key: alpha * factor}))
    return runs
