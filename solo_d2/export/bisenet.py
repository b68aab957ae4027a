"""Export wrapper of BiSeNet V1/V2 (:class:`~solo_d2.modeling.bisenet.segmentor.BiSeNetSegmentor`).

:class:`BiSeNetExportWrapper` maps images ``[N, 3, H, W]`` (float, 0-255, in the config's
``INPUT.FORMAT``; any N, H, W) to the logits ``[N, K, H, W]`` that the eager model's
``sem_seg`` gives for single-scale whole-image inference (``TEST.SEM_SEG_TTA`` at its
defaults), or with ``argmax=True`` to the labels ``[N, H, W]`` (int64): normalization,
zero padding to a multiple of 32 (:func:`~solo_d2.modeling.bisenet.tta.predict_padded`),
the network, cropping back to ``H x W``.
"""

from torch import Tensor, nn

from .common import pad_to_multiple

__all__ = ["BiSeNetExportWrapper"]


class BiSeNetExportWrapper(nn.Module):
    def __init__(self, model: nn.Module, argmax: bool = False):
        super().__init__()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head
        self.size_divisibility = max(int(model.backbone.size_divisibility), 1)
        self.argmax = bool(argmax)
        self.register_buffer("pixel_mean", model.pixel_mean.clone(), False)
        self.register_buffer("pixel_std", model.pixel_std.clone(), False)

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2], images.shape[-1]
        x = pad_to_multiple((images - self.pixel_mean) / self.pixel_std, self.size_divisibility)
        logits, _ = self.sem_seg_head(self.backbone(x), None)
        logits = logits[:, :, :h, :w]
        return logits.argmax(dim=1) if self.argmax else logits
