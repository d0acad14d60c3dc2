"""Config helpers: the `:arg` string of config files, and up-front checks of every name."""

import ml_collections

from wtfree import data, kinds, layers, metrics, models, optim, rules
from wtfree.models import resnet

_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a config file's ``:key=value,key=value`` argument over ``defaults``.

    Values are converted to the type of their default; an unknown key raises ValueError naming
    the known ones.
    """
    result = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(
                f"bad config argument {item!r}; expected key=value with key in {sorted(defaults)}"
            )
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in _BOOLS:
                raise ValueError(f"{key}={value!r}; allowed: {', '.join(_BOOLS)}")
            result[key] = _BOOLS[value.lower()]
        elif default is None:
            result[key] = value
        else:
            result[key] = type(default)(value)
    return ml_collections.ConfigDict(result)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# (key, test, what is allowed): every range check in one table, so a new key is one line. Keys a
# config does not have are skipped.
RANGES = (
    ("seed", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("eval_batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("eval_steps", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: the whole test set)"),
    ("num_epochs", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("num_train_steps", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: num_epochs)"),
    ("log_every_steps", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("eval_every_steps", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("checkpoint_every_steps", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("steps_per_dispatch", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: automatic)"),
    ("keep_checkpoints", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("num_devices", lambda v: v is None or (_integer(v) and v >= 1), "None or an integer >= 1"),
    ("dtype", lambda v: v in ("float32", "bfloat16", "float16"), "float32, bfloat16, float16"),
    ("optimizer.learning_rate", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("optimizer.momentum", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    (
        "optimizer.weight_decay_mask",
        lambda v: v is None or v in optim.DECAY_MASKS,
        f"None (kernels, or what a resumed workdir recorded), {', '.join(optim.DECAY_MASKS)}",
    ),
    ("optimizer.warmup_epochs", lambda v: _number(v) and v >= 0, "a number >= 0"),
    (
        "optimizer.boundaries",
        lambda v: all(_number(b) and 0 < b < 1 for b in v) and list(v) == sorted(v),
        "increasing fractions of the run in (0, 1)",
    ),
    ("mirror.batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("mirror.pretrain_batches", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("mirror.every", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("mirror.decay", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("mirror.noise_std", lambda v: _number(v) and v > 0, "a number > 0"),
    ("mirror.learning_rate", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("mirror.noise", lambda v: v in rules.MIRROR_NOISES, ", ".join(rules.MIRROR_NOISES)),
    ("mirror.per_layer_batch", lambda v: isinstance(v, bool), "True or False"),
    (
        "model_kwargs.widths",
        lambda v: len(v) >= 1 and all(_integer(w) and w >= 1 for w in v),
        "one or more integers >= 1",
    ),
    ("model_kwargs.kernel_scale", lambda v: _number(v) and v > 0, "a number > 0"),
    (
        "alignment.input",
        lambda v: v in layers.ALIGNMENT_INPUTS,
        ", ".join(layers.ALIGNMENT_INPUTS),
    ),
    ("alignment.learning_rate_scale", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("alignment.positions", lambda v: v in ("sum", "mean"), "sum, mean"),
    ("alignment.momentum", lambda v: _number(v) and v < 1, "a number < 1 (< 0: W's momentum)"),
)

_MISSING = object()


def _lookup(config, key: str):
    for part in key.split("."):
        if not hasattr(config, "get") or part not in config:
            return _MISSING
        config = config[part]
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every name and every value of ``config`` before anything is built.

    Raises:
      ValueError: one line naming the key, its value and what is allowed.
    """
    rules.get(config.rule)
    if config.get("output_rule"):
        rules.get(config.output_rule)
    models.get(config.model)
    kinds.get(rules.get(config.rule).feedback).validate(config)
    models.check_rule(config.model, config.rule, config.get("output_rule"))
    if config.dataset not in data.names():
        raise ValueError(
            f"unknown dataset {config.dataset!r}; known datasets: {', '.join(data.names())}"
        )
    metrics.get_loss(config.loss)
    optim.make_schedule(config.optimizer.schedule, 0.1, total_steps=10)
    rule = rules.get(config.rule)
    output_rule = config.get("output_rule")
    if rule.direct and output_rule not in (None, "", "bp") and not rules.get(output_rule).direct:
        raise ValueError(f"output_rule={output_rule!r} with rule={rule.name}; allowed: bp")
    if rule.direct and not rule.block_wise and config.dataset in data.image_datasets():
        # Per-layer B for every hidden conv: refuse a net whose B would not fit, before any work.
        num_classes, image_shape = data.image_spec(config.dataset)
        model = models.get(config.model)(
            num_classes=num_classes, rule=config.rule, **dict(config.get("model_kwargs", {}))
        )
        if isinstance(model, resnet.Model):
            resnet.check_direct_feedback(model, image_shape)
    for key, ok, allowed in RANGES:
        value = _lookup(config, key)
        try:
            good = value is _MISSING or ok(value)
        except TypeError:  # e.g. len() of a number
            good = False
        if not good:
            raise ValueError(f"{key}={value!r}; allowed: {allowed}")
    if config.num_epochs == 0 and config.get("num_train_steps", 0) == 0:
        raise ValueError("num_epochs=0 and num_train_steps=0; allowed: one of them >= 1")
    if config.get("augment") and not config.dataset.startswith(("cifar", "imagenet")):
        raise ValueError(f"augment=True with dataset={config.dataset}; allowed: cifar, imagenet")
    input_normalization(config)


