"""Pure train, eval, measure and mirror steps on a plain-dict state, to jit in any loop."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax import lax
from jax.sharding import PartitionSpec as P

from wtfree import kinds, layers, metrics, rules, sharding
from wtfree.kinds import mirror as mirror_kind
from wtfree.linen import Converted

State = dict[str, Any]
# The collections a train state keeps; the rest (alignment, perturbations, ...) are transient.
STATE_COLLECTIONS = ("params", "feedback", "batch_stats")


def init_variables(model, rng, input_shape) -> tuple[dict, dict]:
    """Initial variables (params, feedback, batch_stats) and the trained-feedback flags."""
    variables = model.init({"params": rng}, jnp.zeros(input_shape, jnp.float32), train=False)
    flags = variables.get(layers.TRAINED_FEEDBACK, {})
    return {k: variables[k] for k in STATE_COLLECTIONS if k in variables}, flags


def init_state(model, tx, rng, input_shape) -> State:
    """A fresh train state: a plain dict of arrays."""
    init_rng, rng = jax.random.split(rng)
    variables, _ = init_variables(model, init_rng, input_shape)
    trainable = {k: variables.get(k, {}) for k in ("params", "feedback")}
    return {
        "step": jnp.zeros((), jnp.int32),
        "rng": rng,
        **{k: variables.get(k, {}) for k in STATE_COLLECTIONS},
        "opt_state": tx.init(trainable),
    }


def _variables(state: State) -> dict:
    return {k: state[k] for k in STATE_COLLECTIONS if state[k]}


def _apply(model, variables, x, train: bool, rngs=None, mutable=(), **kwargs):
    """Applies the model; batch stats are updated in train mode when the model has them."""
    mutable = list(mutable)
    if train and "batch_stats" in variables:
        mutable.append("batch_stats")
    out = model.apply(variables, x, train=train, rngs=rngs, mutable=mutable or False, **kwargs)
    return out if mutable else (out, {})


def _needs_output_error(model) -> bool:
    """A converted model under dfa (``linen.Options.needs_output_error``); wtfree's own models
    route DFA's error themselves."""
    return isinstance(model, Converted) and model.options.needs_output_error()


def _output_error(model, variables, x, rngs, loss) -> dict:
    """For a converted dfa model, ``{"output_error": e}``: a first forward pass (train mode;
    its batch statistics are dropped) and e, the task loss's gradient at the output, which the
    model's layers send to their inputs through their own B (``wtfree.convert``); ``{}`` for
    any other model. ``loss(logits) -> scalar``."""
    if not _needs_output_error(model):
        return {}
    logits, _ = _apply(model, variables, x, True, rngs)
    return {"output_error": jax.grad(loss)(logits)}


def _step_rngs(state: State) -> dict:
    # Keyed by step, so a resumed run draws what an uninterrupted one would.
    return {
        layers.FEEDBACK_RNG: jax.random.fold_in(jax.random.fold_in(state["rng"], 0), state["step"])
    }


