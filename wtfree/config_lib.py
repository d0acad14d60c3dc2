"""Config helpers: the `:arg` string of config files, and up-front checks of every name."""

import ml_collections

from wtfree import data, metrics, models, optim, rules
from wtfree.models import resnet


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
            result[key] = value.lower() in ("1", "true", "yes")
        elif default is None:
            result[key] = value
        else:
            result[key] = type(default)(value)
    return ml_collections.ConfigDict(result)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError, one line naming the bad value and the allowed ones, for any unknown
    rule, model, dataset, loss or schedule, before anything is built."""
    rules.get(config.rule)
    if config.get("output_rule"):
        rules.get(config.output_rule)
    models.get(config.model)
    if config.dataset not in data.DATASETS:
        raise ValueError(
            f"unknown dataset {config.dataset!r}; "
            f"known datasets: {', '.join(sorted(data.DATASETS))}"
        )
    metrics.get_loss(config.loss)
    optim.make_schedule(config.optimizer.schedule, 0.1, total_steps=10)
    rule = rules.get(config.rule)
    output_rule = config.get("output_rule")
    if rule.direct and output_rule not in (None, "", "bp") and not rules.get(output_rule).direct:
        raise ValueError(f"output_rule={output_rule!r} with rule={rule.name}; allowed: bp")
    if rule.direct and not rule.block_wise:
        num_classes, image_shape = data.image_spec(config.dataset)
        model = models.get(config.model)(
            num_classes=num_classes, rule=config.rule, **dict(config.get("model_kwargs", {}))
        )
        if isinstance(model, resnet.Model):
            resnet.check_direct_feedback(model, image_shape)
    for key in ("batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        if config[key] <= 0:
            raise ValueError(f"{key}={config[key]}; must be a positive integer")
