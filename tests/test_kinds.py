"""wtfree.kinds: every rule's way of learning B is one registered object with its hooks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wtfree import kinds, layers, metrics, optim, rules


def test_every_rule_names_a_registered_kind():
    for rule in rules.RULES.values():
        kind = kinds.get(rule.feedback)
        assert kind.stores_feedback == rule.stores_feedback


@pytest.mark.parametrize(
    "rule, label",
    [("bp", optim.FROZEN), ("fa", optim.FROZEN), ("kp", optim.TRAIN), ("wm", optim.FROZEN)]
    + [("sa", optim.ALIGN), ("aa", optim.ALIGN)],
)
def test_labels_are_the_optimizers(rule, label):
    assert kinds.get(rules.get(rule).feedback).label == label


def test_unknown_kind_is_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown kind of feedback 'hebbian'; known: none"):
        kinds.get("hebbian")


def _config(rule, **overrides):
    from configs import mnist_mlp

    config = mnist_mlp.get_config(f"rule={rule}")
    config.model_kwargs.widths = (4,)
    config.mirror.every, config.mirror.pretrain_batches = 3, 5
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


@pytest.mark.parametrize("model_name", ["mlp", "lenet", "resnet8"])
def test_the_config_gives_wtfrees_own_models_their_noise_options_as_values(model_name):
    """The mirror noise's distribution and the alignment losses' input reach wtfree's own
    models as fields (the values convert's options take for a stock model), not as the names
    of the random streams the steps pass; each layer gets them."""
    from wtfree import trainer

    config = _config("wm", **{"mirror.noise": "uniform", "alignment.input": "normal"})
    config.model = model_name
    config.model_kwargs = {}
    model = trainer.make_model(config, 10)
    assert (model.mirror_noise, model.alignment_input) == ("uniform", "normal")
    shape = (1, 28, 28, 1) if model_name != "resnet8" else (1, 8, 8, 3)
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, layers._RuleLinear):
            seen.append((context.module.mirror_noise, context.module.alignment_input))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    assert seen and set(seen) == {("uniform", "normal")}


def test_each_kinds_train_py_hooks_come_from_its_config_section():
    """What the Trainer asks each kind: the mirror's state step (after every mirror.every-th
    step, mirror.pretrain_batches before training), the alignment loss's extra (its collection,
    its noise stream only for noise input), nothing from the others; and the workdir's subtrees
    each kind alone reads."""
    from wtfree import sharding, workdir
    from wtfree.models import mlp

    model = mlp.Model(num_classes=3, widths=(4,), rule="wm")
    mesh = sharding.make_mesh(1)
    config = _config("wm")
    state_step = kinds.get(rules.MIRROR).make_state_step(model, mesh, config, (2, 2, 1))
    assert (state_step.every, state_step.pretrain) == (3, 5) and callable(state_step.step)
    assert kinds.get(rules.MIRROR).step_extra(config) is None

    extra = kinds.get(rules.LOSS).step_extra(_config("sa"))
    assert extra.name == "train/alignment_loss" and extra.mutable == (layers.ALIGNMENT_LOSS,)
    state = {"rng": jax.random.key(0), "step": jnp.int32(4)}
    assert extra.rngs(state) == {}  # fed the layers' own inputs: no noise drawn
    noisy = kinds.get(rules.LOSS).step_extra(_config("sa", **{"alignment.input": "uniform"}))
    # The one stream of the alignment noise: the distribution is the model's own value.
    assert set(noisy.rngs(state)) == {layers.ALIGNMENT_RNG}
    assert kinds.get(rules.LOSS).make_state_step(model, mesh, config, (2, 2, 1)) is None
    with pytest.raises(ValueError, match="^alignment.input='cauchy'; allowed: activations"):
        kinds.get(rules.LOSS).step_extra(_config("sa", **{"alignment.input": "cauchy"}))

    for name in (rules.NONE, rules.FIXED, rules.GRADIENT):
        kind = kinds.get(name)
        assert kind.step_extra(config) is None and kind.section is None
        assert kind.make_state_step(model, mesh, config, (2, 2, 1)) is None
    assert workdir.read_by() == {"mirror.": rules.MIRROR, "alignment.": rules.LOSS}


def test_a_step_extra_adds_its_loss_to_the_gradient_and_its_measurement():
    """A kind's extra in train.py's step: its loss (here c times the output layer's angle of B
    to W, read from the collection the extra makes mutable) enters W's gradient and nothing
    else, and its value is logged under its name; a stream the layers never read changes
    nothing."""
    from wtfree import optim, steps
    from wtfree.models import mlp

    model = mlp.Model(num_classes=3, widths=(4,), rule="fa")
    shape = (2, 2, 2, 1)
    variables, flags = steps.init_variables(model, jax.random.key(0), shape)
    tx = optim.make_optimizer(0.1, flags)
    state = steps.init_state(model, tx, jax.random.key(1), shape)
    batch = {"image": jax.random.normal(jax.random.key(2), shape), "label": jnp.array([0, 2])}

    def weight_angle_loss(sown):
        # The output layer's angle of B to W, sown when ALIGNMENT is mutable: a loss of W.
        return 0.01 * sown[layers.ALIGNMENT]["output"]["weight_angle"]

    extra = kinds.StepExtra(
        "train/angle",
        mutable=(layers.ALIGNMENT,),
        rngs=lambda state: {"unused": jax.random.fold_in(state["rng"], 9)},
        loss=weight_angle_loss,
    )
    plain, plain_m = steps.make_train_step(model, tx, "softmax_xent")(state, batch)
    extended, m = steps.make_train_step(model, tx, "softmax_xent", extras=[extra])(state, batch)
    assert float(m["train/loss"]) == float(plain_m["train/loss"])
    w = state["params"]["output"]["kernel"]
    b = state["feedback"]["output"]["feedback_kernel"]
    np.testing.assert_allclose(m["train/angle"], 0.01 * metrics.angle(b, w), rtol=1e-5)
    # The extra's gradient (SGD, lr 0.1, no momentum) is the difference of the two updates.
    want = -0.1 * jax.grad(lambda w: 0.01 * metrics.angle(b, w))(w)
    got = extended["params"]["output"]["kernel"] - plain["params"]["output"]["kernel"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(
        extended["params"]["hidden_0"]["kernel"], plain["params"]["hidden_0"]["kernel"]
    )


def test_a_new_kind_is_one_object_its_hooks_reach_layer_step_and_optimizer(monkeypatch):
    """A kind defined here alone (no other file touched; registered by patching the registry,
    as its one line there would) trains B through wtfree.make_train_step: its layers sow
    |B|^2 (``sow``, reading its own keyword of apply_rule's settings), its ``loss`` is c times
    their sum with c from the settings the step takes under ``settings_name`` (default from
    ``default_settings``), and the optimizer moves B along that loss alone (``ALIGN``). One SGD
    step of rate lr is then B (1 - 2 c lr) in closed form; W gets fa's update."""
    import dataclasses

    import flax.linen as nn
    import optax

    import wtfree

    @dataclasses.dataclass(frozen=True)
    class Shrink:
        c: float = 0.5

    def sow(call):
        if call.sowing and call.module.is_mutable_collection("toy"):
            value = call.settings.get("toy_scale", 1.0) * jnp.sum(jnp.square(call.b))
            call.module.sow("toy", call.feedback_name, value, reduce_fn=layers.keep_last)

    def loss(model, sown, settings):
        del model
        return settings.c * sum(jax.tree.leaves(sown.get("toy", {})))

    toy = kinds.Kind(
        "toy",
        stores_feedback=True,
        label=kinds.ALIGN,
        sow=sow,
        settings_name="shrink",
        default_settings=Shrink,
        mutable=("toy",),
        loss=loss,
    )
    registry = kinds._registry()
    monkeypatch.setattr(kinds, "_registry", lambda: {**registry, "toy": toy})
    fa = rules.get("fa")
    monkeypatch.setitem(
        rules.RULES, "toy_fa", dataclasses.replace(fa, name="toy_fa", feedback="toy")
    )

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(6, name="hidden")(x))
            return nn.Dense(3, name="output")(x)

    def mse(outputs, batch):
        return jnp.mean(jnp.square(outputs - batch["y"]))

    model = wtfree.convert(Mlp(), "toy_fa")
    x = jax.random.normal(jax.random.key(0), (8, 5))
    batch = {"image": x, "y": jnp.ones((8, 3))}
    variables = model.init(jax.random.key(1), x)
    lr = 0.1
    tx = wtfree.optimizer(optax.sgd(lr), variables)
    b0 = variables["feedback"]["output"][layers.FEEDBACK_KERNEL]
    for settings, c in (({}, Shrink().c), ({"shrink": Shrink(2.0)}, 2.0)):
        state = wtfree.init_train_state(variables, tx)
        step = jax.jit(wtfree.make_train_step(model, tx, mse, **settings))
        state, measurements = step(state, batch, jax.random.key(2))
        b1 = state["variables"]["feedback"]["output"][layers.FEEDBACK_KERNEL]
        np.testing.assert_allclose(b1, (1 - 2 * c * lr) * b0, rtol=1e-5, atol=1e-7)
        expected = c * sum(
            float(jnp.sum(jnp.square(f[layers.FEEDBACK_KERNEL])))
            for f in variables["feedback"].values()
        )
        np.testing.assert_allclose(measurements["alignment_loss"], expected, rtol=1e-5)
        # W still learns from the task loss (the hidden layer reads the input: bp, no B).
        assert not np.allclose(
            state["variables"]["params"]["hidden"]["kernel"],
            variables["params"]["hidden"]["kernel"],
        )
    with pytest.raises(
        ValueError, match="make_train_step got shrunk; allowed: alignment, mirror, shrink$"
    ):
        wtfree.make_train_step(model, tx, mse, shrunk=Shrink())
