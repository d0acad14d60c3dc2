r"""Train your own linen model by a learning rule: a stock CNN converted by ``wtfree.convert``.

    python examples/linen_own_model.py            # kp, 200 steps, about 20 s on 2 CPU cores
    python examples/linen_own_model.py fa 100     # any rule, any number of steps

The data are synthetic (8x8 one-channel images labelled by a fixed random teacher network), so
the example runs anywhere in seconds; pass your own arrays to ``main``.
"""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import wtfree


class CNN(nn.Module):
    """A model written with stock Flax layers only; nothing in it knows about wtfree."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(32, name="hidden")(x))
        return nn.Dense(4, name="output")(x)


def synthetic_data(n: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images and the labels a fixed random network gives them."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    teacher = rng.normal(size=(64, 4)).astype(np.float32)
    labels = np.argmax(images.reshape(n, -1) @ teacher, axis=1)
    return images, labels


def cross_entropy(logits, batch):
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


def main(rule: str = "kp", steps: int = 200, images=None, labels=None) -> float:
    """Trains ``CNN`` by ``rule`` and returns the final training accuracy."""
    if images is None:
        images, labels = synthetic_data()
    model = wtfree.convert(CNN(), rule)
    variables = model.init(jax.random.key(0), images[:1])
    tx = wtfree.optimizer(optax.sgd(0.05, momentum=0.9), variables)
    state = wtfree.init_train_state(variables, tx)
    train_step = jax.jit(wtfree.make_train_step(model, tx, cross_entropy))

    def accuracy(state):
        logits = model.apply(state["variables"], images)
        return float(jnp.mean(jnp.argmax(logits, -1) == labels))

    print(f"{rule}: accuracy {accuracy(state):.3f} before training")
    rng = jax.random.key(1)
    for step in range(steps):
        idx = np.random.default_rng(step).choice(len(images), 64, replace=False)
        batch = {"image": images[idx], "label": labels[idx]}
        state, measurements = train_step(state, batch, jax.random.fold_in(rng, step))
    final = accuracy(state)
    print(f"{rule}: accuracy {final:.3f} after {steps} steps, loss {measurements['loss']:.3f}")
    return final


if __name__ == "__main__":
    main(*[f(a) for f, a in zip((str, int), sys.argv[1:], strict=False)])
