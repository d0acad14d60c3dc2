r"""Kolen-Pollack on the residual net (configs/fashion_mnist_resnet.py) as its weight decay grows.

    python -m wtfree.sweep configs/sweeps/fashion_mnist_resnet_kp_decay.py --workdir runs/fmr_kp
    python -m wtfree.plot runs/fmr_kp/kp_wd* --out runs/fmr_kp/report.png

Produces runs/fmr_kp/kp_wd{0.002,0.005,0.01}: KP with optimizer.weight_decay (the same decay
for W and B, Akrout et al. 2019's matched decay) in {2e-3, 5e-3, 1e-2}, 5 epochs each on
Fashion-MNIST, as long as the comparison, whose kp runs (runs/fmr/kp_s{0,1,2}) are the 5e-4
point; and runs/fmr_kp/bp_wd0.005, backprop at 5e-3, since the decay regularizes W too.
KP's matched updates leave B - W untouched and only the decay shrinks it, by a factor
(1 - lr * decay / (1 - momentum)) a step, so over a run it falls to about
exp(-decay * sum(lr) / (1 - momentum)); README ("A residual net on Fashion-MNIST") has the
measured angles next to that prediction.
"""

WEIGHT_DECAYS = (2e-3, 5e-3, 1e-2)
CONTROL_DECAY = 5e-3  # bp's run
FASHION_MNIST_IDX = "/usr/share/datasets/fashion-mnist"


def get_sweep() -> list[dict]:
    runs = [("kp", decay) for decay in WEIGHT_DECAYS] + [("bp", CONTROL_DECAY)]
    return [
        {
            "config": f"configs/fashion_mnist_resnet.py:rule={rule}",
            "overrides": {"idx_dir": FASHION_MNIST_IDX, "optimizer.weight_decay": decay},
            "name": f"{rule}_wd{decay:g}",
        }
        for rule, decay in runs
    ]
