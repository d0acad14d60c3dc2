"""The Trainer: a run's data, model, optimizer, jitted steps and initial state, from its config."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from wtfree import config_lib, data, dispatch, kinds, models, optim, rules, sharding, steps
from wtfree.steps import State


def make_model(config: ml_collections.ConfigDict, num_classes: int):
    """The configured model for ``num_classes`` outputs, with every name checked."""
    rules.get(config.rule)
    if config.get("output_rule"):
        rules.get(config.output_rule)
    kwargs = dict(config.get("model_kwargs", {}))
    # The kinds' options as values (the mirror noise's distribution, the alignment losses'
    # input), each from its kind's section: wtfree.convert's options for a stock model, the
    # fields of the same names of wtfree's own.
    for kind in kinds.registered():
        kwargs.update(kind.convert_options(config))
    dtype = jnp.dtype(config.get("dtype", "float32"))
    return models.get(config.model)(
        num_classes=num_classes,
        rule=config.rule,
        output_rule=config.get("output_rule") or None,
        dtype=dtype,
        **kwargs,
    )


def make_optimizer(config, steps_per_epoch: int, total_steps: int, trained_feedback):
    opt = config.optimizer
    schedule = optim.make_schedule(
        opt.schedule,
        opt.learning_rate,
        total_steps=total_steps,
        warmup_steps=int(opt.get("warmup_epochs", 0) * steps_per_epoch),
        boundaries=tuple(opt.get("boundaries", ())),
    )
    tx = optim.make_optimizer(
        schedule,
        trained_feedback,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay,
        alignment_scale=config.get("alignment", {}).get("learning_rate_scale", 1.0),
        alignment_momentum=_alignment_momentum(config),
        # None (unset): the kernels; a resumed workdir's recorded mask is set in its place
        # (workdir.keep_recorded_defaults).
        weight_decay_mask=opt.get("weight_decay_mask") or "kernels",
    )
    return tx, schedule


def _alignment_momentum(config) -> float | None:
    """``config.alignment.momentum``; None (W's) where it is absent or negative."""
    momentum = config.get("alignment", {}).get("momentum", -1.0)
    return None if momentum < 0 else momentum


def uses_feedback(config: ml_collections.ConfigDict, kind: str) -> bool:
    """Whether a layer of the configured model learns its B in the way ``kind`` says
    (``rules.MIRROR``: by mirror batches; ``rules.LOSS``: by an alignment loss)."""
    return kind in rules.feedback_kinds(config.rule, config.get("output_rule"))


def used_kinds(config: ml_collections.ConfigDict) -> list[kinds.Kind]:
    """The kinds (``wtfree.kinds``) of the configured rule and output rule, in name order."""
    return [
        kinds.get(name)
        for name in sorted(rules.feedback_kinds(config.rule, config.get("output_rule")))
    ]


def _normalizing(ds: data.Dataset, step):
    """``step(state, batch, ...)`` that first normalizes a batch of uint8 images on the device
    (``ds.normalize``); float images (other datasets, eval batches) pass as they are."""

    def normalizing(state, batch, *args):
        if batch["image"].dtype == jnp.uint8:
            batch = {**batch, "image": ds.normalize(batch["image"])}
        return step(state, batch, *args)

    return normalizing


def evaluate(
    eval_step, state, ds, mesh, batch_size: int, split: str = "test", max_batches: int = 0
) -> dict:
    """Runs ``eval_step`` over a split (its first ``max_batches`` batches if > 0); returns
    ``{"<split>/loss": ..., ...}``."""
    totals = None
    batches = ds.eval_batches(
        split=split,
        global_batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for i, batch in enumerate(itertools.islice(batches, max_batches or None)):
        sums = eval_step(state, sharding.put_batch(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if i % 8 == 7:
            jax.block_until_ready(totals)  # see dispatch.train_chunks: never queue too many
    totals = jax.device_get(totals)
    count = totals.pop("count")
    out = {f"{split}/{k}": float(v / count) for k, v in totals.items() if not k.startswith("nse/")}
    if "nse/target" in totals:  # metrics.normalized_squared_error over the whole split
        out[f"{split}/nse"] = float(totals["nse/error"] / totals["nse/target"])
    return out


def prepare_data(ds: data.Dataset) -> None:
    """Process 0 prepares the data (the offline MNIST copy) first, the others wait: a data dir
    that all hosts share must not be written by two processes at once. Then the others find it
    prepared, or prepare their own copy where each host has its own disk."""
    if jax.process_index() == 0:
        ds.prepare()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("wtfree: data prepared")
        if jax.process_index() != 0:
            ds.prepare()


class Trainer:
    """Everything a run builds from its config: data, model, optimizer, jitted steps, state."""

    def __init__(self, config: ml_collections.ConfigDict, mesh=None):
        self.config = config
        self.mesh = mesh or sharding.make_mesh(config.get("num_devices"))
        sharding.check_batch_size(config.batch_size, self.mesh)
        self.ds = data.get_dataset(
            config.dataset,
            data_dir=config.get("data_dir"),
            idx_dir=config.get("idx_dir"),
            **config.get("dataset_kwargs", {}),
        )
        normalization = config_lib.input_normalization(config)
        if normalization is not None:
            mean, std = normalization
            self.ds.spec = dataclasses.replace(self.ds.spec, mean=mean, std=std)
        prepare_data(self.ds)
        self.model = make_model(config, self.ds.num_classes)
        self.steps_per_epoch = self.ds.steps_per_epoch(config.batch_size)
        self.total_steps = config.get("num_train_steps") or config.num_epochs * self.steps_per_epoch

        rng = jax.random.PRNGKey(config.seed)
        # Which B train with W shows in the structure alone, so no real init is needed.
        _, flags = jax.eval_shape(
            lambda: steps.init_variables(self.model, rng, (1, *self.ds.image_shape))
        )
        self.tx, self.schedule = make_optimizer(
            config, self.steps_per_epoch, self.total_steps, flags
        )

        replicated = sharding.replicated(self.mesh)
        batch = sharding.batch_sharded(self.mesh)
        kind = kinds.get(rules.get(config.rule).feedback)
        init = functools.partial(
            steps.init_state, self.model, self.tx, input_shape=(1, *self.ds.image_shape)
        )

        def init_with_kind(rng):
            return kind.init_state(self.model, config, init(rng), self.ds.image_shape)

        self.init_state = jax.jit(init_with_kind, out_shardings=replicated)
        self.abstract_state = jax.eval_shape(self.init_state, rng)
        self.abstract_state = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
            self.abstract_state,
        )
        top_k = (1, 5) if self.ds.num_classes >= 100 else (1,)
        # What the rules' kinds add: to the train step (the alignment losses), and steps on
        # the whole state besides it (the weight mirror's mirror batches).
        used = used_kinds(config)
        extras = [e for e in (kind.step_extra(config) for kind in used) if e is not None]
        self.watched = ("train/loss", *(e.name for e in extras))
        state_steps = [
            s
            for s in (
                kind.make_state_step(self.model, self.mesh, config, self.ds.image_shape)
                for kind in used
            )
            if s is not None
        ]
        if len(state_steps) > 1:
            names = ", ".join(kind.name for kind in used)
            raise ValueError(
                f"rule and output_rule of kinds {names}: at most one may step the state"
            )
        # The weight mirror's is the one state step today: the names below are its.
        self.state_step = state_steps[0] if state_steps else None
        self.uses_mirror = self.state_step is not None
        # A kind with a step of its own (the settling rules) gives it, with its measurements.
        made = kind.make_steps(self.model, self.tx, self.schedule, config) or (
            steps.make_train_step(self.model, self.tx, config.loss, extras=extras),
            steps.make_measure_step(self.model, config.loss),
        )
        # uint8 train batches where the dataset can give them, normalized inside the steps.
        train_step = _normalizing(self.ds, made[0])
        step_shardings = dict(
            in_shardings=(replicated, batch),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )
        self.train_step = jax.jit(train_step, **step_shardings)
        self.measure_step = jax.jit(_normalizing(self.ds, made[1]))
        self.eval_step = jax.jit(steps.make_eval_step(self.model, config.loss, top_k))
        if self.state_step is not None:
            state_step = self.state_step.step
            self.mirror_step = jax.jit(state_step, donate_argnums=0)

            def train_mirror_step(state: State, batch):
                """A training step, then the state step (a mirror batch), as one dispatch."""
                rng = steps._mirror_rng(state, 1, state["step"])
                state, measurements = train_step(state, batch)
                return state_step(state, rng), measurements

            self.train_mirror_step = jax.jit(train_mirror_step, **step_shardings)
        # Unrolled, every chunk length is a program of its own: powers of two. Otherwise one
        # program runs them all, on chunks padded to k batches (``dispatch.train_chunks``).
        self.unrolled = dispatch.conv_loop_is_slow(self.abstract_state)
        multi_step = dispatch.make_multi_step(
            train_step,
            self.state_step.step if self.state_step else None,
            self.state_step.every if self.state_step else 1,
            unroll=self.unrolled,
            watched=self.watched,
        )
        self.train_steps = jax.jit(
            multi_step,
            in_shardings=(replicated, replicated, sharding.chunk_sharded(self.mesh), replicated),
            out_shardings=(replicated, replicated, replicated),
            donate_argnums=(0, 1),
        )
        self.first_of_chunk = jax.jit(lambda chunk: jax.tree.map(lambda x: x[0], chunk))
        self.rng = rng
        self._steps_per_dispatch = config.get("steps_per_dispatch", 0)
        kind.check(self)  # errors.RunError where the run cannot go on (DI's unstable loop)

    def fresh_state(self) -> State:
        return self.init_state(self.rng)

    def train_batches(self, start_step: int, raw: bool = False):
        """This process's train batches from ``start_step`` on. ``raw``: as the train loop
        takes them, uint8 images where the dataset has them (``ds.raw_batches``), which the steps
        normalize on the device; float32 images otherwise (the steps take both)."""
        raw = {"raw": True} if raw and self.ds.raw_batches else {}
        return self.ds.train_batches(
            global_batch_size=self.config.batch_size,
            seed=self.config.seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            augment=self.config.get("augment", False),
            **raw,
        )

    def steps_per_dispatch(self, batch: dict[str, np.ndarray]) -> int:
        """``config.steps_per_dispatch``, or where it is 0 ``dispatch.auto_steps_per_dispatch``
        (computed once)."""
        if not self._steps_per_dispatch:
            self._steps_per_dispatch = dispatch.auto_steps_per_dispatch(
                self.train_step,
                self.abstract_state,
                batch,
                self.config.batch_size,
                self.mesh,
                self.unrolled,
            )
        return self._steps_per_dispatch

    def mirror_pretrain(self, state: State) -> State:
        """The state step's runs before training (``kinds.StateStep.pretrain``: the seed's mirror
        pass of ``mirror.pretrain_batches`` batches); ``state`` itself without a state step."""
        for i in range(self.state_step.pretrain if self.state_step else 0):
            state = self.mirror_step(state, steps._mirror_rng(state, 2, i))
            if i % 8 == 7:
                jax.block_until_ready(state["feedback"])
        return state

    def evaluate(self, state: State, split: str = "test") -> dict:
        return evaluate(
            self.eval_step,
            state,
            self.ds,
            self.mesh,
            self.config.get("eval_batch_size", 1000),
            split,
            max_batches=self.config.get("eval_steps", 0),
        )
