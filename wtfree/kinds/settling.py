"""The settling rules (ar, pc, di, pal; ``wtfree.settling``) as a kind: a train step of their
own on an MLP or a LeNet (ar and pc on a ResNet too, one node per residual block:
``settling_resnet``), B moved by the rule's feedback gradient, the rule's state carried and
saved.

A settling rule computes the error by letting activities settle over inner steps, so it is no
custom_vjp of a layer: its step reads the model's Dense and Conv layers as a ``settling.Layer``
chain (``chain``: from the model's fields; a conv layer's max pooling is part of its activation,
differentiated by ``jax.vjp``), runs ``settling.get(rule).apply`` instead of
``jax.grad``, gives ``Result.grads`` to W's optimizer and moves B itself by
``Result.feedback_grads`` (plain SGD at ``settling.feedback_learning_rate_scale`` times W's
rate, no decay: the authors' codes), as the mirror kind moves B by its mirror step.

Config entries, ``config.settling.<field>``: every field of the rule's ``*Config`` (defaults:
the authors', ``docs/settling.md``), and

- ``feedback_init``: ``random`` (B drawn like W) or ``neg_transpose`` (B = -W^T at init, the DI
  authors' start: weight transport once);
- ``feedback_learning_rate_scale``: B's step size over W's (PAL's ``bw_lr_factors``, 10);
- ``loss_scale``: the rule settles on this times the config's (mean) loss, and the gradients
  scale with it. It matters where the settling is not linear in the error: AR starts its states
  at the activations, so what T steps leave of them weighs against the error's size. The AR and
  PC codes sum the squared error over examples and outputs: ``batch_size * 10`` (PC: half that)
  with the mean ``squared_error`` is their loss, at their learning rate.

A config without a ``settling`` subtree runs the rule at its defaults.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from wtfree import errors, layers, metrics, rules, settling
from wtfree.kinds import FROZEN, Kind, settling_resnet
from wtfree.models import convnet, mlp, resnet

Array = jax.Array
FEEDBACK_INITS = ("random", "neg_transpose")
# The train state's key for the rule's own variables (PC's error weights, PAL's noise).
STATE = "settling"
# Entries of config.settling that are the kind's, not the rule's *Config's.
KIND_KEYS = {"feedback_init": "random", "feedback_learning_rate_scale": 1.0, "loss_scale": 1.0}
# The models whose layers the kind reads as a chain (``chain``), and those it reads as a chain
# of residual blocks, one node per block (``settling_resnet.chain``).
MODELS = ("mlp", "lenet")
RESIDUAL = ("resnet8", "resnet20", "resnet56", "resnet18", "resnet50")
# What a rule cannot do on a residual net, in one line each (``validate``).
RESIDUAL_LIMITS = settling.blocks.LIMITS
# What a rule cannot do on a conv net, in one line each (``validate``): none now. PAL takes LeNet
# as its authors' LeNet does (noise after each pooling, B fixed in the conv layers:
# ``settling.pal.is_conv``).
CONV_LIMITS: dict[str, str] = {}
# The rng stream the settling step draws PAL's noise from (steps.py uses 0 to 3).
_RNG_STREAM = 4


def settings(config) -> dict[str, Any]:
    """``config.settling`` over the defaults: the rule's ``*Config`` fields and ``KIND_KEYS``.

    Raises:
      ValueError: one line naming an unknown key.
    """
    rule = settling.get(config.rule)
    fields = {f.name: f.default for f in dataclasses.fields(rule.config)}
    defaults = {**fields, **KIND_KEYS}
    if config.rule == "di":
        defaults["feedback_init"] = "neg_transpose"  # the authors' MNIST start
    given = dict(config.get(STATE) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"settling.{unknown[0]} is no setting of rule={config.rule!r}; allowed: "
            + ", ".join(sorted(defaults))
        )
    return {**defaults, **given}


def rule_config(config) -> Any:
    """The rule's ``*Config`` from ``config.settling`` (ValueError in one line if bad)."""
    rule = settling.get(config.rule)
    names = {f.name for f in dataclasses.fields(rule.config)}
    values = {k: v for k, v in settings(config).items() if k in names}
    try:
        return rule.config(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"settling: {' '.join(str(e).split())}") from None


