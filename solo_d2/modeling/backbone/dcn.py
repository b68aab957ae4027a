"""Deformable convolutions (DCNv1 and modulated DCNv2) on ``torchvision.ops.deform_conv2d``.

Detectron2's own ``DeformConv``/``ModulatedDeformConv`` need its compiled ops; this
module only needs torchvision, which runs deformable convs on CPU and GPU.

- :class:`DeformConv2d`: DCNv1 (Dai et al. 2017): learned sampling offsets, no modulation
  (``deform_conv2d`` called without ``mask``). Its ``conv_offset`` predicts
  ``2 * deform_groups * kh * kw`` channels: a ``(dy, dx)`` pair per kernel point and group
  (18 for a 3x3 conv and one group), the layout of mmcv's ``DeformConvPack``.
- :class:`ModulatedDeformConv2d`: DCNv2 (Zhu et al. 2019): offsets plus a sigmoid
  modulation per kernel point (``3 * deform_groups * kh * kw`` channels, 27 for 3x3), the
  layout of mmcv's ``ModulatedDeformConvPack``; ``modulated=False`` makes it a DCNv1.

Both are drop-in replacements of :class:`detectron2.layers.Conv2d` (``weight``/``bias``/
``norm``/``activation``); ``isinstance(m, DeformConvBase)`` finds either.
"""

import torch
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = ["DeformConvBase", "DeformConv2d", "ModulatedDeformConv2d", "deformable_from_conv"]


class DeformConvBase(nn.Conv2d):
    """A kxk conv whose sampling offsets (and, if ``modulated``, modulation) are predicted from
    its input by ``conv_offset``, a plain conv of the same geometry.

    Same ``weight``/``bias``/``norm``/``activation`` attributes as Detectron2's ``Conv2d``, so a
    checkpoint of the plain conv loads into it (only ``conv_offset`` is new). ``conv_offset``
    is zero-initialized, so at init the conv samples the regular grid (with modulation 0.5 for
    DCNv2, none for DCNv1).

    Shapes: input ``[N, C_in, H, W]`` -> output ``[N, C_out, H', W']`` (as ``nn.Conv2d``);
    ``conv_offset(x)``: ``[N, P * deform_groups * kh * kw, H', W']`` with ``P = 3`` (modulated)
    or 2. Everything runs on the device and in the dtype of the layer's weights.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding,
        dilation,
        groups,
        bias,
        *,
        deform_groups,
        modulated,
        norm,
        activation,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        if in_channels % deform_groups != 0:
            raise ValueError(
                f"in_channels={in_channels} must be divisible by deform_groups={deform_groups}"
            )
        self.deform_groups = deform_groups
        self.modulated = bool(modulated)
        self.norm = norm
        self.activation = activation
        kh, kw = self.kernel_size
        per_point = 3 if self.modulated else 2
        self.conv_offset = nn.Conv2d(
            in_channels,
            per_point * deform_groups * kh * kw,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, C_in, H, W]`` -> ``[N, C_out, H', W']`` (conv, then norm, then activation)."""
        # torchvision's kernels take one dtype for input, offsets, mask and weight, and its CPU
        # kernel has none in reduced precision: under autocast (AMP) the offsets and the
        # deformable conv run in the weight's dtype (float32), as torchvision's own CUDA
        # autocast wrapper runs the conv. Without autocast this changes nothing.
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.weight.dtype)
            out = self.conv_offset(x)
            num_offset = 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
            offset = out[:, :num_offset]
            mask = out[:, num_offset:].sigmoid() if self.modulated else None
            x = deform_conv2d(
                x,
                offset,
                self.weight,
                self.bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                mask=mask,
            )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self):
        return (
            super().extra_repr()
            + f", deform_groups={self.deform_groups}, modulated={self.modulated}"
        )


class DeformConv2d(DeformConvBase):
    """DCNv1: a kxk conv sampling its input at learned offsets, without modulation.

    Computes ``deform_conv2d(x, conv_offset(x), weight, bias)`` (no mask) followed by ``norm``
    and ``activation``; with zero offsets it equals the plain conv. ``conv_offset`` has
    ``2 * deform_groups * kh * kw`` output channels (18 for 3x3, one group), laid out as
    ``(dy, dx)`` per kernel point and group, like mmcv's ``DeformConvPack`` (whose conv has no
    bias; pass ``bias=False`` to match it).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as :class:`torch.nn.Conv2d`.
        deform_groups (int): offset groups over the input channels.
        norm (nn.Module or None), activation (callable or None): applied after the conv.

    Shapes: input ``[N, C_in, H, W]`` -> output ``[N, C_out, H', W']``.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size=3,
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        bias=True,
        *,
        deform_groups=1,
        norm=None,
        activation=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            deform_groups=deform_groups,
            modulated=False,
            norm=norm,
            activation=activation,
        )


class ModulatedDeformConv2d(DeformConvBase):
    """DCNv2: a kxk conv whose sampling offsets and modulation are predicted from its input.

    ``conv_offset`` predicts ``3 * deform_groups * kh * kw`` channels: the offsets (first two
    thirds) and the modulation logits (last third, passed through a sigmoid).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as :class:`torch.nn.Conv2d`.
        deform_groups (int): offset groups over the input channels.
        modulated (bool): DCNv2 (learned per-sample modulation) if True, else DCNv1
            (prefer :class:`DeformConv2d`).
        norm (nn.Module or None), activation (callable or None): applied after the conv.

    Shapes: input ``[N, C_in, H, W]`` -> output ``[N, C_out, H', W']`` (as ``nn.Conv2d``).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size=3,
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        bias=True,
        *,
        deform_groups=1,
        modulated=True,
        norm=None,
        activation=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            deform_groups=deform_groups,
            modulated=modulated,
            norm=norm,
            activation=activation,
        )


def deformable_from_conv(conv: nn.Conv2d, *, deform_groups=1, modulated=True) -> DeformConvBase:
    """A :class:`ModulatedDeformConv2d` (``modulated``) or :class:`DeformConv2d` with ``conv``'s
    geometry, weights, norm and activation, on ``conv``'s device."""
    kwargs = dict(
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        deform_groups=deform_groups,
        norm=getattr(conv, "norm", None),
        activation=getattr(conv, "activation", None),
    )
    if modulated:
        new = ModulatedDeformConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, **kwargs)
    else:
        new = DeformConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, **kwargs)
    with torch.no_grad():
        new.weight.copy_(conv.weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new.to(conv.weight.device)
