"""Key rules for torchvision-layout ResNets (torchvision, mmdetection, CoinCheung) -> Detectron2.

Detectron2's ``ResNet`` names the stem ``stem.conv1`` (norm ``stem.conv1.norm``), stage ``k``
(``layer{k-1}`` in torchvision) ``res{k}``, a block's convs ``conv1..conv3`` with their norms
as ``convN.norm`` and the projection ``shortcut`` / ``shortcut.norm``. The computation is the
same when Detectron2 runs with ``RESNETS.STRIDE_IN_1X1 False`` (stride in the 3x3 conv, as in
torchvision) and the input normalization of the source.
"""

import re
from typing import List

from .core import Rule

__all__ = ["torchvision_resnet_rules", "BN_FIELDS"]

BN_FIELDS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def torchvision_resnet_rules(src: str = "", dst: str = "", conv_suffix: str = "") -> List[Rule]:
    """Regex rename rules from a torchvision-layout ResNet under prefix ``src`` to a Detectron2
    ResNet under ``dst`` (prefixes end with ``.`` or are empty).

    Args:
        conv_suffix: an extra (regex) part allowed between a block conv's name and its
            parameter name, kept as is (e.g. ``(?:\\.conv_offset)?`` for deformable convs).
    """
    s = re.escape(src)

    def stage(m) -> str:
        return f"{dst}res{int(m.group(1)) + 1}.{m.group(2)}"

    return [
        (rf"{s}conv1\.weight", f"{dst}stem.conv1.weight"),
        (rf"{s}bn1\.{BN_FIELDS}", rf"{dst}stem.conv1.norm.\1"),
        (
            rf"{s}layer(\d)\.(\d+)\.conv(\d)({conv_suffix})\.(weight|bias)",
            lambda m: f"{stage(m)}.conv{m.group(3)}{m.group(4)}.{m.group(5)}",
        ),
        (
            rf"{s}layer(\d)\.(\d+)\.bn(\d)\.{BN_FIELDS}",
            lambda m: f"{stage(m)}.conv{m.group(3)}.norm.{m.group(4)}",
        ),
        (rf"{s}layer(\d)\.(\d+)\.downsample\.0\.weight", lambda m: f"{stage(m)}.shortcut.weight"),
        (
            rf"{s}layer(\d)\.(\d+)\.downsample\.1\.{BN_FIELDS}",
            lambda m: f"{stage(m)}.shortcut.norm.{m.group(3)}",
        ),
    ]
