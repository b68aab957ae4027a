"""SOLO-family heads: the registry, the shared interface, layer helpers and the SOLOv2 head.

Heads only compute layers. Every head returns, for the five levels it is given,
category logits ``[B, C, S, S]`` and opaque per-level *mask outputs*; the
meta-architecture turns chosen grid cells into soft masks through the uniform
:meth:`SOLOHeadBase.soft_masks`, so it never needs to know the variant:

- ``SOLOHead`` (vanilla SOLO) and the decoupled heads live in :mod:`.heads_solo`;
- ``SOLOv2Head`` (category + kernel towers, dynamic 1x1 kernels) is here; its
  unified mask features come from :class:`~.mask_branch.SOLOv2MaskBranch`.

Cells are numbered ``k = i * S + j`` (``i`` row, ``j`` column) everywhere.
"""

import math
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

from ..backbone.dcn import DeformConv2d, ModulatedDeformConv2d
from ..layers import conv_norm_act

SOLO_HEAD_REGISTRY = Registry("SOLO_HEAD")
SOLO_HEAD_REGISTRY.__doc__ = """
Heads of the SOLO family, built by ``build_solo_head(cfg, input_shapes)`` from
``MODEL.SOLO.HEAD_NAME``. ``input_shapes`` are the shapes of the five head levels.
"""


def build_solo_head(cfg, input_shapes: List[ShapeSpec]) -> "SOLOHeadBase":
    name = cfg.MODEL.SOLO.HEAD_NAME
    if name not in SOLO_HEAD_REGISTRY:
        known = ", ".join(sorted(k for k, _ in SOLO_HEAD_REGISTRY))
        raise KeyError(
            f"MODEL.SOLO.HEAD_NAME={name!r} is not a registered SOLO head; known: {known}"
        )
    return SOLO_HEAD_REGISTRY.get(name)(cfg, input_shapes)


# ----------------------------------------------------------------------------- helpers
def coord_features(x: torch.Tensor) -> torch.Tensor:
    """Normalized coordinates for CoordConv: ``[B, 2, H, W]`` with channel 0 = x,
    1 = y in [-1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]).expand(b, 2, h, w)


def head_conv(
    in_ch: int,
    out_ch: int,
    norm: str,
    use_dcn: bool = False,
    kernel_size: int = 3,
    *,
    modulated=True,
):
    """:func:`~solo_d2.modeling.layers.conv_norm_act` of a head (weights initialized by the head):
    ``use_dcn``: a deformable conv, DCNv2 (:class:`ModulatedDeformConv2d`) if ``modulated``, else
    DCNv1 (:class:`DeformConv2d`)."""
    conv_cls = (ModulatedDeformConv2d if modulated else DeformConv2d) if use_dcn else Conv2d
    return conv_norm_act(
        in_ch, out_ch, kernel_size, norm=norm, conv_cls=conv_cls, kaiming_init=False
    )


TOWER_DCN_CONVS = ("all", "last")


def make_tower(
    in_ch: int,
    channels: int,
    num_convs: int,
    norm: str,
    use_dcn: bool = False,
    *,
    dcn_convs: str = "all",
    dcn_modulated: bool = True,
):
    """``num_convs`` x (3x3 conv + norm + ReLU), ``[N, in_ch, H, W] -> [N, channels, H, W]``.

    With ``use_dcn``, the convs named by ``dcn_convs`` are deformable: ``"all"`` of them or only
    the ``"last"`` (``MODEL.SOLO.TOWER_DCN_CONVS``); DCNv2 if ``dcn_modulated``, else DCNv1
    (``MODEL.SOLO.TOWER_DCN_MODULATED``)."""
    if dcn_convs not in TOWER_DCN_CONVS:
        raise ValueError(
            f"MODEL.SOLO.TOWER_DCN_CONVS = {dcn_convs!r}: must be one of {TOWER_DCN_CONVS}"
        )
    return nn.Sequential(
        *[
            head_conv(
                in_ch if k == 0 else channels,
                channels,
                norm,
                use_dcn and (dcn_convs == "all" or k == num_convs - 1),
                modulated=dcn_modulated,
            )
            for k in range(num_convs)
        ]
    )


def tower_dcn_args(c) -> dict:
    """``make_tower`` keyword arguments from ``cfg.MODEL.SOLO`` (``USE_DCN_IN_TOWER``,
    ``TOWER_DCN_CONVS``, ``TOWER_DCN_MODULATED``)."""
    return {
        "use_dcn": bool(c.USE_DCN_IN_TOWER),
        "dcn_convs": c.TOWER_DCN_CONVS,
        "dcn_modulated": bool(c.TOWER_DCN_MODULATED),
    }


def init_head_weights(module: nn.Module, std: float = 0.01):
    """Conv weights ~ N(0, std), biases 0 (offset convs of deformable layers stay zero)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d) and not name.endswith("conv_offset"):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def prior_bias(prior_prob: float) -> float:
    """Bias giving ``sigmoid(bias) == prior_prob`` (focal-loss init)."""
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"MODEL.SOLO.PRIOR_PROB must be in (0, 1), got {prior_prob}")
    return -math.log((1 - prior_prob) / prior_prob)


