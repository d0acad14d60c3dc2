"""DFA in residual nets: every hidden layer gets e B_l and nothing through any W^T (closed form)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import imagenet_resnet50
from wtfree import config_lib, layers
from wtfree.models import resnet

NUM_CLASSES = 3


def _tiny(rule: str, shortcut: str = "pad", block: str = "basic") -> resnet.Model:
    # Two stages of one block: five hidden convs (seven with bottlenecks), a stage change with
    # its shortcut.
    return resnet.Model(
        num_classes=NUM_CLASSES,
        stage_sizes=(1, 1),
        block=block,
        stem="cifar",
        width=2,
        shortcut=shortcut,
        rule=rule,
    )


def _setup(rule: str, shortcut: str = "pad", block: str = "basic"):
    model = _tiny(rule, shortcut, block)
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 1))
    labels = jnp.array([0, 1, 2, 1])
    variables = model.init(jax.random.key(1), x, train=False)
    return model, x, labels, variables


def _errors_and_intermediates(model, x, labels, variables):
    """The error the rule delivers at every conv's output, the output error e, and every
    module's output (train mode, batch statistics)."""

    @jax.jit
    def run(variables):
        shapes = jax.eval_shape(
            lambda: model.apply(
                variables, x, train=True, mutable=[layers.PERTURBATIONS, "batch_stats"]
            )
        )[1][layers.PERTURBATIONS]
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def loss(perturbations):
            logits, _ = model.apply(
                {**variables, layers.PERTURBATIONS: perturbations},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        logits, captured = model.apply(
            variables,
            x,
            train=True,
            capture_intermediates=True,
            mutable=["batch_stats", "intermediates"],
        )
        return jax.grad(loss)(zeros), logits, captured["intermediates"]

    deltas, logits, captured = run(variables)
    e = (jax.nn.softmax(logits) - jax.nn.one_hot(labels, NUM_CLASSES)) / x.shape[0]
    outputs = {path[:-1]: value[0] for path, value in traverse_util.flatten_dict(captured).items()}
    deltas = {path[:-1]: d for path, d in traverse_util.flatten_dict(deltas).items()}
    return deltas, e, outputs


def _bn_relu(params, z, residual=None):
    """relu(bn(z) [+ residual]) with batch statistics, as the model computes it."""
    norm = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    y, _ = norm.apply({"params": params, "batch_stats": _fresh_stats(z)}, z, mutable=True)
    return nn.relu(y if residual is None else y + residual)


def _fresh_stats(z):
    c = z.shape[-1]
    return {"mean": jnp.zeros(c), "var": jnp.ones(c)}


def _expected(params, z, b, e, residual=None):
    """The error at a conv's output when e B arrives at relu(bn(z) [+ residual])."""
    out, vjp = jax.vjp(lambda z_: _bn_relu(params, z_, residual), z)
    (dz,) = vjp((e @ b).reshape(out.shape))
    return dz


# (conv whose output is marked, its batch norm, the B it gets, the residual added before relu)
_PER_LAYER = [
    (("conv_init",), ("bn_init",), ("direct_init",), None),
    (("stage0_block0", "conv_0"), ("stage0_block0", "bn_0"), ("stage0_block0", "direct_0"), None),
    (("stage0_block0", "conv_1"), ("stage0_block0", "bn_1"), ("direct_0_0",), "stage0_block0"),
    (("stage1_block0", "conv_0"), ("stage1_block0", "bn_0"), ("stage1_block0", "direct_0"), None),
    (("stage1_block0", "conv_1"), ("stage1_block0", "bn_1"), ("direct_1_0",), "stage1_block0"),
]


def _check(rule: str, scale: float = 1.0, shortcut: str = "pad", block: str = "basic"):
    model, x, labels, variables = _setup(rule, shortcut, block)
    deltas, e, outputs = _errors_and_intermediates(model, x, labels, variables)
    params = variables["params"]
    feedback = variables["feedback"]
    checked = 0
    table = _PER_LAYER if block == "basic" else _BOTTLENECK_PER_LAYER
    for conv, bn, direct, block in table:
        path = (*direct, "kernel")
        flat = traverse_util.flatten_dict(feedback)
        if path not in flat:
            continue
        node = params
        for key in bn:
            node = node[key]
        residual = None
        if block is not None:
            residual = outputs[(block, "_Shortcut_0")]
        expected = _expected(node, outputs[conv], flat[path], scale * e, residual)
        np.testing.assert_allclose(deltas[conv], expected, rtol=2e-4, atol=1e-7)
        assert float(jnp.abs(expected).max()) > 0
        checked += 1
    return checked


def test_every_hidden_conv_of_a_resnet_gets_e_times_its_own_b_under_dfa():
    assert _check("dfa") == 5


def test_the_check_fails_if_the_error_were_halved():
    with pytest.raises(AssertionError):
        _check("dfa", scale=0.5)


def test_dfa_block_marks_only_the_stem_and_block_outputs():
    _, _, _, variables = _setup("dfa_block")
    assert set(variables["feedback"]) == {"direct_init", "direct_0_0", "direct_1_0"}
    assert _check("dfa_block") == 3


def test_dfa_block_backpropagates_inside_a_block_unlike_dfa():
    """Inside a block, dfa_block's first conv gets conv_1's delta through conv_1's W^T."""
    model, x, labels, variables = _setup("dfa_block")
    deltas, _, outputs = _errors_and_intermediates(model, x, labels, variables)
    block = variables["params"]["stage0_block0"]
    z = outputs[("stage0_block0", "conv_0")]

    def tail(z_):
        h = _bn_relu(block["bn_0"], z_)
        return resnet._conv(2, 3, rule="bp").apply({"params": block["conv_1"]}, h)

    _, vjp = jax.vjp(tail, z)
    (expected,) = vjp(deltas[("stage0_block0", "conv_1")])
    np.testing.assert_allclose(deltas[("stage0_block0", "conv_0")], expected, rtol=2e-4, atol=1e-7)


def test_projection_shortcut_shares_the_block_output_b():
    assert _check("dfa", shortcut="projection") == 5


def test_per_layer_dfa_refuses_imagenet_resnet50_naming_the_size():
    model = resnet.ResNet50(num_classes=1000, rule="dfa")
    assert resnet.direct_feedback_entries(model, (224, 224, 3)) == 9_006_592_000
    with pytest.raises(ValueError, match="needs 9,006,592,000 feedback entries"):
        resnet.check_direct_feedback(model, (224, 224, 3))
    resnet.check_direct_feedback(resnet.ResNet50(num_classes=1000, rule="dfa"), (64, 64, 3))


def test_validate_refuses_per_layer_dfa_on_imagenet_resnet50_but_not_dfa_block():
    config = imagenet_resnet50.get_config("rule=dfa")
    with pytest.raises(ValueError, match=r"33.6 GiB in float32.*rule=dfa_block"):
        config_lib.validate(config)
    config_lib.validate(imagenet_resnet50.get_config("rule=dfa_block"))


def _bottleneck_layers(stage: int):
    b = f"stage{stage}_block0"
    return [
        ((b, "conv_0"), (b, "bn_0"), (b, "direct_0"), None),
        ((b, "conv_1"), (b, "bn_1"), (b, "direct_1"), None),
        ((b, "conv_2"), (b, "bn_2"), (f"direct_{stage}_0",), b),
    ]


_BOTTLENECK_PER_LAYER = [_PER_LAYER[0], *_bottleneck_layers(0), *_bottleneck_layers(1)]


def test_every_hidden_conv_of_a_bottleneck_resnet_gets_e_times_its_own_b_under_dfa():
    """The two inner convs of a bottleneck block too: an inner conv that read its input from
    before the DFA point would get its error through the next conv's W^T, and fail here."""
    assert _check("dfa", block="bottleneck") == 7
    assert _check("dfa", block="bottleneck", shortcut="projection") == 7
