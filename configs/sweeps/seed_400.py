r"""The seed's full log: configs/mnist_mlp.py for the seed's 400 epochs, each of its four rules.

    python -m wtfree.sweep configs/sweeps/seed_400.py --workdir runs/seed_400

Produces runs/seed_400/{bp,fa,wm,kp}, each a train.py workdir whose metrics.jsonl has the test
accuracy after every epoch and, logged at every epoch's end (468 steps), the output layer's
angle between B and W and the hidden layer's angle to backprop's error: the quantities of the
seed's experiments/mnist/<rule>-V0/results.json (its "weight_angles"/"layer_1" and
"delta_angles"/"layer_1"). docs/results_mnist_mlp.md ("The seed's full log") compares them at
epochs 1, 10, 100 and 400 (`python experiments/seed_log.py runs/seed_400`).
A run took 16-28 minutes on a shared 2-core CPU (load 3-10).
"""

RULES = ("bp", "fa", "wm", "kp")
EPOCHS = 400
STEPS_PER_EPOCH = 60000 // 128


def get_sweep() -> list[dict]:
    return [
        {
            "config": f"configs/mnist_mlp.py:rule={rule}",
            "overrides": {
                "num_epochs": EPOCHS,
                "log_every_steps": STEPS_PER_EPOCH,
                "checkpoint_every_steps": 20 * STEPS_PER_EPOCH,
            },
            "name": rule,
        }
        for rule in RULES
    ]
