r"""configs/lillicrap_mnist.py under bp, fa and shallow with heavy-ball momentum 0.9.

    python -m wtfree.sweep configs/sweeps/lillicrap_mnist_momentum.py \
        --workdir runs/lillicrap_mnist_momentum
    python -m wtfree.plot runs/lillicrap_mnist_momentum/{bp,fa,shallow} \
        --out docs/lillicrap_mnist_momentum.png

The paper's plain SGD needs hundreds of epochs for FA to catch up with bp; this variant takes
larger effective steps (learning rate 0.05 with momentum 0.9, i.e. 0.5 at equilibrium, the same
for every rule) so that 20 epochs get further. Measured results are in docs/seed_papers.md.
"""

RULES = ("bp", "fa", "shallow")


def get_sweep() -> list[dict]:
    return [
        {
            "config": f"configs/lillicrap_mnist.py:rule={rule}",
            "overrides": {"optimizer.momentum": 0.9, "optimizer.learning_rate": 0.05},
            "name": rule,
        }
        for rule in RULES
    ]
