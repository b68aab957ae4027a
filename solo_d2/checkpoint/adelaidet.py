"""``adelaidet-solov2``: the detectron2 SOLOv2 port (AdelaiDet) ``model_final.pth`` -> solo_d2.

AdelaiDet keeps Detectron2's ResNet-FPN names (``backbone.bottom_up.*``, ``backbone.fpn_*``),
so the backbone maps one to one. Its towers are ``nn.Sequential(conv, GN, ReLU, ...)``
(``ins_head.cate_tower.{3k}`` conv, ``.{3k+1}`` GN) and its mask branch uses
``convs_all_levels.{i}.conv{j}.{0: conv, 1: GN}`` and ``conv_pred.{0,1}``; solo_d2 uses
Detectron2 ``Conv2d`` modules with a ``norm`` child. Caffe-style R50/R101, BGR input,
Detectron2's default pixel statistics: the recipe configs ``configs/SOLOv2/R50_3x.yaml`` and
``R101_3x.yaml`` compute what AdelaiDet computes (tests/parity/test_parity_solov2.py checks it on
the reference's own outputs).
"""

from .core import Conversion, ConversionError, register_converter, rename_keys, require_keys

_RULES = [
    (r"(backbone\.(?:bottom_up|fpn_lateral|fpn_output).*)", r"\1"),
    (r"ins_head\.(cate|kernel)_tower\.(\d+)\.(weight|bias)", None),  # filled below
    (r"ins_head\.(cate_pred|kernel_pred)\.(weight|bias)", r"ins_head.\1.\2"),
    (
        r"mask_head\.convs_all_levels\.(\d+)\.conv(\d+)\.0\.weight",
        r"mask_head.convs_all_levels.\1.\2.weight",
    ),
    (
        r"mask_head\.convs_all_levels\.(\d+)\.conv(\d+)\.1\.(weight|bias)",
        r"mask_head.convs_all_levels.\1.\2.norm.\3",
    ),
    (r"mask_head\.conv_pred\.0\.weight", "mask_head.conv_pred.weight"),
    (r"mask_head\.conv_pred\.1\.(weight|bias)", r"mask_head.conv_pred.norm.\1"),
]


def _tower(m) -> str:
    """``Sequential`` index ``3k`` (conv) / ``3k+1`` (GN) -> solo_d2 ``k`` / ``k.norm``."""
    idx = int(m.group(2))
    k, part = divmod(idx, 3)
    if part == 2:
        raise ConversionError(
            f"adelaidet-solov2: unexpected parameter at a ReLU position: {m.group(0)}"
        )
    return f"ins_head.{m.group(1)}_tower.{k}" + (".norm" if part == 1 else "") + f".{m.group(3)}"


_RULES[1] = (_RULES[1][0], _tower)


@register_converter(
    "adelaidet-solov2",
    "the detectron2 SOLOv2 port (aim-uofa/AdelaiDet) model_final.pth, R50/R101 SOLOv2",
)
def convert_adelaidet_solov2(state) -> Conversion:
    require_keys(
        state,
        [
            "ins_head.cate_pred.weight",
            "ins_head.kernel_pred.weight",
            "mask_head.conv_pred.0.weight",
        ],
        source="adelaidet-solov2 (AdelaiDet SOLOv2)",
    )
    out = rename_keys(state, _RULES, source="adelaidet-solov2 (AdelaiDet SOLOv2)")
    num_res4 = len({k.split(".")[3] for k in state if k.startswith("backbone.bottom_up.res4.")})
    depth = {6: 50, 23: 101}.get(num_res4)
    if depth is None:
        raise ConversionError(
            f"adelaidet-solov2: {num_res4} res4 blocks (R50 has 6, R101 23): no matching solo_d2 "
            "config; use --config-file with the matching overrides"
        )
    opts, notes = [], []
    num_classes = state["ins_head.cate_pred.weight"].shape[0]
    if num_classes != 80:
        opts += ["MODEL.SOLO.NUM_CLASSES", str(num_classes)]
    if any("conv_offset" in k for k in state):
        raise ConversionError(
            "adelaidet-solov2: deformable convs are not part of AdelaiDet's SOLOv2 models"
        )
    notes.append(
        "AdelaiDet upsamples final masks by ceil(h / f_h) of the unpadded height, which is 3 "
        "instead of 4 for a batch image shorter than 3/4 of the padded batch; solo_d2 always "
        "uses 4 (the official SOLO)."
    )
    notes.append(
        "The config trains as the official SOLO code (the recipe). To train as AdelaiDet does, "
        "add MODEL.SOLO.MASK_TARGET_RESIZE unpadded (AdelaiDet resizes each unpadded mask by cv2 "
        "to int(side / 4 + 0.5) and pastes it top-left; the official code resizes the padded "
        "mask by exactly 4) and MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE False (AdelaiDet never "
        "trains the BN weights and biases)."
    )
    return Conversion(out, f"configs/SOLOv2/R{depth}_3x.yaml", opts, notes)
