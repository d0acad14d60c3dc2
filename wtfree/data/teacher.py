"""Regression data made in memory: random inputs and a fixed random linear teacher T."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from wtfree.data import core

NAME = "linear_teacher"


class LinearTeacher(core.Dataset):
    r"""Inputs :math:`x \sim \mathcal{N}(0, I_d)` and targets :math:`y^* = T x + \sigma\epsilon`.

    T (``outputs x inputs``) has entries uniform in :math:`[-1, 1]`, as in Lillicrap et al.'s
    linear task; :math:`\epsilon \sim \mathcal{N}(0, I)`. Everything is drawn once from
    ``seed``, so the same seed gives the same teacher and the same examples on every process
    and every run. Batches are ``{"image": float32 [B, inputs], "label": float32 [B, outputs]}``
    (the train loop's keys), so every model that flattens its input takes them.

    Attributes:
      teacher: T, float64 ``[outputs, inputs]``.
      num_classes: the number of outputs (the model's output width).
      image_shape: ``(inputs,)``.

    References:
      Lillicrap, Cownden, Tweed & Akerman, Nature Communications 2016 (Fig. 1d and Methods:
      a 30-20-10 linear network learning a random linear map).
    """

    def __init__(
        self,
        inputs: int = 30,
        outputs: int = 10,
        train_examples: int = 10000,
        test_examples: int = 1000,
        noise_std: float = 0.0,
        seed: int = 0,
    ):
        for key, value in (
            ("inputs", inputs),
            ("outputs", outputs),
            ("train_examples", train_examples),
            ("test_examples", test_examples),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{NAME}: {key}={value!r}; must be a positive integer")
        if noise_std < 0:
            raise ValueError(f"{NAME}: noise_std={noise_std!r}; must be >= 0")
        super().__init__(NAME, core.Spec(outputs, (inputs,)))
        rng = np.random.default_rng([seed, 0x7EAC])
        self.teacher = rng.uniform(-1.0, 1.0, (outputs, inputs))
        self._arrays = {
            split: self._draw(rng, n, noise_std)
            for split, n in (("train", train_examples), ("test", test_examples))
        }

    def _draw(self, rng: np.random.Generator, n: int, noise_std: float):
        x = rng.standard_normal((n, self.image_shape[0]))
        y = x @ self.teacher.T + noise_std * rng.standard_normal((n, self.num_classes))
        return x.astype(np.float32), y.astype(np.float32)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs float32 [N, d], targets float32 [N, outputs]) of "train" or "test"."""
        if split not in self._arrays:
            raise ValueError(f"split={split!r} not in {sorted(self._arrays)}")
        return self._arrays[split]

    def num_examples(self, split: str) -> int:
        return len(self.arrays(split)[0])

    def train_batches(
        self,
        global_batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        augment: bool = False,
    ) -> Iterator[core.Batch]:
        if augment:
            raise ValueError(f"augment=True is not implemented for {NAME}")
        local = core.local_batch_size(global_batch_size, process_index, process_count)
        x, y = self.arrays("train")
        if global_batch_size > len(x):
            raise ValueError(f"global_batch_size={global_batch_size} > {len(x)} examples")
        return self._iterate(x, y, global_batch_size, seed, start_step, process_index, local)

    @staticmethod
    def _iterate(x, y, global_batch_size, seed, step, process_index, local):
        while True:
            idx = core.train_step_indices(
                len(x), global_batch_size, seed, step, process_index, local
            )
            yield {"image": x[idx], "label": y[idx]}
            step += 1

    def eval_batches(
        self,
        split: str = "test",
        global_batch_size: int = 1024,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[core.Batch]:
        local = core.local_batch_size(global_batch_size, process_index, process_count)
        x, y = self.arrays(split)
        for idx, mask in core.eval_positions(len(x), global_batch_size, process_index, local):
            keep = mask[:, None] > 0
            yield {"image": x[idx] * keep, "label": y[idx] * keep, "mask": mask}


def make(**options) -> LinearTeacher:
    """`LinearTeacher` from the config's ``dataset_kwargs``; a wrong option is one line."""
    try:
        return LinearTeacher(**options)
    except TypeError as e:  # an unknown option
        raise ValueError(f"{NAME}: {e}") from None


def check(**options) -> None:
    """The options' names and values (the data is made in memory: nothing else to check)."""
    make(**options)


core.register(NAME, make, check)
