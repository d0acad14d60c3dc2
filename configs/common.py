"""What every config shares: the keys wtfree.trainer and .loop read, with their usual values."""

import ml_collections

from wtfree.rules import alignment

placeholder = ml_collections.config_dict.placeholder


def base_config(
    *,
    rule: str,
    dataset: str,
    model: str,
    batch_size: int,
    num_epochs: int,
    learning_rate: float,
    output_rule: str | None = None,
) -> ml_collections.ConfigDict:
    """A config with every key; experiments override what they need."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.dataset = dataset
    config.data_dir = placeholder(str)
    config.idx_dir = placeholder(str)  # MNIST-family IDX files instead of TFDS
    config.augment = False
    # Inputs as (pixel / 255 - mean) / std per channel instead of the dataset's own normalization
    # (none for the MNIST family: pixel / 255); both or neither, a number or one per channel.
    config.input_mean = placeholder(object)
    config.input_std = placeholder(object)

    config.model = model
    config.model_kwargs = ml_collections.ConfigDict()
    config.rule = rule
    config.output_rule = output_rule or placeholder(str)  # None: `rule`
    config.dtype = "float32"
    config.loss = "softmax_xent"

    config.batch_size = batch_size  # global
    config.eval_batch_size = 1000
    config.eval_steps = 0  # > 0: evaluate on the first eval_steps batches only
    config.num_epochs = num_epochs
    config.num_train_steps = 0  # > 0 overrides num_epochs

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = learning_rate
    config.optimizer.momentum = 0.0
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 0.0
    # The leaves weight decay applies to (wtfree.optim.DECAY_MASKS): None, the kernels (W and a
    # trained B), or on a resumed workdir the mask it recorded; "rank": every leaf of rank >= 2,
    # which runs started before 2026-12-04 10:33 UTC (commit db475b5) used.
    config.optimizer.weight_decay_mask = placeholder(str)
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_epochs = 0.0
    config.optimizer.boundaries = ()

    config.mirror = ml_collections.ConfigDict()
    set_mirror(config, batch_size=128, pretrain_batches=0, decay=0.1)

    config.alignment = ml_collections.ConfigDict()
    set_alignment(config)

    config.log_every_steps = 100
    config.eval_every_steps = 10**9  # besides every epoch's end
    config.checkpoint_every_steps = 1000
    # Train steps per jitted call (a lax.scan over stacked batches); 0: automatic
    # (wtfree.trainer.Trainer.steps_per_dispatch). Results do not depend on it.
    config.steps_per_dispatch = 0
    config.keep_checkpoints = 3
    config.init_from = placeholder(str)
    config.num_devices = placeholder(int)
    return config


def set_mirror(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    pretrain_batches: int,
    decay: float,
    noise_std: float = 1.0,
    every: int = 1,
    learning_rate: float | None = None,
    noise: str = "rademacher",
    per_layer_batch: bool = False,
) -> None:
    """Weight-mirror settings (rule=wm): a mirror batch of ``batch_size`` noise vectors per
    device every ``every`` steps, and ``pretrain_batches`` before training.

    B's fixed point is ``learning_rate * batch_size * noise_std**2 / decay`` times W (the
    Hebbian product sums over the batch and averages over a conv's positions), so the default
    learning rate, ``decay / (batch_size * noise_std**2)``, settles B at W itself in every layer.

    The decay also sets how far B lags W: B is an average of W over the last ``every / decay``
    steps. docs/weight_mirrors.md measured a lag of 30-100 steps blowing LeNet up at
    backprop's learning rate, and 10 steps training; hence the default decay 0.1 (lag 10). B's
    estimation noise grows with ``decay / batch_size``: a larger decay wants a larger batch
    where layers are wide and have no conv positions to average over.

    ``noise``: the distribution of the noise, ``rademacher`` (+-noise_std, the default),
    ``normal`` or ``uniform``, each with independent entries of mean 0 and std ``noise_std``.
    Rademacher noise takes one random bit an entry, 10-25x cheaper to draw on CPU than normal
    noise, and trained as normal noise does wherever both were measured (the seed MLP, LeNet,
    ResNet-8 over 3 seeds: README, "Weight mirrors: the noise"). Workdirs recorded with normal
    noise, the default until issue 20, resume with it (``wtfree.workdir.CHANGED_DEFAULTS``).

    ``per_layer_batch``: each mirrored layer draws its own number of noise vectors, at most
    ``batch_size``: the fewest that leave its B as noisy as the noisiest layer's B is with
    ``batch_size`` (README's closed form, ``wtfree.rules.mirror_error``: B's relative squared
    error is ``decay / (2 - decay) * (d + 1) / (n * P)`` for a layer of fan-in d and P output
    positions, so a conv layer averaging over many positions needs few vectors;
    ``wtfree.kinds.mirror.hebbian_products``). The learning rate stays
    ``decay / (batch_size * noise_std**2)``: each layer's Hebbian product is scaled to
    ``batch_size`` vectors, so every B still settles at W. False (the default, and what
    workdirs recorded before the key existed resume with): every layer gets ``batch_size``.
    On LeNet (configs/mnist_lenet.py) a wm step then costs 0.8-1.3x a bp step instead of 3.0-3.3x
    (docs/conv_speed.md), with every B 20 degrees from W (docs/weight_mirrors.md).
    """
    m = config.mirror
    m.batch_size = batch_size
    m.pretrain_batches = pretrain_batches
    m.every = every
    m.decay = decay
    m.noise_std = noise_std
    m.noise = noise
    m.per_layer_batch = per_layer_batch
    m.learning_rate = (
        decay / (batch_size * noise_std**2) if learning_rate is None else learning_rate
    )


def set_alignment(
    config: ml_collections.ConfigDict,
    *,
    input: str = "activations",
    input_std: float = 1.0,
    learning_rate_scale: float = 1.0,
    positions: str = "sum",
    momentum: float = -1.0,
) -> None:
    r"""Alignment-loss settings (rules sa, aa, ia, wm_reg; Kunin et al. 2020).

    ``input``: what each layer's alignment loss is fed: ``activations`` (the layer's own input,
    gradient stopped; the authors' default) or ``normal`` / ``uniform`` noise of std
    ``input_std`` (as the mirror mode). ``coefficients.<rule>.{alpha,beta,gamma}``: each rule's
    weights, by default those of the authors' code (``wtfree.rules.alignment`` says which
    primitive each weighs and where the values come from).

    ``learning_rate_scale`` s: B's step size is s times W's (same schedule and momentum), so
    the coefficients say where B's minimum lies and s how fast B gets there: SA's B relaxes to
    it by :math:`2\alpha s\eta_t/(1-\mu)` a step, so over the run its distance from it
    shrinks by :math:`\exp(-2\alpha s\sum_t\eta_t/(1-\mu))` (README, "Alignment rules",
    on choosing s from that budget). 1, the default, is the authors' (their B shares W's
    optimizer unless ``alignment_optimizer`` is set).

    ``positions``: ``sum`` (the authors' convention: the primitives that read x sum over a
    conv's output positions, so on a conv of P positions they weigh P times what they weigh
    on a dense layer) or ``mean`` (divided by P, as the mirror mode's Hebbian product).

    ``momentum``: B's heavy-ball momentum; negative (the default, the authors'): W's, the
    optimizer's. Momentum caps how fast B can follow its minimum (``optim.make_optimizer``);
    with 0, s can put B on it in one step (SA: :math:`2\alpha s\eta = 1`).
    """
    a = config.alignment
    a.input = input
    a.input_std = input_std
    a.learning_rate_scale = learning_rate_scale
    a.positions = positions
    a.momentum = momentum
    a.coefficients = ml_collections.ConfigDict(
        {name: dict(rule.defaults) for name, rule in alignment.ALIGNMENTS.items()}
    )


def set_runlocal(config: ml_collections.ConfigDict, *, batch_size: int, steps: int) -> None:
    """A few small steps, to see a config run on a CPU."""
    config.batch_size = batch_size
    config.num_train_steps = steps
    config.log_every_steps = max(1, steps // 4)
    config.checkpoint_every_steps = steps
    config.eval_steps = 2
    config.mirror.batch_size = 8
    config.mirror.pretrain_batches = 2
