r"""Train your own NNX model by a learning rule: a stock MLP converted by ``wtfree.nnx.convert``.

    python examples/nnx_own_model.py              # fa, 200 steps, about 10 s on 2 CPU cores
    python examples/nnx_own_model.py kp 100       # any rule but dfa, dfa_block and settling rules
    python examples/nnx_own_model.py sa 100       # an alignment rule: B trained by its loss

One train step serves every rule: the weight mirror's step (it moves wm's B, and does nothing
for other rules) and the alignment losses added to the task loss (none for other rules).

The data are synthetic (64-dimensional inputs labelled by a fixed random teacher), so the
example runs anywhere in seconds; pass your own arrays to ``main``.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import wtfree


class MLP(nnx.Module):
    """A model written with stock NNX layers only; nothing in it knows about wtfree."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 64, rngs=rngs)
        self.output = nnx.Linear(64, 4, rngs=rngs)

    def __call__(self, x):
        return self.output(nnx.relu(self.hidden(x)))


def synthetic_data(n: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and the labels a fixed random linear teacher gives them."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(n, 64)).astype(np.float32)
    labels = np.argmax(inputs @ rng.normal(size=(64, 4)), axis=1)
    return inputs, labels


def main(rule: str = "fa", steps: int = 200, inputs=None, labels=None) -> float:
    """Trains ``MLP`` by ``rule`` and returns the final training accuracy."""
    if inputs is None:
        inputs, labels = synthetic_data()
    model = wtfree.nnx.convert(MLP(nnx.Rngs(0)), rule, rngs=1)
    wrt = wtfree.nnx.trainable(model)  # W, and B where the optimizer trains it (kp, sa, ...)
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=wrt)

    def task_loss(model, x, y):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # sa, aa, ia, wm_reg: B's alignment loss is added; the task loss gives B nothing.
    loss_fn = wtfree.nnx.with_alignment_loss(task_loss, wtfree.Alignment())

    @nnx.jit
    def train_step(model, optimizer, x, y, rng):
        wtfree.nnx.mirror_step(model, (x,), rng, wtfree.Mirror())  # wm: B moves in place
        grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model, x, y)
        optimizer.update(model, grads)
        return task_loss(model, x, y)

    def accuracy():
        return float(jnp.mean(jnp.argmax(model(inputs), -1) == labels))

    print(f"{rule}: accuracy {accuracy():.3f} before training")
    for step in range(steps):
        idx = np.random.default_rng(step).choice(len(inputs), 64, replace=False)
        loss = train_step(model, optimizer, inputs[idx], labels[idx], jax.random.key(step))
    final = accuracy()
    print(f"{rule}: accuracy {final:.3f} after {steps} steps, loss {float(loss):.3f}")
    return final


if __name__ == "__main__":
    main(*[f(a) for f, a in zip((str, int), sys.argv[1:], strict=False)])
