"""Keys shared by every solo_d2 method (:func:`add_common_config`), and :func:`add_key`, the
"add unless present" helper every adder uses. A leaf module: the method adders
(``solo_d2.modeling.{solo,bisenet}.config``) call it, :mod:`solo_d2.config` composes them."""


def add_key(node, key, value):
    """Add ``key`` to ``node`` unless it exists (so adders can run in any order, twice)."""
    if key not in node:
        node[key] = value


def add_common_config(cfg):
    """Keys shared by every solo_d2 method.

    - ``INPUT.RANDOM_SCALE``: [min, max] factor for a random rescale of the whole
      image before cropping (BiSeNet's [0.75, 2]); empty list disables it.
    - ``INPUT.COLOR_JITTER``: brightness/contrast/saturation strength (0 = off).
    - ``SOLVER.POLY_LR_POWER``: power of ``WarmupPolyLR`` (fvcore's polynomial decay).
    - ``SOLVER.HEAD_LR_MULTIPLIER`` / ``SOLVER.HEAD_PARAM_PREFIXES``: learning-rate
      factor for parameters whose names start with one of the prefixes.
    - ``SOLVER.WEIGHT_DECAY_BIAS``: weight decay of biases (None = SOLVER.WEIGHT_DECAY).
    - ``MODEL.SYNC_BN``: wrap the model in SyncBatchNorm for multi-GPU training.
    - ``SOLVER.OPTIMIZER``: ``"SGD"`` (the published recipes) or ``"ADAMW"`` (used by the
      short CPU schedules, which converge much faster with it from scratch).
    - ``DATALOADER.ALLOW_NO_INSTANCES``: train an instance or panoptic model even when the
      training set holds no (non-crowd) instance at all; by default the trainer refuses, since
      such a run learns nothing but "no object" (see docs/CUSTOM_DATA.md).
    """
    add_key(cfg.INPUT, "RANDOM_SCALE", [])
    add_key(cfg.INPUT, "COLOR_JITTER", 0.0)
    add_key(cfg.SOLVER, "POLY_LR_POWER", 0.9)
    add_key(cfg.SOLVER, "HEAD_LR_MULTIPLIER", 1.0)
    add_key(cfg.SOLVER, "HEAD_PARAM_PREFIXES", [])
    add_key(cfg.SOLVER, "WEIGHT_DECAY_BIAS", None)
    add_key(cfg.MODEL, "SYNC_BN", False)
    add_key(cfg.SOLVER, "OPTIMIZER", "SGD")
    add_key(cfg.DATALOADER, "ALLOW_NO_INSTANCES", False)
    return cfg