def make_train_step(model, tx, loss_name: str, *, extras: Sequence[kinds.StepExtra] = ()):
    r"""``train_step(state, batch) -> (state, measurements)``: one step of the model's rule.

    The step minimizes the task loss plus each of ``extras``' losses (what a kind adds to the
    step, ``kinds.Kind.step_extra``: the Trainer gives the configured rules'; e.g. the
    alignment losses, ``kinds.loss.step_extra(config.alignment)``), with their collections
    mutable and their random streams passed, and logs each under its name.
    """
    loss_fn = metrics.get_loss(loss_name)
    mutable = [c for extra in extras for c in extra.mutable]

    def rngs_for(state: State) -> dict:
        rngs = _step_rngs(state)
        for extra in extras:
            rngs.update(extra.rngs(state))
        return rngs

    def train_step(state: State, batch):
        def task_loss(logits):
            return loss_fn(logits.astype(jnp.float32), batch["label"]).mean()

        # dfa on a converted model: the error at the output first (one more forward pass).
        error = _output_error(model, _variables(state), batch["image"], rngs_for(state), task_loss)

        def loss(trainable):
            variables = {**_variables(state), **trainable}
            x, rngs = batch["image"], rngs_for(state)
            logits, new = _apply(model, variables, x, True, rngs, mutable, **error)
            per_example = loss_fn(logits.astype(jnp.float32), batch["label"])
            task = per_example.mean()
            added = {extra.name: extra.loss(new) for extra in extras}
            return task + sum(added.values()), (logits, new, task, added)

        trainable = {"params": state["params"], "feedback": state["feedback"]}
        (_, (logits, new, value, added)), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        new_state = {
            **state,
            **trainable,
            "batch_stats": new.get("batch_stats", state["batch_stats"]),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        measurements = {"train/loss": value}
        if batch["label"].ndim == 1:  # class labels
            measurements["train/accuracy"] = metrics.correct(logits, batch["label"]).mean()
        else:  # regression targets
            measurements["train/nse"] = metrics.normalized_squared_error(logits, batch["label"])
        measurements.update(added)
        return new_state, measurements

    return train_step


def _backprop_twin(model):
    """``model`` with every layer on backprop, its variables and perturbations where they are."""
    if isinstance(model, Converted):
        return model.clone(options=dataclasses.replace(model.options, rule="bp", output_rule=None))
    if hasattr(model, "rule"):  # wtfree's own models
        return model.clone(rule="bp", output_rule="bp")
    return model  # a stock model computes backprop already (and sows nothing to measure)


def make_measure_step(model, loss_name: str):
    """``measure(state, batch) -> measurements``: per layer the angle of B to W, ||B||/||W||,
    and the angle between the error the rule sends to each layer and backprop's (same batch)."""
    loss_fn = metrics.get_loss(loss_name)
    bp_model = _backprop_twin(model)

    def deltas(m, variables, state, batch):
        x = batch["image"]
        shapes = jax.eval_shape(
            lambda: _apply(m, variables, x, False, mutable=[layers.PERTURBATIONS])[1]
        ).get(layers.PERTURBATIONS, {})
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def task_loss(logits):
            return loss_fn(logits.astype(jnp.float32), batch["label"]).mean()

        # dfa on a converted model: the errors its layers receive come from the output's.
        error = _output_error(m, variables, x, _step_rngs(state), task_loss)

        def loss(perturbations):
            v = {**variables, layers.PERTURBATIONS: perturbations}
            logits, _ = _apply(m, v, x, True, _step_rngs(state), **error)
            return task_loss(logits)

        return jax.grad(loss)(zeros)

    def measure(state: State, batch):
        variables = _variables(state)
        _, sown = _apply(model, variables, batch["image"][:1], False, mutable=[layers.ALIGNMENT])
        out = metrics.alignment(sown.get(layers.ALIGNMENT, {}))
        bp_variables = {k: v for k, v in variables.items() if k != "feedback"}
        out.update(
            metrics.delta_angles(
                deltas(model, variables, state, batch), deltas(bp_model, bp_variables, state, batch)
            )
        )
        return out

    return measure


def make_eval_step(model, loss_name: str, top_k: tuple[int, ...] = (1,)):
    """``eval_step(state, batch) -> sums``: masked sums of loss and of correct predictions."""
    loss_fn = metrics.get_loss(loss_name)

    def eval_step(state: State, batch):
        logits, _ = _apply(model, _variables(state), batch["image"], False)
        logits = logits.astype(jnp.float32)
        mask = batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32))
        sums = {"loss": jnp.sum(loss_fn(logits, batch["label"]) * mask), "count": mask.sum()}
        if batch["label"].ndim > 1:  # regression targets: the NSE's two sums (see trainer.evaluate)
            error = jnp.sum(jnp.square(logits - batch["label"]), axis=-1)
            sums["nse/error"] = jnp.sum(error * mask)
            sums["nse/target"] = jnp.sum(jnp.sum(jnp.square(batch["label"]), axis=-1) * mask)
            return sums
        for k in top_k:
            key = "accuracy" if k == 1 else f"accuracy_top{k}"
            sums[key] = jnp.sum(metrics.correct(logits, batch["label"], k) * mask)
        return sums

    return eval_step


