"""BatchNorm with frozen statistics and trainable affine parameters (mmdetection's ``norm_eval``).

The official SOLO code and mmdetection train their ResNet with ``norm_eval=True`` and
``frozen_stages=1``: every BatchNorm runs on its running statistics (never updated), the stem and
the first stage are frozen, and the BN weights and biases of stages 2-4 *are trained*.
Detectron2's ``FrozenBatchNorm2d`` keeps them fixed. :func:`train_frozen_bn_affine` swaps the
FrozenBN layers of the trainable stages of a built backbone for :class:`FrozenStatsBatchNorm2d`
(``MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE``), which computes what mmdetection's BatchNorm in eval
mode computes, with the same state-dict keys as FrozenBN (checkpoints load unchanged).
"""

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["FrozenStatsBatchNorm2d", "train_frozen_bn_affine"]


class FrozenStatsBatchNorm2d(nn.Module):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training=False)``.

    Input and output ``[N, C, H, W]``. ``weight`` and ``bias`` ([C]) are parameters; the
    running statistics ([C]) are buffers that no mode updates. Keys as FrozenBN's (a
    ``num_batches_tracked`` counter in a checkpoint is ignored)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_frozen(cls, frozen: FrozenBatchNorm2d) -> "FrozenStatsBatchNorm2d":
        """The same layer (values, device, dtype) with trainable weight and bias."""
        bn = cls(frozen.num_features, frozen.eps)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).data = getattr(frozen, name).detach().clone()
        return bn

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def train_frozen_bn_affine(module: nn.Module) -> int:
    """Replace, in place, each ``FrozenBatchNorm2d`` that is the ``norm`` of a trainable conv
    (its weight requires grad: a stage after ``MODEL.BACKBONE.FREEZE_AT``) by a
    :class:`FrozenStatsBatchNorm2d`. Norms of frozen convs stay FrozenBN.

    Returns:
        The number of layers replaced.
    """
    count = 0
    for m in module.modules():
        norm = getattr(m, "norm", None)
        weight = getattr(m, "weight", None)
        if (
            isinstance(norm, FrozenBatchNorm2d)
            and isinstance(weight, torch.Tensor)
            and weight.requires_grad
        ):
            m.norm = FrozenStatsBatchNorm2d.from_frozen(norm)
            count += 1
    return count
