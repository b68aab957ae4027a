"""Checkpoint conversion framework: source registry, loading, key renaming, strict verification.

A *converter* turns the state dict of a public implementation (the official SOLO code,
mmdetection, the detectron2 SOLOv2 port, CoinCheung's BiSeNet, torchvision) into the state
dict of a solo_d2 model, and names the solo_d2 config whose model computes what the source
computes. :func:`convert_checkpoint` then builds that model, checks that the converted
weights load with zero missing and zero unexpected keys (and equal shapes), and only then
writes a Detectron2 checkpoint ``{"model": state_dict, ...}``; nothing is written on failure.
"""

import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.modeling import build_model

from ..config import get_cfg
from ..model_zoo import get_config_file

__all__ = [
    "Conversion",
    "ConversionError",
    "CONVERTERS",
    "register_converter",
    "load_checkpoint_file",
    "load_checkpoint_with_meta",
    "read_checkpoint_dict",
    "rename_keys",
    "expected_state_shapes",
    "verify_state_dict",
    "config_file_of",
]

StateDict = Dict[str, torch.Tensor]


class ConversionError(ValueError):
    """A checkpoint that cannot be converted or does not fit the target config."""


@dataclass
class Conversion:
    """Result of a converter.

    Attributes:
        state_dict: solo_d2 parameter/buffer names -> tensors.
        config: the matching config, relative to the repository root
            (e.g. ``"configs/Converted/AdelaiDet_SOLOv2_R50_3x.yaml"``).
        opts: config overrides (``KEY VALUE`` pairs, flattened) that the source checkpoint
            implies beyond the config, e.g. ``["MODEL.SOLO.NUM_CLASSES", "20"]``.
        notes: human-readable remarks printed by the tool.
        backbone_only: the weights only initialize the config's backbone (an ImageNet ResNet):
            checked against the backbone's parameters and written as a Detectron2 ``.pkl``.
        prefix: the weights are a part of the model (e.g. ``"backbone."``): verified strictly
            against the model's keys under that prefix; the rest of the model keeps its init.
    """

    state_dict: StateDict
    config: str
    opts: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    backbone_only: bool = False
    prefix: str = ""


@dataclass
class _Converter:
    name: str
    description: str
    fn: Callable[[StateDict], Conversion]


CONVERTERS: Dict[str, _Converter] = {}


def register_converter(name: str, description: str):
    """Decorator: register ``fn(state_dict) -> Conversion`` as source ``name``.

    A converter may also take keyword arguments ``config`` and ``opts`` (the config named with
    ``--config-file`` and the overrides given with it, which it then checks the checkpoint
    against) and ``meta`` (the checkpoint's ``meta`` dict, e.g. mmcv's training config text);
    :func:`convert_checkpoint` passes those it accepts."""

    def deco(fn):
        if name in CONVERTERS:
            raise KeyError(f"checkpoint source {name!r} registered twice")
        CONVERTERS[name] = _Converter(name, description, fn)
        return fn

    return deco


# ----------------------------------------------------------------------------- loading
def _to_tensors(obj, path: str, prefix: str = "") -> StateDict:
    out = {}
    for k, v in obj.items():
        if isinstance(v, dict):  # nested state dicts, e.g. {"detail": {...}, "segment": {...}}
            out.update(_to_tensors(v, path, f"{prefix}{k}."))
            continue
        k = prefix + k
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, torch.Tensor):
            raise ConversionError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v
    return out


def load_checkpoint_file(path: str) -> StateDict:
    """Read a checkpoint file as a flat ``{key: tensor}`` dict
    (see :func:`load_checkpoint_with_meta`)."""
    return load_checkpoint_with_meta(path)[0]


def read_checkpoint_dict(path: str) -> Dict:
    """The top-level dict pickled in checkpoint file ``path``, unchanged (how each file type is
    read: :func:`load_checkpoint_with_meta`)."""
    if not os.path.isfile(path):
        raise ConversionError(f"checkpoint file not found: {path}")
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            warnings.warn(
                f"{path}: torch.load(weights_only=True) refused it ({str(e).splitlines()[0]}); "
                "loading with weights_only=False, which can execute code from the file"
            )
            obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def load_checkpoint_with_meta(path: str) -> Tuple[StateDict, Dict]:
    """Read a checkpoint file as a flat ``{key: tensor}`` dict and its ``meta`` dict (mmcv
    checkpoints: ``{"meta": {"config": <config file text>, ...}, "state_dict": ...}``; ``{}``
    when there is none).

    ``.pth``/``.pt``/``.tar``: ``torch.load(..., weights_only=True)``; a checkpoint whose
    pickle holds other objects (e.g. mmcv's ``meta`` with numpy scalars or an optimizer
    state) is refused by that loader, and is then read with ``weights_only=False`` *after a
    warning*, since it can run code: only do this for files you trust. ``.pkl``: Detectron2 /
    Caffe2 pickles of numpy arrays (``{"model": {...}}`` or flat). The state dict is taken
    from ``"state_dict"`` (mmcv), else ``"model"`` (Detectron2), else the top level; nested
    dicts are flattened with ``.``-joined keys and a ``module.`` prefix on every key is removed.
    """
    obj = read_checkpoint_dict(path)
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    else:
        meta = {}  # a flat state dict: a "meta" entry would be a tensor name
    state = _to_tensors(obj, path)
    # checkpoints saved from DataParallel / DDP wrappers
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, meta