def resize_probs(probs: torch.Tensor, size) -> torch.Tensor:
    """``[P, h, w]`` -> ``[P, *size]`` bilinear (``align_corners=False``); no-op at equal size."""
    if size is None or tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def check_levels(in_channels: Sequence[int], num_grids: Sequence[int]) -> int:
    if len(set(in_channels)) != 1:
        raise ValueError(f"SOLO heads need equal channels on all levels, got {list(in_channels)}")
    if len(in_channels) != len(num_grids):
        raise ValueError(
            f"MODEL.SOLO.NUM_GRIDS has {len(num_grids)} levels but "
            f"MODEL.SOLO.IN_FEATURES has {len(in_channels)}"
        )
    return in_channels[0]


# ----------------------------------------------------------------------------- interface
class SOLOHeadBase(nn.Module):
    """Interface the :class:`~.meta_arch.SOLO` meta-architecture relies on.

    Attributes:
        num_classes (int), num_grids (List[int]).
        needs_mask_features (bool): True if :meth:`forward` needs the unified mask
            features of :class:`~.mask_branch.SOLOv2MaskBranch`.
        one_target_per_cell (bool): the official code's mask-target rule for this head
            (``MODEL.SOLO.MASK_TARGETS: "auto"``): one target per positive cell, the last
            claimant's (SOLO, Decoupled SOLO), or one per (cell, claimant) (SOLOv2).
    """

    needs_mask_features = False
    one_target_per_cell = False

    def forward(
        self, features: List[torch.Tensor], mask_features: Optional[torch.Tensor] = None
    ) -> Tuple[List[torch.Tensor], List[Any]]:
        """
        Args:
            features: per level ``[B, C_in, H_l, W_l]``
                (at the head strides, e.g. 8, 8, 16, 32, 32).
            mask_features: ``[B, D, H/4, W/4]`` when :attr:`needs_mask_features`, else None.
        Returns:
            cate_logits: per level ``[B, num_classes, S_l, S_l]``.
            mask_outputs: per level, head-specific; only passed back to :meth:`soft_masks`.
        """
        raise NotImplementedError

    def soft_masks(
        self,
        mask_output: Any,
        level: int,
        img_idx: torch.Tensor,
        cell_idx: torch.Tensor,
        size=None,
        image_counts: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """Mask probabilities ``[P, h_l, w_l]`` of cells ``cell_idx [P]`` (cell index within the
        level) in images ``img_idx [P]`` (training: the mask targets of one level).

        With ``size = (h, w)`` the probabilities are bilinearly resized to it the way the
        reference implementation does for that head (after the sigmoid). ``image_counts``:
        optional number of cells of each image when ``img_idx`` is ascending (the targets'
        order), which saves heads that need it a read-back."""
        raise NotImplementedError

    def inference_masks(
        self, mask_outputs: List[Any], image: int, cells: torch.Tensor, size
    ) -> torch.Tensor:
        """Mask probabilities ``[U, *size]`` (1/4 of the padded input) of image ``image``'s
        global cells ``cells [U]`` (ascending; level after level, ``i * S + j`` within a level).

        Heads with per-level masks split the cells by level (one read-back); SOLOv2 takes one
        matmul for all levels."""
        raise NotImplementedError

    def mask_size(self, mask_output: Any) -> Tuple[int, int]:
        """``(h_l, w_l)`` of the soft masks of one level."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- SOLOv2
@SOLO_HEAD_REGISTRY.register()
class SOLOv2Head(SOLOHeadBase):
    """SOLOv2 instance head: category tower and kernel tower (CoordConv) on SxS-resized features.

    The kernel of cell ``k`` is a ``D``-vector used as a dynamic 1x1 conv on the unified mask
    features: ``mask_k = sigmoid(kernel_k . mask_features)``. SOLOv2-light = fewer convs,
    fewer channels and ``D = 128`` (config only).
    """

    needs_mask_features = True

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_grids: List[int],
        channels: int = 512,
        num_convs: int = 4,
        kernel_dim: int = 256,
        norm: str = "GN",
        use_dcn: bool = False,
        dcn_convs: str = "all",
        dcn_modulated: bool = True,
        prior_prob: float = 0.01,
    ):
        """
        Args:
            in_channels: channels of the input features (FPN: 256).
            num_classes: thing classes (no background).
            num_grids: S per level.
            channels, num_convs: tower width and depth.
            kernel_dim: D, channels of the unified mask features.
            norm: norm of the tower convs.
            use_dcn, dcn_convs, dcn_modulated: deformable tower convs (see :func:`make_tower`).
            prior_prob: initial category probability.
        """
        super().__init__()
        self.num_classes = num_classes
        self.num_grids = list(num_grids)
        self.kernel_dim = kernel_dim
        dcn = dict(use_dcn=use_dcn, dcn_convs=dcn_convs, dcn_modulated=dcn_modulated)
        self.kernel_tower = make_tower(in_channels + 2, channels, num_convs, norm, **dcn)
        self.cate_tower = make_tower(in_channels, channels, num_convs, norm, **dcn)
        self.kernel_pred = nn.Conv2d(channels, kernel_dim, 3, padding=1)
        self.cate_pred = nn.Conv2d(channels, num_classes, 3, padding=1)
        init_head_weights(self)
        nn.init.constant_(self.cate_pred.bias, prior_bias(prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec]):
        c = cfg.MODEL.SOLO
        return {
            "in_channels": check_levels([s.channels for s in input_shapes], c.NUM_GRIDS),
            "num_classes": c.NUM_CLASSES,
            "num_grids": c.NUM_GRIDS,
            "channels": c.INS_CHANNELS,
            "num_convs": c.NUM_CONVS,
            "kernel_dim": c.MASK_FEAT_CHANNELS,
            "norm": c.NORM,
            **tower_dcn_args(c),
            "prior_prob": c.PRIOR_PROB,
        }

    def forward(self, features, mask_features=None):
        """Mask outputs per level: ``(kernels [B, D, S, S], mask_features [B, D, H/4, W/4])``."""
        if mask_features is None:
            raise ValueError("SOLOv2Head needs the mask features of the mask branch")
        if mask_features.shape[1] != self.kernel_dim:
            raise ValueError(
                f"mask features have {mask_features.shape[1]} channels, kernels {self.kernel_dim}: "
                "MODEL.SOLO.MASK_FEAT_CHANNELS must match the mask branch output"
            )
        cate_logits, mask_outputs = [], []
        for x, s in zip(features, self.num_grids):
            x = torch.cat([x, coord_features(x)], dim=1)
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
            mask_outputs.append((self.kernel_pred(self.kernel_tower(x)), mask_features))
            cate_logits.append(self.cate_pred(self.cate_tower(x[:, :-2])))
        return cate_logits, mask_outputs

    def soft_masks(self, mask_output, level, img_idx, cell_idx, size=None, image_counts=None):
        """As :meth:`SOLOHeadBase.soft_masks`: one dynamic 1x1 conv (a matmul) per image."""
        kernels, feats = mask_output
        self._check_size(feats, size)
        b, d, h, w = feats.shape
        if image_counts is None:  # any order: sort by image, read the counts back once
            order = torch.argsort(img_idx, stable=True)
            counts = torch.bincount(img_idx, minlength=b).tolist()
            probs = self.soft_masks(
                mask_output, level, img_idx[order], cell_idx[order], size, counts
            )
            return torch.empty_like(probs).index_copy_(0, order, probs)
        k = kernels.flatten(2)[img_idx, :, cell_idx]  # [P, D]
        parts = [
            part @ feats[i].reshape(d, h * w)
            for i, part in enumerate(k.split(list(image_counts)))
            if len(part)
        ]
        if not parts:  # the matmul's dtype: under autocast it differs from the features'
            return (k @ feats.new_zeros(d, h * w)).view(0, h, w)
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).sigmoid().view(-1, h, w)

    def inference_masks(self, mask_outputs, image, cells, size):
        """All levels at once: the kernels of ``cells`` gathered from every level's grid,
        one matmul with the image's mask features, sigmoid."""
        feats = mask_outputs[0][1][image]  # [D, h, w], shared by the levels
        self._check_size(feats, size)
        d, h, w = feats.shape
        kernels = torch.cat([k[image].flatten(1) for k, _ in mask_outputs], dim=1)  # [D, sum S^2]
        return (
            torch.mm(kernels.index_select(1, cells).t(), feats.reshape(d, h * w))
            .sigmoid_()
            .view(-1, h, w)
        )

    @staticmethod
    def _check_size(feats, size):
        if size is not None and tuple(size) != tuple(feats.shape[-2:]):
            raise ValueError(f"SOLOv2 masks are {tuple(feats.shape[-2:])}, asked for {tuple(size)}")

    def mask_size(self, mask_output):
        return tuple(mask_output[1].shape[-2:])
