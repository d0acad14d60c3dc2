r"""Lillicrap et al. 2016's linear task (configs/lillicrap_linear.py) under bp, fa and shallow,
and fa with B drawn as large as the paper's (U[-0.5, 0.5]: `feedback_scale=4.1`).

    python -m wtfree.sweep configs/sweeps/lillicrap_linear.py --workdir runs/lillicrap_linear
    python -m wtfree.plot runs/lillicrap_linear/{bp,fa,shallow,fa_b4} \
        --out docs/lillicrap_linear.png

Four runs of 5000 steps (batch 10), 4-6 s each on 2 CPU cores. Measured results are in
docs/seed_papers.md.
"""

RULES = ("bp", "fa", "shallow")


def get_sweep() -> list[dict]:
    runs = [{"config": f"configs/lillicrap_linear.py:rule={rule}", "name": rule} for rule in RULES]
    runs.append(
        {
            "config": "configs/lillicrap_linear.py:rule=fa",
            "overrides": {"model_kwargs.feedback_scale": 4.1},
            "name": "fa_b4",
        }
    )
    return runs