# ----------------------------------------------------------------------------- renaming
Rule = Tuple[str, "str | Callable[[re.Match], str]"]


def rename_keys(
    state: StateDict,
    rules: Sequence[Rule],
    *,
    source: str,
    drop: Sequence[str] = (),
) -> StateDict:
    """Rename every key by the first regex rule that matches it (``re.fullmatch``).

    Args:
        state: source state dict.
        rules: ``(pattern, replacement)`` pairs; a replacement is a template with ``\\1``
            groups or a function of the match.
        source: source layout name, for errors.
        drop: patterns of keys to discard (e.g. ``fc\\..*`` of an ImageNet classifier).

    Raises:
        ConversionError listing every key that no rule matches (this is how a checkpoint of
        another source or variant is recognized), or two keys mapped to one name.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    dropped = [re.compile(p) for p in drop]
    out: StateDict = {}
    unknown = []
    for key, value in state.items():
        if any(d.fullmatch(key) for d in dropped):
            continue
        for pat, repl in compiled:
            m = pat.fullmatch(key)
            if m:
                new = repl(m) if callable(repl) else m.expand(repl)
                if new in out:
                    raise ConversionError(
                        f"{source}: keys map twice to {new!r} (last from {key!r})"
                    )
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"not a {source} checkpoint of a supported variant: {len(unknown)} keys match no "
            f"{source} name: {_short_list(unknown)}"
        )
    return out


def _short_list(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def require_keys(state: StateDict, keys: Iterable[str], *, source: str) -> None:
    """Raise ConversionError naming ``source`` if any of ``keys`` is missing."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise ConversionError(f"not a {source} checkpoint: missing {_short_list(missing)}")


# ----------------------------------------------------------------------------- verification
def config_file_of(config: str) -> str:
    """Absolute path of a config named relative to the repository root (``configs/...``)
    or to the configs folder, in a checkout or an installed package."""
    if os.path.isfile(config):
        return config
    rel = config[len("configs/") :] if config.startswith("configs/") else config
    return get_config_file(rel)


def build_cfg(config: str, opts: Sequence[str] = (), *, device: str = "cpu"):
    """The full config of ``config`` (see :func:`config_file_of`) merged with ``opts``, for a
    model of random weights on ``device``: ``MODEL.DEVICE`` and ``MODEL.WEIGHTS`` are set
    after ``opts`` (conversion and its checks build on the CPU)."""
    cfg = get_cfg()
    cfg.merge_from_file(config_file_of(config))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    return cfg


def expected_state_shapes(
    config: str, opts: Sequence[str] = (), prefix: str = ""
) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of the state dict of the model that ``config`` (+ ``opts``) builds
    (only the keys starting with ``prefix``)."""
    model = build_model(build_cfg(config, opts))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(prefix)}


def verify_state_dict(
    state: StateDict,
    config: str,
    opts: Sequence[str] = (),
    *,
    source: str = "",
    prefix: str = "",
    expected: Optional[Dict[str, Tuple[int, ...]]] = None,
) -> None:
    """Raise ConversionError unless ``state`` loads strictly (keys and shapes) into ``config``'s
    model (or into its part under ``prefix``). ``expected``: the model's
    :func:`expected_state_shapes`, when the caller already built it."""
    if expected is None:
        expected = expected_state_shapes(config, opts, prefix)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or wrong:
        parts = [
            f"converted {source or 'checkpoint'} does not fit {config}"
            + (f" {list(opts)}" if opts else "")
        ]
        if missing:
            parts.append(f"{len(missing)} missing: {_short_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_short_list(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches: {'; '.join(wrong[:6])}")
        raise ConversionError("\n  ".join(parts))


def _match_bn_counters(state: StateDict, expected: Dict[str, Tuple[int, ...]]) -> StateDict:
    """``num_batches_tracked`` counters carry no weights: drop those the target model (e.g. with
    FrozenBN) lacks and add zero counters for BatchNorm layers whose source had none."""
    out = {
        k: v
        for k, v in state.items()
        if not (k.endswith("num_batches_tracked") and k not in expected)
    }
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.tensor(0, dtype=torch.int64)
    return out
