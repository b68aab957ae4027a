"""Models built from a config for tests."""

import torch
from detectron2.modeling import build_model

from solo_d2.checkpoint.core import build_cfg


def random_model(config, *opts, device="cpu"):
    """``config``'s model with random weights (seed 0) on ``device``, and its config."""
    cfg = build_cfg(config, opts, device=device)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert next(model.parameters()).device.type == torch.device(device).type
    return cfg, model
