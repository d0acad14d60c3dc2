"""Every config file loads for every rule, passes validation and builds its model (shapes only)."""

import glob
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import pytest

from wtfree import config_lib, data, layers, models, rules, trainer
from wtfree.kinds import settling as settling_kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/*.py only: configs/sweeps/ holds sweep files, not configs; common.py is shared code.
CONFIG_FILES = sorted(
    path
    for path in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    if os.path.basename(path) not in ("common.py", "__init__.py")
)
CONFIG_NAMES = [os.path.splitext(os.path.basename(path))[0] for path in CONFIG_FILES]


def load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_keys() -> set[str]:
    return set(load("mnist_mlp").get_config().keys())


def dataset_shape(config) -> tuple[int, tuple[int, ...]]:
    """(num_classes, image_shape) of the config's dataset, without reading any data."""
    ds = data.get_dataset(
        config.dataset, data_dir=config.get("data_dir"), **config.get("dataset_kwargs", {})
    )
    return ds.num_classes, ds.image_shape


def test_there_are_configs_to_test():
    assert {"mnist_mlp", "mnist_lenet", "cifar10_lenet", "cifar10_resnet20"} <= set(CONFIG_NAMES)
    assert {"imagenet_resnet18", "imagenet_resnet50"} <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_has_the_keys_the_trainer_reads(name):
    config = load(name).get_config()
    assert reference_keys() <= set(config.keys()), reference_keys() - set(config.keys())
    assert load(name).__doc__, f"configs/{name}.py has no docstring"
    assert "python " in load(name).__doc__, "the docstring should show the command"


@pytest.mark.parametrize("rule", rules.names())
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_validates_and_builds_its_model_for_every_rule(name, rule):
    config = load(name).get_config(f"rule={rule}")
    assert config.rule == rule
    residual = config.model in settling_kind.RESIDUAL
    takes = config.model in settling_kind.MODELS and (
        config.model == "mlp" or rule not in settling_kind.CONV_LIMITS
    )
    takes = takes or (residual and rule not in settling_kind.RESIDUAL_LIMITS)
    if rules.get(rule).feedback == rules.SETTLING and not takes:
        # The settling rules' step reads a chain of dense and conv layers (MLP, LeNet), or for
        # ar and pc of residual blocks (wtfree's ResNets).
        allowed = "allowed on a residual net: ar, pc" if residual else "allowed: mlp"
        with pytest.raises(ValueError, match=f"^rule='{rule}' with model=.*{allowed}"):
            config_lib.validate(config)
        return
    if config.model in models.STOCK and rules.get(rule).block_wise:
        # A converted model has no residual blocks to route dfa_block's error between.
        with pytest.raises(ValueError, match=f"^model=.*'{rule}': a converted model has no"):
            config_lib.validate(config)
        return
    if (name, rule) == ("imagenet_resnet50", "dfa"):
        # Per-layer DFA's B would hold 9e9 entries: refused, naming the size (dfa_block fits).
        with pytest.raises(ValueError, match="needs 9,006,592,000 feedback entries"):
            config_lib.validate(config)
        return
    config_lib.validate(config)
    num_classes, image_shape = dataset_shape(config)
    model = trainer.make_model(config, num_classes)
    # Shapes only: tracing the init of even ResNet-50 takes a second, compiling it would not.
    logits, variables = jax.eval_shape(
        lambda: model.init_with_output(
            {"params": jax.random.PRNGKey(0)}, jnp.zeros((2, *image_shape)), train=False
        )
    )
    assert logits.shape == (2, num_classes)
    has_feedback = bool(jax.tree.leaves(variables.get(layers.FEEDBACK, {})))
    assert has_feedback == rules.get(rule).stores_feedback


RUNLOCAL_NAMES = [n for n in CONFIG_NAMES if not n.startswith("mnist_mlp")]


def test_only_the_mlp_configs_lack_runlocal():
    for name in set(CONFIG_NAMES) - set(RUNLOCAL_NAMES):
        with pytest.raises(ValueError, match="runlocal"):
            load(name).get_config("rule=kp,runlocal=True")


@pytest.mark.parametrize("name", RUNLOCAL_NAMES)
def test_runlocal_is_a_few_small_steps(name):
    config = load(name).get_config("rule=kp,runlocal=True")
    assert 0 < config.num_train_steps <= 20
    assert config.batch_size <= 32
    assert config.mirror.pretrain_batches <= 2
    config_lib.validate(config)


@pytest.mark.parametrize("name", ["imagenet_resnet18", "imagenet_resnet50"])
def test_imagenet_configs_follow_the_standard_recipe(name):
    config = load(name).get_config("rule=bp")
    assert config.dtype == "bfloat16" and config.augment
    assert config.optimizer.learning_rate == pytest.approx(0.1 * config.batch_size / 256)
    steps = config.num_epochs  # boundaries as fractions of training: epochs 30, 60, 80 of 90
    assert [round(b * steps) for b in config.optimizer.boundaries] == [30, 60, 80]
    assert config.optimizer.weight_decay == 1e-4 and config.optimizer.momentum == 0.9
    num_classes, _ = dataset_shape(config)
    assert num_classes >= 100  # so the Trainer reports test/accuracy_top5 as well


def test_output_rule_is_explicit_and_overridable():
    for name in ("cifar10_lenet", "cifar10_resnet20", "imagenet_resnet18", "imagenet_resnet50"):
        module = load(name)
        assert module.get_config("rule=fa").output_rule == "fa"
        assert module.get_config("rule=fa,output_rule=bp").output_rule == "bp"


def test_mnist_lenet_takes_the_dataset_as_an_argument():
    module = load("mnist_lenet")
    assert module.get_config("dataset=fashion_mnist").dataset == "fashion_mnist"
    with pytest.raises(ValueError, match="dataset"):
        module.get_config("dataset=cifar10")


# mnist_mlp has the seed's mirror (no decay); lillicrap_mnist inherits it.
@pytest.mark.parametrize(
    "name", [n for n in CONFIG_NAMES if n not in ("mnist_mlp", "lillicrap_mnist")]
)
def test_weight_mirror_settles_b_at_w(name):
    # B -> lr * n * sigma^2 / decay * W in every layer (a conv's H averages over positions).
    m = load(name).get_config("rule=wm").mirror
    assert math.isclose(m.learning_rate * m.noise_std**2 * m.batch_size / m.decay, 1.0)
