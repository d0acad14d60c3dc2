r"""Lillicrap et al. 2016's linear task (configs/lillicrap_linear.py) under bp, fa and shallow.

    python -m wtfree.sweep configs/sweeps/lillicrap_linear.py --workdir runs/lillicrap_linear
    python -m wtfree.plot runs/lillicrap_linear/{bp,fa,shallow} --out docs/lillicrap_linear.png

Three runs of 5000 steps (batch 10), each about 20 s on 2 CPU cores. Measured results are in
docs/seed_papers.md.
"""

RULES = ("bp", "fa", "shallow")


def get_sweep() -> list[dict]:
    return [{"config": f"configs/lillicrap_linear.py:rule={rule}", "name": rule} for rule in RULES]