def validate(config) -> None:
    """Checks that the kind can run ``config``: an MLP, LeNet or ResNet, a feedback rule with a
    matrix, values in range. Raises a one-line ValueError naming the key."""
    if config.model not in MODELS + RESIDUAL:
        raise ValueError(
            f"rule={config.rule!r} with model={config.model!r}; allowed: "
            f"{', '.join(MODELS + RESIDUAL)} (a settling rule runs on a chain of dense and conv "
            "layers or of residual blocks)"
        )
    if config.model in RESIDUAL:
        _validate_residual(config)
    elif config.model != "mlp" and config.rule in CONV_LIMITS:
        raise ValueError(
            f"rule={config.rule!r} with model={config.model!r}; allowed: mlp "
            f"({CONV_LIMITS[config.rule]})"
        )
    output_rule = config.get("output_rule")
    if output_rule and output_rule != config.rule:
        raise ValueError(f"output_rule={output_rule!r} with rule={config.rule!r}; allowed: None")
    values = settings(config)
    feedback = values["feedback"]
    usable = [
        n
        for n in rules.names()
        if rules.get(n).matrix is not None and rules.get(n).feedback != rules.SETTLING
    ]
    if feedback not in usable:
        raise ValueError(f"settling.feedback={feedback!r}; allowed: {', '.join(usable)}")
    if values["feedback_init"] not in FEEDBACK_INITS:
        raise ValueError(
            f"settling.feedback_init={values['feedback_init']!r}; allowed: "
            + ", ".join(FEEDBACK_INITS)
        )
    for key in ("feedback_learning_rate_scale", "loss_scale"):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"settling.{key}={value!r}; allowed: a number >= 0")
    steps = values.get("steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"settling.steps={steps!r}; allowed: an integer >= 0")
    if config.rule == "pal" and not settling.network.is_stored(feedback):
        raise ValueError(f"settling.feedback={feedback!r} with rule='pal'; allowed: fa, kp")
    if config.rule == "pc" and values["error_weights"] and config.model != "mlp":
        raise ValueError(
            f"settling.error_weights=True with model={config.model!r}; allowed: False (PC's "
            "error weights E are one width x width matrix per dense layer)"
        )
    rule_config(config)


def _validate_residual(config) -> None:
    """A residual net: ar, and pc with fixed predictions, each with the derivative."""
    if config.rule in RESIDUAL_LIMITS:
        raise ValueError(
            f"rule={config.rule!r} with model={config.model!r}; allowed on a residual net: ar, "
            f"pc ({RESIDUAL_LIMITS[config.rule]})"
        )
    values = settings(config)
    inside = {"derivative": "derivative", "fixed_predictions": "prediction"}
    for key, what in inside.items():
        if values.get(key, True) is not True:
            raise ValueError(
                f"settling.{key}={values[key]!r} with model={config.model!r}; allowed: True (a "
                f"block's {what} is inside its Jacobian, not a layer's)"
            )
    if values["feedback_init"] != "random":
        raise ValueError(
            f"settling.feedback_init={values['feedback_init']!r} with model={config.model!r}; "
            "allowed: random"
        )


def chain(model: nn.Module) -> tuple[list[settling.Layer], list[str]]:
    """The model as the settling rules see it: one ``settling.Layer`` per Dense or Conv, and
    those layers' names, bottom to top.

    MLP: the first Dense flattens its input, as the model does. LeNet: each conv's activation
    is the model's activation then its 2x2 max pooling (fixed, no weights: the rules take its
    derivative by ``jax.vjp``), and the first Dense flattens; the input goes through
    ``prepare`` first.
    """
    act = mlp.get_activation(model.activation)
    if isinstance(model, mlp.Model):
        n = len(model.widths)
        ops = [settling.flatten_dense] + [settling.dense] * n
        acts = [act] * n + [settling.identity]
        names = [f"hidden_{i}" for i in range(n)] + ["output"]
    elif isinstance(model, convnet.Model):
        conv = settling.make_conv(padding=model.padding)

        def conv_act(a):
            return nn.max_pool(act(a), convnet.POOL, strides=convnet.POOL)

        ops = [conv, conv, settling.flatten_dense, settling.dense, settling.dense]
        acts = [conv_act, conv_act, act, act, settling.identity]
        names = ["conv_0", "conv_1", "dense_0", "dense_1", "output"]
    else:
        raise ValueError(f"a settling rule needs wtfree's mlp or lenet; got {type(model).__name__}")
    return [settling.Layer(f, a) for f, a in zip(ops, acts, strict=True)], names


def prepare(model: nn.Module, x: Array) -> Array:
    """The model's input as its first layer takes it (LeNet: resized and standardized)."""
    return convnet.prepare_input(model, x) if isinstance(model, convnet.Model) else x


def _params(state, names) -> list[dict[str, Array]]:
    return [{"w": state["params"][n]["kernel"], "bias": state["params"][n]["bias"]} for n in names]


def _stored(model: nn.Module, state, names, feedback: str):
    """What ``settling.network.feedback_matrices`` takes for the rule ``feedback``: the layers'
    stored B, or for a rule that keeps none (bp, usf, brsf) W's init std, as its layers would."""
    if rules.get(feedback).stores_feedback:
        return [state["feedback"][n][layers.FEEDBACK_KERNEL] for n in names]
    shapes = [state["params"][n]["kernel"].shape for n in names]
    return [
        jnp.asarray(layers.init_std(model.kernel_scale, model.kernel_mode, s), jnp.float32)
        for s in shapes
    ]


def _loss(config, labels, scale: float = 1.0):
    per_example = metrics.get_loss(config.loss)

    def loss(out):
        return scale * per_example(out.astype(jnp.float32), labels).mean()

    return loss


def _rng(state) -> Array:
    # Keyed by step, so that a resumed run draws what an uninterrupted one would.
    return jax.random.fold_in(jax.random.fold_in(state["rng"], _RNG_STREAM), state["step"])


def _rule_state(config, state):
    own = state[STATE]
    if config.rule == "pc":
        return own.get("error_weights")
    return own or None


def _settle(model, config, state, batch) -> tuple[settling.Result, list, Any]:
    rule, names = settling.get(config.rule), chain(model)[1]
    cfg = rule_config(config)
    params = _params(state, names)
    stored = _stored(model, state, names, cfg.feedback)
    result = rule.apply(
        chain(model)[0],
        params,
        stored,
        prepare(model, batch["image"]),
        _loss(config, batch["label"], settings(config)["loss_scale"]),
        cfg,
        state=_rule_state(config, state),
        rng=_rng(state),
    )
    return result, params, stored


def init_state(model: nn.Module, config, state: dict, image_shape: tuple[int, ...]) -> dict:
    """Adds the rule's variables under ``state["settling"]`` (PC with error weights: E; PAL:
    noise, filters and rates for a batch of ``config.batch_size``), and for
    ``feedback_init=neg_transpose`` sets every B to -W."""
    if isinstance(model, resnet.Model):  # ar, pc: no state of their own
        return {**state, STATE: {}}
    layers_, names = chain(model)
    values = settings(config)
    own: dict[str, Any] = {}
    if config.rule == "pc" and values["error_weights"]:
        rng = jax.random.fold_in(state["rng"], _RNG_STREAM + 1)
        own["error_weights"] = settling.init_error_weights(rng, list(model.widths))
    if config.rule == "pal":
        x = prepare(model, jnp.zeros((config.batch_size, *image_shape), jnp.float32))
        own.update(settling.pal.init_state(layers_, _params(state, names), x))
    state = {**state, STATE: own}
    if values["feedback_init"] == "neg_transpose":
        negated = settling.neg_transpose(_params(state, names))
        feedback = {
            n: {**state["feedback"][n], layers.FEEDBACK_KERNEL: b}
            for n, b in zip(names, negated, strict=True)
        }
        state = {**state, "feedback": {**state["feedback"], **feedback}}
    return state


def make_steps(model: nn.Module, tx, schedule, config) -> tuple[Any, Any]:
    """``(train_step, measure_step)``: the rule's step and its alignment measurements."""
    if isinstance(model, resnet.Model):
        return _make_residual_steps(model, tx, schedule, config)
    names = chain(model)[1]
    scale = settings(config)["feedback_learning_rate_scale"]

    def train_step(state, batch):
        result, params, _ = _settle(model, config, state, batch)
        grads = {
            "params": {
                n: {"kernel": g["w"], "bias": g["bias"]}
                for n, g in zip(names, result.grads, strict=True)
            },
            "feedback": jax.tree.map(jnp.zeros_like, state["feedback"]),
        }
        trainable = {"params": state["params"], "feedback": state["feedback"]}
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        rate = schedule(state["step"])
        if result.feedback_grads is not None:  # B by plain SGD, no decay (the authors')
            feedback = dict(trainable["feedback"])
            for n, g in zip(names, result.feedback_grads, strict=True):
                if g is not None:
                    feedback[n] = {
                        **feedback[n],
                        layers.FEEDBACK_KERNEL: feedback[n][layers.FEEDBACK_KERNEL]
                        - scale * rate * g,
                    }
            trainable = {**trainable, "feedback": feedback}
        own = state[STATE]
        if config.rule == "pal":
            own = result.state
        elif result.state_grads is not None:  # PC's error weights, by SGD at W's rate
            own = {
                "error_weights": [
                    e - rate * g
                    for e, g in zip(own["error_weights"], result.state_grads, strict=True)
                ]
            }
        new_state = {
            **state,
            **trainable,
            STATE: own,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        out = settling.forward(chain(model)[0], params, prepare(model, batch["image"]))[0][-1]
        measurements = {
            "train/loss": _loss(config, batch["label"])(out),
            "train/settling_steps": result.steps.astype(jnp.float32),
        }
        if batch["label"].ndim == 1:
            measurements["train/accuracy"] = metrics.correct(out, batch["label"]).mean()
        else:
            measurements["train/nse"] = metrics.normalized_squared_error(out, batch["label"])
        return new_state, measurements

    def measure_step(state, batch):
        return measure(model, config, state, batch)

    return train_step, measure_step


def _make_residual_steps(model: resnet.Model, tx, schedule, config) -> tuple[Any, Any]:
    rule, cfg, values = settling.get(config.rule), rule_config(config), settings(config)

    def settle(nodes, params, state, batch):
        loss = _loss(config, batch["label"], values["loss_scale"])
        return rule.apply(nodes, params, None, batch["image"], loss, cfg, rng=_rng(state))

    return settling_resnet.make_steps(
        model,
        tx,
        schedule,
        feedback=cfg.feedback,
        settle=settle,
        loss=lambda labels: _loss(config, labels),
        scale=values["feedback_learning_rate_scale"],
    )


def measure(model: nn.Module, config, state: dict, batch: dict) -> dict[str, Array]:
    """Per layer: the angle of the rule's settled error to backprop's (``jax.grad``), at the
    pre-activation as every rule's ``align/delta_angle`` and at the output
    (``align/error_angle``), and the feedback matrix's angle to W (``align/weight_angle``, with
    ``norm_ratio`` and ``weight_cosine``). The output layer's error is the loss gradient and the
    input layer's matrix sends no error: neither is measured."""
    layers_, names = chain(model)
    result, params, stored = _settle(model, config, state, batch)
    x, loss = prepare(model, batch["image"]), _loss(config, batch["label"])
    _, pre = settling.forward(layers_, params, x)

    def perturbed(d_pre, d_out):
        h = x
        for layer, p, da, dh in zip(layers_, params, d_pre, d_out, strict=True):
            h = layer.activation(layer.f(h, p["w"]) + p["bias"] + da) + dh
        return loss(h)

    zeros = [jnp.zeros_like(a) for a in pre]
    bp_pre, bp_out = jax.grad(perturbed, argnums=(0, 1))(
        zeros, [jnp.zeros_like(e) for e in result.errors]
    )
    out = {}
    for k in range(len(names) - 1):
        delta = settling.network.activation_vjp(layers_[k], pre[k], result.errors[k])
        out[f"align/delta_angle/{names[k]}"] = metrics.angle(delta, bp_pre[k])
        out[f"align/error_angle/{names[k]}"] = metrics.angle(result.errors[k], bp_out[k])
    feedback = rule_config(config).feedback
    mats = settling.network.feedback_matrices(feedback, params, stored)
    sown = {
        names[k]: {
            "weight_angle": metrics.angle(mats[k], params[k]["w"]),
            "norm_ratio": jnp.linalg.norm(mats[k]) / jnp.linalg.norm(params[k]["w"]),
        }
        for k in range(1, len(names))
    }
    out.update(metrics.alignment(sown))
    return out


def check(trainer) -> None:
    """DI with Euler steps: every layer's feedback loop must settle at init
    (``settling.check_stable``); else the run stops with its one line (exit 2)."""
    config = trainer.config
    if config.rule != "di" or not settings(config)["dynamic"]:
        return
    layers_, names = chain(trainer.model)
    state = jax.device_get(trainer.fresh_state())
    cfg = rule_config(config)
    x = prepare(trainer.model, jnp.zeros((1, *trainer.ds.image_shape), jnp.float32))
    stored = _stored(trainer.model, state, names, cfg.feedback)
    try:
        settling.check_stable(layers_, _params(state, names), stored, x, cfg)
    except ValueError as e:
        raise errors.RunError(str(e)) from None


# The optimizer leaves B alone (FROZEN): the settling step moves it by the rule's gradient.
KIND = Kind(
    "settling",
    stores_feedback=True,
    label=FROZEN,
    validate=validate,
    init_state=init_state,
    make_steps=make_steps,
    check=check,
)

__all__ = ["KIND", "MODELS", "chain", "measure", "prepare", "rule_config", "settings"]
