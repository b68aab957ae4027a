"""SOLO (vanilla), Decoupled SOLO and Decoupled-SOLO-light heads.

All three share the category branch (features bilinearly resized to SxS, a tower, a
3x3 conv to ``num_classes``) and predict masks at twice the resolution of their level
(the mask tower output is upsampled x2 before the per-level output conv):

- ``SOLOHead``: CoordConv (+2) mask tower, per-level 1x1 conv to ``S^2`` channels,
  one channel per cell.
- ``DecoupledSOLOHead``: X tower (+x coordinate) and Y tower (+y coordinate), per-level
  3x3 convs to ``S`` channels each; ``mask(i, j) = sigmoid(y_i) * sigmoid(x_j)``.
- ``DecoupledSOLOLightHead``: one shared tower (+2 coordinates) feeding separate X and Y
  output convs.
"""

from typing import List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .heads import (
    SOLO_HEAD_REGISTRY,
    SOLOHeadBase,
    check_levels,
    coord_features,
    init_head_weights,
    make_tower,
    prior_bias,
    resize_probs,
    tower_dcn_args,
)


class _GridHeadBase(SOLOHeadBase):
    """Category branch and config shared by the SOLO and decoupled heads."""

    # official solo_head.py / decoupled_solo*_head.py: a cell's last claimant overwrites its mask
    one_target_per_cell = True

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_grids: List[int],
        channels: int = 256,
        num_convs: int = 7,
        norm: str = "GN",
        use_dcn: bool = False,
        dcn_convs: str = "all",
        dcn_modulated: bool = True,
        prior_prob: float = 0.01,
        mask_prior_prob: float = 0.01,
    ):
        """
        Args:
            in_channels: channels of the input features (FPN: 256).
            num_classes: thing classes (no background).
            num_grids: S per level.
            channels, num_convs: tower width and depth (SOLO: 256, 7; light: 256, 4).
            norm: tower norm.
            use_dcn, dcn_convs, dcn_modulated: deformable tower convs
                (see :func:`~.heads.make_tower`).
            prior_prob: initial category probability.
            mask_prior_prob: initial mask probability of the mask output convs (official 0.01).
        """
        super().__init__()
        self.num_classes = num_classes
        self.num_grids = list(num_grids)
        dcn = dict(use_dcn=use_dcn, dcn_convs=dcn_convs, dcn_modulated=dcn_modulated)

        def tower(cin):  # one tower of the head: [N, cin, H, W] -> [N, channels, H, W]
            return make_tower(cin, channels, num_convs, norm, **dcn)

        self.cate_tower = tower(in_channels)
        self.cate_pred = nn.Conv2d(channels, num_classes, 3, padding=1)
        self._build_mask_layers(in_channels, channels, tower)
        init_head_weights(self)
        nn.init.constant_(self.cate_pred.bias, prior_bias(prior_prob))
        # first global cell of each level: Python ints, and of levels 1.. as a buffer on the
        # model's device (inference_masks splits the candidate cells by level with it)
        self._level_offsets = [0]
        for s in self.num_grids[:-1]:
            self._level_offsets.append(self._level_offsets[-1] + s * s)
        starts = torch.tensor(self._level_offsets[1:], dtype=torch.long)
        self.register_buffer("_level_starts", starts, persistent=False)
        for m in self.modules():
            if getattr(m, "_mask_output", False):
                nn.init.constant_(m.bias, prior_bias(mask_prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shapes: List[ShapeSpec]):
        c = cfg.MODEL.SOLO
        return {
            "in_channels": check_levels([s.channels for s in input_shapes], c.NUM_GRIDS),
            "num_classes": c.NUM_CLASSES,
            "num_grids": c.NUM_GRIDS,
            "channels": c.INS_CHANNELS,
            "num_convs": c.NUM_CONVS,
            "norm": c.NORM,
            **tower_dcn_args(c),
            "prior_prob": c.PRIOR_PROB,
            "mask_prior_prob": c.MASK_PRIOR_PROB,
        }

    def inference_masks(self, mask_outputs, image, cells, size):
        """The cells of each level (one read-back of the level bounds) through
        :meth:`soft_masks`, resized to ``size``."""
        bounds = [0, *torch.searchsorted(cells, self._level_starts).tolist(), cells.numel()]
        parts = []
        for level, start in enumerate(self._level_offsets):
            local = cells[bounds[level] : bounds[level + 1]] - start
            if local.numel():
                parts.append(
                    self.soft_masks(
                        mask_outputs[level], level, torch.full_like(local, image), local, size
                    )
                )
        if not parts:
            return torch.zeros((0, *size), device=cells.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _build_mask_layers(self, in_channels, channels, tower):
        """Mask towers (``tower(cin)`` builds one) and output convs of the head."""
        raise NotImplementedError

    def _mask_level(self, x: torch.Tensor, level: int):
        raise NotImplementedError

    def forward(self, features, mask_features=None):
        cate_logits, mask_outputs = [], []
        for level, (x, s) in enumerate(zip(features, self.num_grids)):
            cate = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
            cate_logits.append(self.cate_pred(self.cate_tower(cate)))
            mask_outputs.append(self._mask_level(x, level))
        return cate_logits, mask_outputs


def _mask_output_conv(channels: int, out: int, kernel_size: int) -> nn.Conv2d:
    """A per-level mask output conv, marked for the mask-prior bias init."""
    conv = nn.Conv2d(channels, out, kernel_size, padding=kernel_size // 2)
    conv._mask_output = True
    return conv


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


@SOLO_HEAD_REGISTRY.register()
class SOLOHead(_GridHeadBase):
    """Vanilla SOLO. Mask output per level: logits ``[B, S^2, 2 H_l, 2 W_l]``."""

    def _build_mask_layers(self, in_channels, channels, tower):
        self.mask_tower = tower(in_channels + 2)
        self.mask_preds = nn.ModuleList(
            [_mask_output_conv(channels, s * s, 1) for s in self.num_grids]
        )

    def _mask_level(self, x, level):
        x = self.mask_tower(torch.cat([x, coord_features(x)], dim=1))
        return self.mask_preds[level](_up2(x))

    def soft_masks(self, mask_output, level, img_idx, cell_idx, size=None, image_counts=None):
        return resize_probs(mask_output[img_idx, cell_idx].sigmoid(), size)

    def mask_size(self, mask_output):
        return tuple(mask_output.shape[-2:])


class _DecoupledBase(_GridHeadBase):
    """Mask output per level: ``(x_logits [B, S, h, w], y_logits [B, S, h, w])``."""

    def _build_preds(self, channels):
        self.mask_preds_x = nn.ModuleList(
            [_mask_output_conv(channels, s, 3) for s in self.num_grids]
        )
        self.mask_preds_y = nn.ModuleList(
            [_mask_output_conv(channels, s, 3) for s in self.num_grids]
        )

    def soft_masks(self, mask_output, level, img_idx, cell_idx, size=None, image_counts=None):
        # the official code resizes the X and Y probability maps, then multiplies them
        x_logits, y_logits = mask_output
        s = self.num_grids[level]
        rows, cols = cell_idx // s, cell_idx % s
        return resize_probs(x_logits[img_idx, cols].sigmoid(), size) * resize_probs(
            y_logits[img_idx, rows].sigmoid(), size
        )

    def mask_size(self, mask_output):
        return tuple(mask_output[0].shape[-2:])


@SOLO_HEAD_REGISTRY.register()
class DecoupledSOLOHead(_DecoupledBase):
    """Decoupled SOLO: separate X and Y towers, each with one coordinate channel."""

    def _build_mask_layers(self, in_channels, channels, tower):
        self.mask_tower_x = tower(in_channels + 1)
        self.mask_tower_y = tower(in_channels + 1)
        self._build_preds(channels)

    def _mask_level(self, x, level):
        coords = coord_features(x)
        fx = self.mask_tower_x(torch.cat([x, coords[:, :1]], dim=1))
        fy = self.mask_tower_y(torch.cat([x, coords[:, 1:]], dim=1))
        return self.mask_preds_x[level](_up2(fx)), self.mask_preds_y[level](_up2(fy))


@SOLO_HEAD_REGISTRY.register()
class DecoupledSOLOLightHead(_DecoupledBase):
    """Decoupled SOLO light: one shared CoordConv tower, separate X and Y output convs."""

    def _build_mask_layers(self, in_channels, channels, tower):
        self.mask_tower = tower(in_channels + 2)
        self._build_preds(channels)

    def _mask_level(self, x, level):
        f = _up2(self.mask_tower(torch.cat([x, coord_features(x)], dim=1)))
        return self.mask_preds_x[level](f), self.mask_preds_y[level](f)
