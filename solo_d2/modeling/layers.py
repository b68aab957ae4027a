"""Layer helpers shared by the SOLO and BiSeNet models."""

from detectron2.layers import Conv2d, get_norm
from torch import nn

__all__ = ["conv_norm_act"]


def conv_norm_act(
    in_ch: int,
    out_ch: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    groups: int = 1,
    norm: str = "BN",
    act: bool = True,
    conv_cls=Conv2d,
    kaiming_init: bool = True,
):
    """``kxk`` conv with 'same' padding -> norm -> ReLU (if ``act``):
    ``[N, in_ch, H, W] -> [N, out_ch, H / stride, W / stride]``.

    The conv has a bias only when no norm follows. ``conv_cls``: ``Conv2d`` or a deformable conv
    of :mod:`solo_d2.modeling.backbone.dcn` (same arguments). ``kaiming_init``: He normal
    initialization (fan out, ReLU), as BiSeNet's reference code; the SOLO heads initialize their
    convs themselves (``init_head_weights``). The ReLU is in place: it overwrites the fresh output
    of the norm (or conv), which neither backward needs, so it is safe in training too."""
    norm_layer = get_norm(norm, out_ch)
    conv = conv_cls(
        in_ch,
        out_ch,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=norm_layer is None,
        norm=norm_layer,
        activation=nn.ReLU(inplace=True) if act else None,
    )
    if kaiming_init:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv
