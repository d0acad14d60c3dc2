r"""Train your own NNX model by a learning rule: a stock MLP converted by ``wtfree.nnx.convert``.

    python examples/nnx_own_model.py              # fa, 200 steps, about 10 s on 2 CPU cores
    python examples/nnx_own_model.py kp 100       # bp, fa, usf, frsf, brsf, kp or shallow

The data are synthetic (64-dimensional inputs labelled by a fixed random teacher), so the
example runs anywhere in seconds; pass your own arrays to ``main``.
"""

import sys

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
    wrt = wtfree.nnx.trainable(model)  # W, and B where the rule trains it with W (kp)
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=wrt)

    def loss_fn(model, x, y):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model, x, y)
        optimizer.update(model, grads)
        return loss

    def accuracy():
        return float(jnp.mean(jnp.argmax(model(inputs), -1) == labels))

    print(f"{rule}: accuracy {accuracy():.3f} before training")
    for step in range(steps):
        idx = np.random.default_rng(step).choice(len(inputs), 64, replace=False)
        loss = train_step(model, optimizer, inputs[idx], labels[idx])
    final = accuracy()
    print(f"{rule}: accuracy {final:.3f} after {steps} steps, loss {float(loss):.3f}")
    return final


if __name__ == "__main__":
    main(*[f(a) for f, a in zip((str, int), sys.argv[1:], strict=False)])