def make_mirror_step(
    model,
    mesh,
    input_shape,
    *,
    learning_rate,
    decay,
    noise_std,
    per_layer_batch: bool = False,
):
    r"""``mirror_step(state, rng) -> state``: one weight-mirror batch for every ``wm`` layer.

    Runs per device under ``jax.shard_map``: each device feeds every layer its own noise batch
    (the key folded with the device index), measures the Hebbian product H, and ``lax.pmean``
    averages H so that B stays identical everywhere:
    :math:`B \leftarrow B + \eta\sigma^2\,\mathrm{mean}_d H_d - \lambda B`.
    ``input_shape`` is the per-device noise batch (batch first); the noise's distribution
    (``rules.MIRROR_NOISES``, unit variance) is the model's own value (its ``mirror_noise``:
    ``wtfree.convert``'s option, wtfree's own models' field), drawn from ``layers.MIRROR_RNG``.
    The model's forward values are unused, so XLA drops them. ``per_layer_batch``: each layer
    draws its own share of that batch, sized by B's closed-form noise
    (``kinds.mirror.hebbian_products``).
    """
    hebbian = _make_hebbian(model, input_shape, per_layer_batch)

    def per_device(variables, rng):
        # Mark W as differing per device: the Hebbian product is a vjp w.r.t. W, and a vjp
        # w.r.t. a device-invariant input sums over devices by itself (its transpose is a
        # psum), which would make the pmean below a sum.
        variables = jax.tree.map(lambda v: lax.pcast(v, sharding.DATA, to="varying"), variables)
        rng = jax.random.fold_in(rng, lax.axis_index(sharding.DATA))
        return lax.pmean(hebbian(variables, rng), sharding.DATA)

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P()), out_specs=P())

    def mirror_step(state: State, rng) -> State:
        h = sharded(_variables(state), rng)
        return _mirror_update(
            state, h, learning_rate=learning_rate, decay=decay, noise_std=noise_std
        )

    return mirror_step


def _make_hebbian(model, input_shape, per_layer_batch: bool = False):
    """``hebbian(variables, rng) -> H``: every ``wm`` layer's Hebbian product on one noise batch
    of ``input_shape`` (or each layer's share of it), of the model's noise distribution; the
    mesh-free core of ``make_mirror_step``."""

    def hebbian(variables, rng):
        def apply():
            x = jnp.zeros(input_shape, jnp.float32)
            rngs = {layers.MIRROR_RNG: rng}
            _, sown = _apply(model, variables, x, False, rngs, [layers.MIRROR])
            return sown.get(layers.MIRROR, {})

        return mirror_kind.hebbian_products(apply, input_shape[0], per_layer_batch)

    return hebbian


def _mirror_update(state: State, h, *, learning_rate, decay, noise_std) -> State:
    """``state`` with each ``wm`` layer's B moved by its Hebbian product ``h``
    (``rules.apply_hebbian``)."""
    h = traverse_util.flatten_dict(h)
    feedback = traverse_util.flatten_dict(state["feedback"])
    for path, value in h.items():
        feedback[path] = rules.apply_hebbian(
            feedback[path], value, learning_rate=learning_rate, decay=decay, noise_std=noise_std
        )
    return {**state, "feedback": traverse_util.unflatten_dict(feedback)}


def _mirror_rng(state: State, stream: int, index) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(state["rng"], stream), index)


def feedback_at_weights(state: State) -> State:
    """``state`` with every B replaced by its W: a diagnostic (experiments/feedback_at_weights.py)
    that starts a rule whose B learns toward W where it would end. Weight transport, once."""
    params = traverse_util.flatten_dict(state["params"])
    feedback = traverse_util.flatten_dict(state["feedback"])

    def weight(path):  # B at .../feedback_kernel is W at .../kernel
        return (*path[:-1], "kernel") if path[-1] == layers.FEEDBACK_KERNEL else path

    missing = sorted("/".join(k) for k in feedback if weight(k) not in params)
    if missing:
        raise ValueError(f"feedback without a weight of the same path: {', '.join(missing)}")
    copied = {k: params[weight(k)] for k in feedback}
    if any(params[weight(k)].shape != b.shape for k, b in feedback.items()):
        raise ValueError("a B whose shape is not its W's (dfa's direct feedback has no W)")
    return {**state, "feedback": traverse_util.unflatten_dict(copied)}