def input_normalization(
    config: ml_collections.ConfigDict,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``config.input_mean`` and ``input_std`` as per-channel tuples, or None where both are
    unset (the dataset's own normalization).

    Raises:
      ValueError: one line, where only one is set, a value is not a number or one number per
        channel of an image dataset, or a std is not > 0.
    """
    mean, std = config.get("input_mean"), config.get("input_std")
    if mean is None and std is None:
        return None
    if config.dataset not in data.image_datasets():
        raise ValueError(
            f"input_mean={mean!r} with dataset={config.dataset}; allowed: an image dataset "
            f"({', '.join(data.image_datasets())})"
        )
    channels = data.image_spec(config.dataset)[1][-1]
    allowed = f"a number or {channels} per channel (of pixel / 255), with the other one set"
    values = []
    for key, positive in (("input_mean", False), ("input_std", True)):
        value = config.get(key)
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if len(value) not in (1, channels) or not all(
            _number(v) and (v > 0 or not positive) for v in value
        ):
            more = ", each > 0" if positive else ""
            raise ValueError(f"{key}={config.get(key)!r}; allowed: {allowed}{more}")
        values.append(tuple(float(v) for v in value) * (channels // len(value)))
    return values[0], values[1]


def validate_resources(config: ml_collections.ConfigDict) -> None:
    """Checks what ``config`` needs from this machine: devices for ``num_devices``, batch sizes
    that split over the devices and processes, and data that exists and is prepared.

    Raises:
      ValueError: one line naming the key, its value and what is allowed (or how to prepare
        the data).
    """
    import jax

    devices, processes = jax.devices(), jax.process_count()
    n = config.get("num_devices")
    if n is not None:
        if n > len(devices):
            raise ValueError(f"num_devices={n}; allowed: 1..{len(devices)} (the devices seen)")
        if len({d.process_index for d in devices[:n]}) < processes:
            raise ValueError(
                f"num_devices={n} leaves a process without devices; allowed with {processes} "
                f"processes: None (all {len(devices)} devices)"
            )
    num_devices = n or len(devices)
    for key in ("batch_size", "eval_batch_size"):
        value = config.get(key)
        if value is not None and (value % num_devices or value % processes):
            raise ValueError(
                f"{key}={value}; allowed: a multiple of the {num_devices} devices and of the "
                f"{processes} processes"
            )
    _validate_data(config)


def _validate_data(config: ml_collections.ConfigDict) -> None:
    from etils import epath

    for key in ("idx_dir", "data_dir", "init_from"):
        value = config.get(key)
        if value and not epath.Path(value).is_dir():
            raise ValueError(f"{key}={value!r} is not a directory; allowed: an existing directory")
    # Each source checks what it needs (TFDS's prepared files, IDX files, or nothing for data
    # made in memory), with the options it will be made with.
    data.check(
        config.dataset,
        data_dir=config.get("data_dir"),
        idx_dir=config.get("idx_dir"),
        **config.get("dataset_kwargs", {}),
    )
