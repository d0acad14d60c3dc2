r"""Lillicrap et al. 2016's MNIST network (configs/lillicrap_mnist.py) under bp, fa and shallow.

    python -m wtfree.sweep configs/sweeps/lillicrap_mnist.py --workdir runs/lillicrap_mnist
    python -m wtfree.plot runs/lillicrap_mnist/{bp,fa,shallow} --out docs/lillicrap_mnist.png

Three runs of 20 epochs each. Measured results (and time per epoch) are in docs/seed_papers.md.
"""

RULES = ("bp", "fa", "shallow")


def get_sweep() -> list[dict]:
    return [{"config": f"configs/lillicrap_mnist.py:rule={rule}", "name": rule} for rule in RULES]
