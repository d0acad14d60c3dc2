"""Random in-memory images registered under the real dataset names, the way a user registers a
dataset (`wtfree.data.register`): tests train without TFDS's files and through every real check."""

import contextlib
import functools

from wtfree import data


@contextlib.contextmanager
def synthetic_images(num_examples: int = 256, seed: int = 0):
    """Within the block, every image dataset is ``num_examples`` random examples per split."""
    with contextlib.ExitStack() as stack:
        for name in data.image_datasets():
            make = functools.partial(data.synthetic, name, num_examples, seed)
            stack.enter_context(data.registered(name, make))
        yield
