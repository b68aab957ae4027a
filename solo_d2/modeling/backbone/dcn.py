"""Deformable convolution (v1 and modulated v2) on ``torchvision.ops.deform_conv2d``.

Detectron2's own ``DeformConv``/``ModulatedDeformConv`` need its compiled ops; this
module only needs torchvision, which runs deformable convs on CPU and GPU.
"""
import torch
from torch import nn
from torchvision.ops import deform_conv2d


class ModulatedDeformConv2d(nn.Conv2d):
    """A 3x3 (or kxk) conv whose sampling offsets (and modulation) are predicted from its input.

    Drop-in replacement of :class:`detectron2.layers.Conv2d`: same ``weight``/``bias``/
    ``norm``/``activation`` attributes, so a checkpoint of the plain conv loads into it
    (only ``conv_offset`` is new). ``conv_offset`` is zero-initialized, so at init the conv
    samples the regular grid with modulation 0.5 (DCNv2) or 1 (DCNv1).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
            as :class:`torch.nn.Conv2d`.
        deform_groups (int): offset groups over the input channels.
        modulated (bool): DCNv2 (learned per-sample modulation) if True, else DCNv1.
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
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias,
        )
        if in_channels % deform_groups != 0:
            raise ValueError(
                f"in_channels={in_channels} must be divisible by deform_groups={deform_groups}"
            )
        self.deform_groups = deform_groups
        self.modulated = modulated
        self.norm = norm
        self.activation = activation
        kh, kw = self.kernel_size
        per_point = 3 if modulated else 2
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
                x, offset, self.weight, self.bias,
                stride=self.stride, padding=self.padding, dilation=self.dilation, mask=mask,
            )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self):
        return super().extra_repr() + f", deform_groups={self.deform_groups}, modulated={self.modulated}"


def deformable_from_conv(conv: nn.Conv2d, *, deform_groups=1, modulated=True) -> ModulatedDeformConv2d:
    """A :class:`ModulatedDeformConv2d` with ``conv``'s geometry, weights, norm and activation."""
    new = ModulatedDeformConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        deform_groups=deform_groups,
        modulated=modulated,
        norm=getattr(conv, "norm", None),
        activation=getattr(conv, "activation", None),
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new.to(conv.weight.device)
