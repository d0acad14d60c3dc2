"""The settling rules (ar, pc) on wtfree's ResNets: one settling state per block's output.

``chain`` reads a ``wtfree.models.resnet.Model`` as ``settling.Block`` nodes, its stem, each
residual block and its head (pooling and the output layer), each a Flax module applied in
train mode with the batch's statistics as the model's forward pass is, and built from the same
layers with the feedback rule ``settling.feedback``: under ``bp`` the error crosses a block
through W^T (weight transport, as the AR and PC authors' default), under ``fa``, ``kp``,
``usf``... through the rule's custom_vjp inside every conv (B, sign(W)...), batch norm, the
activations and the shortcut by autodiff. A block's parameters (convs and batch norms) get
``jax.vjp`` of the block in them at the settled error of its output. The nodes mirror
``resnet.Model.__call__`` (tests check that the chain's output and batch statistics equal the
model's apply).
"""

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from wtfree import layers, metrics, rules, settling
from wtfree.models import resnet

Array = jax.Array


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_op(x: Array, w: Array, op: settling.network.Conv) -> Array:
    return op(x, w)


def _conv_op_fwd(x, w, op):
    return op(x, w), (x, w)


def _conv_op_bwd(op, res, g):
    x, w = res
    return op.transpose_x(x, w, g), settling.network.transpose_w(op, x, w, g)


_conv_op.defvjp(_conv_op_fwd, _conv_op_bwd)


class _Conv(layers.Conv):
    """``layers.Conv`` whose op sends its error down in x by a forward convolution with the
    flipped kernel (``settling.network.Conv.transpose_x``: ``jax.vjp``'s values), so that the
    rule's custom_vjp, built from ``jax.vjp`` of the op, takes it too: ``jax.vjp``'s own
    transpose runs several times slower inside XLA:CPU's while loop (docs/settling.md,
    "Residual nets"). Its variables are ``layers.Conv``'s."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        op = settling.make_conv(self.strides, self.padding)
        kernel_shape = (*self.kernel_size, x.shape[-1], self.features)
        return self._apply(lambda x_, w: _conv_op(x_, w, op), x, kernel_shape, self.features)


def _conv(*args, **kwargs) -> _Conv:
    """``resnet._conv``'s layer (its init, scale and rule) as a ``_Conv``."""
    layer = resnet._conv(*args, parent=None, **kwargs)
    fields = [f.name for f in dataclasses.fields(layer) if f.init and f.name != "parent"]
    return _Conv(**{name: getattr(layer, name) for name in fields})


class _Stem(nn.Module):
    """The model's stem, its variables named as in ``resnet.Model``."""

    stem: str
    width: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.stem == "imagenet":
            x = self.conv(self.width, 7, 2, name="conv_init", input_layer=True)(x)
            x = nn.relu(self.norm(name="bn_init")(x))
            return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        if self.stem == "cifar":
            x = self.conv(self.width, 3, name="conv_init", input_layer=True)(x)
            return nn.relu(self.norm(name="bn_init")(x))
        raise ValueError(f"unknown stem {self.stem!r}; known: cifar, imagenet")


class _Head(nn.Module):
    """Global average pooling and the output layer, named as in ``resnet.Model``."""

    num_classes: int
    dense: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self.dense(features=self.num_classes, name="output")(jnp.mean(x, axis=(1, 2)))


def _modules(model: resnet.Model, rule: str) -> list[tuple[str | None, list[str], nn.Module]]:
    """``(scope, keys, module)`` per node: the top-level variable names the node owns, and the
    one its module's variables sit under (None: the module's variables are those keys)."""
    options = dict(mirror_noise=model.mirror_noise, alignment_input=model.alignment_input)
    conv = partial(_conv, rule=rule, dtype=model.dtype, **options)
    norm = partial(
        nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=model.dtype
    )
    out = [(None, ["conv_init", "bn_init"], _Stem(model.stem, model.width, conv, norm))]
    for i, num_blocks in enumerate(model.stage_sizes):
        for j in range(num_blocks):
            name = f"stage{i}_block{j}"
            block = resnet.BLOCKS[model.block](
                conv=conv, norm=norm, **resnet.block_fields(model, i, j)
            )
            out.append((name, [name], block))
    dense = partial(layers.Dense, rule=rule, dtype=model.dtype, **options)
    out.append((None, ["output"], _Head(model.num_classes, dense)))
    return out


def names(model: resnet.Model) -> list[str]:
    """The nodes' names, bottom to top: ``stem``, ``stage<i>_block<j>``, ``output``."""
    return [
        scope or ("stem" if keys[0] == "conv_init" else keys[0])
        for scope, keys, _ in _modules(model, "bp")
    ]


def _node_fn(scope, module, feedback, stats) -> Callable:
    def fn(params, x):
        variables = {"params": params, "feedback": feedback, "batch_stats": stats}
        variables = {c: v for c, v in variables.items() if v}
        if scope is not None:
            variables = {c: v[scope] for c, v in variables.items() if scope in v}
        h, new = module.apply(variables, x, mutable=["batch_stats"])
        new = dict(new.get("batch_stats", {}))
        return h, ({scope: new} if scope is not None and new else new)

    return fn


