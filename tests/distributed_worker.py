"""A tiny training run under mock data, for the multi-device, multi-process and SIGTERM tests.

    python tests/distributed_worker.py --workdir W --rule kp --steps 8 --local_devices 2 \
        [--num_processes 2 --process_id 0 --coordinator 127.0.0.1:PORT] [--out params.npz]

After training, every process restores the final checkpoint; process 0 writes its arrays to
``--out``.
"""

import argparse
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rule", default="kp")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--local_devices", type=int, default=1)
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--checkpoint_every", type=int, default=4)
    parser.add_argument("--out", default=None)
    parser.add_argument("--prepare_log", default=None, help="log when each process prepares data")
    args = parser.parse_args()

    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_num_cpu_devices", args.local_devices)
    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    import numpy as np
    import tensorflow_datasets as tfds

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from tests.test_train import tiny_config
    from wtfree import checkpoints, data, logs, loop
    from wtfree import trainer as trainer_lib

    logs.quiet()
    if args.prepare_log:
        # A slow preparation that says when it runs: process 0's must end before others start.
        def prepare(self):
            import time

            for event in ("start", "end"):
                with open(args.prepare_log, "a") as f:
                    f.write(f"{event} {jax.process_index()}\n")
                time.sleep(0.5 if event == "start" else 0)

        data.ArrayDataset.prepare = prepare
    config = tiny_config(
        args.rule,
        num_devices=None,
        batch_size=16,
        num_train_steps=args.steps,
        checkpoint_every_steps=args.checkpoint_every,
        log_every_steps=2,
        eval_every_steps=10**9,
    )
    with tfds.testing.mock_data(num_examples=256, policy=tfds.testing.MockPolicy.USE_CODE):
        loop.train_and_evaluate(config, args.workdir)
        trainer = trainer_lib.Trainer(config)
    with checkpoints.make_manager(args.workdir) as manager:
        state = checkpoints.restore(manager, trainer.abstract_state)
    if args.out and jax.process_index() == 0:
        leaves = jax.tree_util.tree_leaves_with_path(state)
        arrays = {jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in leaves}
        np.savez(args.out, **arrays)
    print(f"worker {jax.process_index()} done at step {int(state['step'])}", flush=True)


if __name__ == "__main__":
    main()
