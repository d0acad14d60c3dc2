r"""Song, Xu & Lafferty 2021: FA on an over-parameterized two-layer network
(configs/song_two_layer.py) across the L2 coefficient.

    python -m wtfree.sweep configs/sweeps/song_l2.py --workdir runs/song_l2
    python -m wtfree.plot runs/song_l2/l2_* --out docs/song_l2.png

Runs l2_{0,0.03,0.1,0.3,1}: `optimizer.weight_decay` lambda in {0, 0.03, 0.1, 0.3, 1}, 5000
full-batch steps each. The alignment is `align/weight_cosine/output`, cos(B, W) of the second
layer; measured results are in docs/seed_papers.md.
"""

L2 = (0.0, 0.03, 0.1, 0.3, 1.0)


def get_sweep() -> list[dict]:
    return [
        {
            "config": "configs/song_two_layer.py",
            "overrides": {"optimizer.weight_decay": l2},
            "name": f"l2_{l2:g}",
        }
        for l2 in L2
    ]
