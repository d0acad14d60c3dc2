r"""The alignment rules on the seed and modern MLPs with noise as the alignment losses' input.

    python -m wtfree.sweep configs/sweeps/alignment_noise.py --workdir runs/alignment_noise

As configs/sweeps/alignment_rules.py's ``seed_<rule>`` and ``modern_<rule>`` runs
(configs/mnist_mlp.py, 20 epochs; configs/mnist_mlp_modern.py, 15 epochs; the authors' default
coefficients), but each layer's alignment loss is fed unit-variance
Gaussian noise (``alignment.input=normal``, ``alignment.input_std=1``: the authors'
``input_distribution`` / ``input_stddev`` flags; their default is the layer's own input).
With white noise the input covariance C in the losses' minima is I, so every direction of B
converges at the same rate instead of only the leading directions of the activations'
covariance. README ("Alignment rules") has the measured numbers.
"""

# sa is left out: its loss (decay, self) does not read the input.
RULES = ("aa", "ia", "wm_reg")


def get_sweep() -> list[dict]:
    noise = {"alignment.input": "normal", "alignment.input_std": 1.0}
    runs = [
        {
            "config": f"configs/mnist_mlp.py:rule={rule}",
            "overrides": {"num_epochs": 20, **noise},
            "name": f"seed_{rule}_noise",
        }
        for rule in RULES
    ]
    runs += [
        {
            "config": f"configs/mnist_mlp_modern.py:rule={rule}",
            "overrides": noise,
            "name": f"modern_{rule}_noise",
        }
        for rule in RULES
    ]
    return runs
