"""Pieces shared by the export wrappers: traceable normalization and padding, and the
two exporters (TorchScript through ``torch.jit.trace``, ONNX through the TorchScript-based
``torch.onnx.export`` with dynamic height and width).

Everything here is written for tracing: sizes come from ``tensor.shape`` (recorded as
``aten::size`` by the tracer, so they stay dynamic) and no Python ``if`` looks at a
tensor value.
"""

import os
import warnings
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_OPSET", "pad_to_multiple", "export_torchscript", "export_onnx", "check_onnx"]

#: ONNX opset of the exported graphs (Resize with ``half_pixel``, TopK, NonZero, Einsum...).
DEFAULT_OPSET = 17


def pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Pad ``[..., H, W]`` with zeros at the bottom and right to multiples of ``divisor``
    (as ``ImageList.from_tensors`` pads the normalized images; a zero pad is a no-op)."""
    d = max(int(divisor), 1)
    h, w = x.shape[-2], x.shape[-1]
    ph = (h + (d - 1)) // d * d
    pw = (w + (d - 1)) // d * d
    return F.pad(x, [0, pw - w, 0, ph - h], value=0.0)


def export_torchscript(
    wrapper: torch.nn.Module, sample: torch.Tensor, path: str
) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` the wrapper on ``sample`` and save it to ``path``."""
    wrapper = wrapper.eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (sample,), check_trace=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    traced.save(path)
    return traced


def export_onnx(
    wrapper: torch.nn.Module,
    sample: torch.Tensor,
    path: str,
    *,
    input_name: str,
    output_names: Sequence[str],
    dynamic_axes: Dict[str, Dict[int, str]],
    opset: int = DEFAULT_OPSET,
) -> str:
    """Export with the TorchScript-based exporter (``dynamo=False``) and check the file with
    ``onnx.checker``. Returns ``path``."""
    wrapper = wrapper.eval()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter
        torch.onnx.export(
            wrapper,
            (sample,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    check_onnx(path)
    return path


def check_onnx(path: str):
    """``onnx.checker.check_model`` on the file (full check, shape inference included)."""
    import onnx

    onnx.checker.check_model(onnx.load(path), full_check=True)
