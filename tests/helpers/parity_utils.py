"""Helpers shared by the parity tests: rebuild a fixture's reference-format weights.

A parity fixture (``tests/data/<name>/manifest.json``, format described in the fixture's
README) lists every ``[key, shape, dtype]`` of the reference model's state dict; the weights
themselves are not stored but follow the deterministic rule ``crc32-v1``, re-implemented here.
"""

import json
import math
import os
import zlib
from collections import OrderedDict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from solo_d2.config import get_cfg
from tests.helpers import DATA_DIR, REPO_ROOT

__all__ = ["DATA_DIR", "load_manifest", "rule_tensor", "rule_state_dict"]


def load_manifest(name: str) -> dict:
    """``tests/data/<name>/manifest.json`` as a dict."""
    with open(os.path.join(DATA_DIR, name, "manifest.json")) as f:
        return json.load(f)


def rule_tensor(key: str, shape) -> torch.Tensor:
    """The ``crc32-v1`` value of state-dict entry ``key`` with ``shape`` (float32,
    or int64 counters).

    The generator is seeded with the CRC-32 of the key, so every tensor is independent of the
    others and of the order in which they are made.
    """
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    s = tuple(int(v) for v in shape)
    if key.endswith("num_batches_tracked"):
        return torch.tensor(0, dtype=torch.int64)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(s, generator=g)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(s, generator=g)
    if len(s) == 1:
        if key.endswith("weight"):
            return 1.0 + 0.1 * torch.randn(s, generator=g)
        return 0.1 * torch.randn(s, generator=g)
    return torch.randn(s, generator=g) / math.sqrt(math.prod(s[1:]))


def rule_state_dict(manifest: dict) -> "OrderedDict[str, torch.Tensor]":
    """The reference model's state dict of a fixture: ``crc32-v1`` for every manifest entry (in the
    manifest's order), then ``manifest["bias_offset"]`` (``{key: value}``, optional) added."""
    if manifest.get("weight_rule", "crc32-v1") != "crc32-v1":
        raise ValueError(f"unsupported weight rule {manifest['weight_rule']!r}")
    state = OrderedDict()
    for key, shape, dtype in manifest["state_dict"]:
        value = rule_tensor(key, shape)
        expected = torch.int64 if dtype == "int64" else torch.float32
        if value.dtype != expected:
            raise ValueError(f"{key}: rule gives {value.dtype}, manifest says {dtype}")
        state[key] = value
    for key, offset in manifest.get("bias_offset", {}).items():
        if key not in state:
            raise KeyError(f"bias_offset names {key!r}, which is not in the state dict")
        state[key] = state[key] + offset
    return state


def save_reference(tmp_path, state, name="reference.pth"):
    path = tmp_path / name
    torch.save(dict(state), path)
    return path


def build_converted(config, weights):
    """Model of ``config`` (relative to the repo root)
    with the converted checkpoint loaded strictly."""
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / config))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    stored = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    expected = model.state_dict()
    assert set(stored) == set(expected), "the converted checkpoint must fill the model exactly"
    assert all(tuple(stored[k].shape) == tuple(v.shape) for k, v in expected.items())
    DetectionCheckpointer(model).load(str(weights))
    for k, v in model.state_dict().items():  # the checkpointer really loaded every tensor
        assert torch.equal(v, stored[k].to(v.dtype)), k
    return cfg, model