def chain(model: resnet.Model, rule: str, state: dict) -> tuple[list[settling.Block], list]:
    """The model as ``settling.Block`` nodes whose convs compute by ``rule``, and each node's
    parameters (the top-level entries of ``state["params"]`` it owns)."""
    nodes, params = [], []
    for scope, keys, module in _modules(model, rule):
        take = lambda tree, keys=keys: {k: tree[k] for k in keys if k in tree}  # noqa: E731
        fn = _node_fn(scope, module, take(state["feedback"]), take(state["batch_stats"]))
        nodes.append(settling.Block(fn))
        params.append(take(state["params"]))
    return nodes, params


def output(nodes, params, x: Array) -> Array:
    for node, p in zip(nodes, params, strict=True):
        x = node.fn(p, x)[0]
    return x


def _merge(trees) -> dict:
    return {k: v for tree in trees for k, v in tree.items()}


def make_steps(model: resnet.Model, tx, schedule, *, feedback, settle, loss, scale) -> tuple:
    """``(train_step, measure_step)`` of a settling rule on a ResNet.

    Args:
      feedback: the ``wtfree.rules`` name the blocks' convs compute by (``settling.feedback``).
      settle: ``settle(nodes, params, state, batch) -> Result``, the rule's apply bound to its
        config, loss and rng (``kinds.settling``).
      loss: ``loss(labels) -> (output -> mean loss)``, the config's.
      scale: B's step size over W's.
    """

    def train_step(state, batch):
        nodes, params = chain(model, feedback, state)
        result = settle(nodes, params, state, batch)
        grads = {
            "params": _merge(result.grads),
            "feedback": jax.tree.map(jnp.zeros_like, state["feedback"]),
        }
        trainable = {"params": state["params"], "feedback": state["feedback"]}
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        if result.feedback_grads is not None:  # each conv's B by its W's gradient, plain SGD
            rate = schedule(state["step"])
            flat = traverse_util.flatten_dict(trainable["feedback"])
            for path, g in traverse_util.flatten_dict(_merge(result.feedback_grads)).items():
                b_path = (*path[:-1], layers.FEEDBACK_KERNEL)
                if path[-1] == "kernel" and b_path in flat:
                    flat[b_path] = flat[b_path] - scale * rate * g
            trainable = {**trainable, "feedback": traverse_util.unflatten_dict(flat)}
        stats = {**state["batch_stats"], **_merge(result.state)}
        out = output(nodes, params, batch["image"])
        measurements = {
            "train/loss": loss(batch["label"])(out),
            "train/settling_steps": result.steps.astype(jnp.float32),
        }
        if batch["label"].ndim == 1:
            measurements["train/accuracy"] = metrics.correct(out, batch["label"]).mean()
        new_state = {
            **state,
            **trainable,
            "batch_stats": stats,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, measurements

    def measure_step(state, batch):
        return measure(model, state, batch, feedback=feedback, settle=settle, loss=loss)

    return train_step, measure_step


def measure(model, state, batch, *, feedback, settle, loss) -> dict[str, Array]:
    """Per node but the output: the angle of the settled error at its output to backprop's
    (``align/error_angle/<node>``, by ``jax.grad`` through the model's chain under bp); per
    conv and dense but the input layer, the feedback matrix's angle to W and norm ratio."""
    nodes, params = chain(model, feedback, state)
    result = settle(nodes, params, state, batch)
    bp_nodes, _ = chain(model, "bp", state)
    x, loss_fn = batch["image"], loss(batch["label"])

    def perturbed(ds):
        h = x
        for node, p, d in zip(bp_nodes, params, ds, strict=True):
            h = node.fn(p, h)[0] + d
        return loss_fn(h)

    bp = jax.grad(perturbed)([jnp.zeros_like(e) for e in result.errors])
    node_names = names(model)
    out = {
        f"align/error_angle/{n}": metrics.angle(e, g)
        for n, e, g in zip(node_names[:-1], result.errors, bp, strict=False)
    }
    rule = rules.get(feedback)
    flat_b = traverse_util.flatten_dict(state["feedback"])
    sown = {}
    for path, w in traverse_util.flatten_dict(state["params"]).items():
        if path[-1] != "kernel" or path[0] == "conv_init":
            continue
        if rule.stores_feedback:
            b = flat_b[(*path[:-1], layers.FEEDBACK_KERNEL)]
        elif path[0] == "output":
            b = jnp.asarray(layers.init_std(1.0, "fan_in", w.shape), w.dtype)
        else:
            b = jnp.asarray(layers.init_std(2.0, "fan_out", w.shape), w.dtype)
        m = rule.matrix(w, b)
        sown[path[:-1]] = {
            "weight_angle": metrics.angle(m, w),
            "norm_ratio": jnp.linalg.norm(m) / jnp.linalg.norm(w),
        }
    out.update(metrics.alignment(traverse_util.unflatten_dict(sown)))
    return out
