"""``torchvision-resnet``: a torchvision ImageNet ResNet-18/34/50/101 state dict -> a Detectron2
backbone initialization (``.pkl``).

The output is what Detectron2's own ``tools/convert-torchvision-to-d2.py`` writes:
``{"model": {name: numpy array}, "__author__": "torchvision", "matching_heuristics": True}``
with *unprefixed* ResNet names (``stem.conv1.weight``, ``res2.0.conv1.norm.running_mean``, ...).
``DetectionCheckpointer`` matches them by suffix, so one file initializes the ResNet of every
solo_d2 model: ``backbone.bottom_up.*`` in the SOLO family (ResNet+FPN) and
``backbone.resnet.*`` in BiSeNetV1. The classifier (``fc.*``) and the BatchNorm counters are
dropped. Models using it need torchvision's input convention: RGB, mean
[123.675, 116.28, 103.53], std [58.395, 57.12, 57.375], ``MODEL.RESNETS.STRIDE_IN_1X1 False``
(the named config's overrides say so).

Only the backbone is initialized (heads stay random), so the strict check of
``convert_checkpoint`` does not apply: :func:`verify_backbone_init` checks instead that every
converted tensor lands on a ResNet parameter or buffer of the config's model (same shape) and
that no ResNet weight of the model is left uninitialized (deformable-conv offsets excepted),
and :func:`write_d2_pkl` writes the file. :func:`finish_backbone_conversion` does both; the
driver calls it for conversions marked ``backbone_only``.
"""

import pickle
import re
from typing import Dict, Sequence

import torch
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.modeling import build_model

from ..utils.io import atomic_write
from .core import (
    Conversion,
    ConversionError,
    _short_list,
    build_cfg,
    register_converter,
    rename_keys,
)
from .resnet import torchvision_resnet_rules
from .solo_mmdet import resnet_depth

__all__ = [
    "TORCHVISION_PIXEL_OPTS",
    "convert_torchvision_resnet",
    "verify_backbone_init",
    "write_d2_pkl",
    "finish_backbone_conversion",
]

SOURCE = "torchvision-resnet"

TORCHVISION_PIXEL_OPTS = [
    "MODEL.PIXEL_MEAN",
    "[123.675, 116.28, 103.53]",
    "MODEL.PIXEL_STD",
    "[58.395, 57.12, 57.375]",
    "MODEL.RESNETS.STRIDE_IN_1X1",
    "False",
    "INPUT.FORMAT",
    "RGB",
]

# depth -> (config the backbone is verified against, extra overrides); the R18/R34 configs
# already use torchvision's input convention, the R50/R101 ones are switched to it.
_TARGETS = {
    18: ("configs/SOLOv2/Light448_R18_3x.yaml", []),
    34: ("configs/SOLOv2/Light448_R34_3x.yaml", []),
    50: ("configs/SOLOv2/R50_3x.yaml", TORCHVISION_PIXEL_OPTS),
    101: ("configs/SOLOv2/R101_3x.yaml", TORCHVISION_PIXEL_OPTS),
}

_RESNET_KEY = re.compile(r"(?:^|.*\.)(stem\.conv1|res[2-5]\.\d+)\..*")


@register_converter(
    SOURCE, "torchvision ImageNet ResNet-18/34/50/101 -> Detectron2 backbone initialization (.pkl)"
)
def convert_torchvision_resnet(state) -> Conversion:
    if not state or "conv1.weight" not in state or "layer3.0.conv1.weight" not in state:
        raise ConversionError(
            f"not a {SOURCE} checkpoint (torchvision ResNet state dict: conv1.*, bn1.*, "
            f"layer1..4.*, fc.*): keys like {_short_list(state, 6)}"
        )
    depth = resnet_depth(state, "", source=SOURCE)
    if depth not in _TARGETS:
        raise ConversionError(f"{SOURCE}: ResNet-{depth} is not supported (18, 34, 50, 101)")
    out = rename_keys(
        state,
        torchvision_resnet_rules("", ""),
        source=SOURCE,
        drop=[r"fc\..*", r".*num_batches_tracked"],
    )
    config, opts = _TARGETS[depth]
    return Conversion(
        state_dict=out,
        config=config,
        opts=list(opts),
        notes=[
            f"torchvision ResNet-{depth}: a backbone initialization (heads stay random); use it "
            "with RGB input, torchvision mean/std and MODEL.RESNETS.STRIDE_IN_1X1 False"
        ],
        backbone_only=True,  # the driver calls finish_backbone_conversion
    )


def verify_backbone_init(
    state: Dict[str, torch.Tensor], config: str, opts: Sequence[str] = (), *, source: str = SOURCE
):
    """Raise ConversionError unless ``state`` (unprefixed ResNet names) initializes the whole
    ResNet of ``config``'s model through Detectron2's suffix matching: every tensor matched
    (equal shapes), every ResNet parameter/buffer of the model covered except deformable offsets.

    Returns ``{model_key: checkpoint_key}`` of the matches.
    """
    model_state = build_model(build_cfg(config, opts)).state_dict()
    ckpt = {k: torch.as_tensor(v) for k, v in state.items()}
    aligned = align_and_update_state_dicts(model_state, dict(ckpt), c2_conversion=False)
    by_id = {id(v): k for k, v in ckpt.items()}
    matched = {
        mk: by_id[id(v)] for mk, v in aligned.items() if id(v) in by_id and mk in model_state
    }
    unused = sorted(set(ckpt) - set(matched.values()))
    resnet_keys = [
        k
        for k in model_state
        if _RESNET_KEY.fullmatch(k)
        and ".conv_offset." not in k
        and not k.endswith("num_batches_tracked")
    ]
    uncovered = sorted(set(resnet_keys) - set(matched))
    if unused or uncovered:
        parts = [
            f"converted {source} backbone does not fit {config}"
            + (f" {list(opts)}" if opts else "")
        ]
        if unused:
            parts.append(
                f"{len(unused)} tensors match no model weight of that shape: {_short_list(unused)}"
            )
        if uncovered:
            parts.append(
                f"{len(uncovered)} ResNet weights of the model not initialized: "
                f"{_short_list(uncovered)}"
            )
        raise ConversionError("\n  ".join(parts))
    return matched


def write_d2_pkl(
    state: Dict[str, torch.Tensor], out_path: str, author: str = "torchvision"
) -> None:
    """Write ``{"model": numpy arrays, "__author__": author, "matching_heuristics": True}``
    atomically (nothing is left at ``out_path`` on failure)."""
    if author == "Caffe2":
        raise ValueError("__author__ 'Caffe2' would make Detectron2 rename the keys Caffe2-style")
    with atomic_write(out_path) as f:
        pickle.dump(
            {
                "model": {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()},
                "__author__": author,
                "matching_heuristics": True,
            },
            f,
        )


def finish_backbone_conversion(
    result: Conversion, out_path: str, *, source: str = SOURCE
) -> Conversion:
    """Verification and writing of a ``backbone_only`` conversion (instead of the strict ones)."""
    if not out_path.endswith(".pkl"):
        raise ConversionError(
            f"{source} writes a Detectron2 .pkl (matching heuristics); name the "
            f"output *.pkl, not {out_path}"
        )
    verify_backbone_init(result.state_dict, result.config, result.opts, source=source)
    write_d2_pkl(result.state_dict, out_path)
    return result
