r"""Lillicrap et al. 2016's MNIST network (configs/lillicrap_mnist.py) under bp, fa and shallow,
and fa with B drawn 9x larger (`feedback_scale=9`: std 0.28, that of U[-0.5, 0.5]).

    python -m wtfree.sweep configs/sweeps/lillicrap_mnist.py --workdir runs/lillicrap_mnist
    python -m wtfree.plot runs/lillicrap_mnist/{bp,fa,shallow,fa_b9} \
        --out docs/lillicrap_mnist.png

Four runs of 20 epochs, about 2 minutes each on 2 loaded CPU cores. Measured results are in
docs/seed_papers.md.
"""

RULES = ("bp", "fa", "shallow")


def get_sweep() -> list[dict]:
    runs = [{"config": f"configs/lillicrap_mnist.py:rule={rule}", "name": rule} for rule in RULES]
    runs.append(
        {
            "config": "configs/lillicrap_mnist.py:rule=fa",
            "overrides": {"model_kwargs.feedback_scale": 9.0},
            "name": "fa_b9",
        }
    )
    return runs
