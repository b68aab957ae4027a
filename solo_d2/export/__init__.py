"""TorchScript and ONNX export of every solo_d2 model (see ``tools/export_model.py``).

- :class:`SOLOExportWrapper`: SOLO / Decoupled SOLO / SOLOv2, one image ``[3, H, W]`` in,
  fixed-size ``masks, scores, classes, boxes, num_detections`` out, Matrix NMS in the graph.
- :class:`BiSeNetExportWrapper`: BiSeNet V1/V2, images ``[N, 3, H, W]`` in, logits
  ``[N, K, H, W]`` (or labels ``[N, H, W]`` with ``argmax``) out.
"""

from ..modeling.backbone.dcn import DeformConvBase
from ..modeling.bisenet.segmentor import BiSeNetSegmentor
from ..modeling.solo.meta_arch import SOLO
from ..modeling.solo.panoptic import SOLOPanoptic
from .bisenet import BiSeNetExportWrapper
from .common import DEFAULT_OPSET, check_onnx, export_onnx, export_torchscript
from .solo import SOLO_OUTPUT_NAMES, SOLOExportWrapper

__all__ = [
    "BiSeNetExportWrapper",
    "SOLOExportWrapper",
    "SOLO_OUTPUT_NAMES",
    "DEFAULT_OPSET",
    "export_wrapper",
    "export",
    "check_onnx",
    "export_onnx",
    "export_torchscript",
]


def export_wrapper(model, *, argmax: bool = False):
    """The export wrapper of a built solo_d2 model (``SOLO`` or ``BiSeNetSegmentor``),
    in eval mode."""
    if isinstance(model, SOLOPanoptic):  # a SOLO subclass: its graph would silently drop the stuff
        raise TypeError(
            "SOLOPanoptic is not exported: the panoptic merge pastes a data-dependent "
            "set of instances (docs/EXPORT.md); export the instance model (its SOLO "
            "config) or run it in PyTorch"
        )
    if isinstance(model, SOLO):
        return SOLOExportWrapper(model).eval()
    if isinstance(model, BiSeNetSegmentor):
        return BiSeNetExportWrapper(model, argmax=argmax).eval()
    raise TypeError(
        f"no export wrapper for {type(model).__name__} (SOLO and BiSeNetSegmentor are supported)"
    )


def export(wrapper, sample, path: str, fmt: str, *, opset: int = DEFAULT_OPSET):
    """Write ``wrapper`` traced on ``sample`` to ``path`` as ``fmt`` ('torchscript' or 'onnx')
    with dynamic height and width (and batch for BiSeNet)."""
    if fmt == "torchscript":
        return export_torchscript(wrapper, sample, path)
    if fmt != "onnx":
        raise ValueError(f"format must be 'torchscript' or 'onnx', got {fmt!r}")
    if any(isinstance(m, DeformConvBase) for m in wrapper.modules()):
        raise ValueError(
            "this model has deformable convolutions (DCN), which the ONNX exporter cannot "
            "convert (torchvision::deform_conv2d has no ONNX symbolic here); export it "
            "with --format torchscript"
        )
    if isinstance(wrapper, SOLOExportWrapper):
        axes = {"image": {1: "height", 2: "width"}, "masks": {1: "height", 2: "width"}}
        return export_onnx(
            wrapper,
            sample,
            path,
            input_name="image",
            output_names=SOLO_OUTPUT_NAMES,
            dynamic_axes=axes,
            opset=opset,
        )
    out = "labels" if wrapper.argmax else "logits"
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes[out] = {0: "batch", 1 + (not wrapper.argmax): "height", 2 + (not wrapper.argmax): "width"}
    return export_onnx(
        wrapper,
        sample,
        path,
        input_name="images",
        output_names=[out],
        dynamic_axes=axes,
        opset=opset,
    )
