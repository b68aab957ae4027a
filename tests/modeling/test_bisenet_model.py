"""BiSeNet backbones, heads, test-time inference, DefaultPredictor and Visualizer."""

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import SemanticSegmentor, build_backbone, build_model
from detectron2.utils.visualizer import Visualizer

import solo_d2  # noqa: F401  (registers the models)
from solo_d2.model_zoo import get_config
from solo_d2.modeling.bisenet import (
    add_bisenet_config,
    predict_padded,
    predict_sliding,
    predict_tta,
)
from tests.helpers import DATA_DIR


def tiny_cfg(version="v1", depth=18, num_classes=5, **tta):
    cfg = get_config(
        "Synthetic/BiSeNetV1_R18.yaml" if version == "v1" else "Synthetic/BiSeNetV2.yaml"
    )
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    if version == "v1" and depth == 50:
        cfg.MODEL.RESNETS.DEPTH = 50
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    if version == "v2":
        cfg.MODEL.BISENET_V2.HEAD_CHANNELS = 64
        cfg.MODEL.BISENET_V2.BOOSTER_CHANNELS = 32
    for k, v in tta.items():
        cfg.TEST.SEM_SEG_TTA[k.upper()] = v
    return cfg


def test_add_bisenet_config_only_adds_keys():
    from detectron2.config import get_cfg

    base = get_cfg()
    cfg = base.clone()
    add_bisenet_config(cfg)
    add_bisenet_config(cfg)  # idempotent
    flat = lambda c, p="": {  # noqa: E731
        p + k: v
        for k0, v0 in c.items()
        for k, v in ([(k0, v0)] if not hasattr(v0, "items") else flat(v0, k0 + ".").items())
    }
    before, after = flat(base), flat(cfg)
    assert all(after[k] == v for k, v in before.items())
    assert {
        "MODEL.BISENET.LOSS_TYPE",
        "MODEL.BISENET_V2.EXPANSION",
        "TEST.SEM_SEG_TTA.MODE",
    } <= set(after)


@pytest.mark.parametrize(
    "depth,source,expected",
    [
        (18, "spatial_path", {"spatial": (128, 8), "res4": (256, 16), "res5": (512, 32)}),
        (18, "res2", {"spatial": (64, 4), "res4": (256, 16), "res5": (512, 32)}),
        (50, "spatial_path", {"spatial": (128, 8), "res4": (1024, 16), "res5": (2048, 32)}),
    ],
)
def test_v1_backbone_strides_and_channels(depth, source, expected):
    cfg = tiny_cfg("v1", depth=depth)
    cfg.MODEL.BISENET.SPATIAL_SOURCE = source
    backbone = build_backbone(cfg).eval()
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == expected
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, 64, 128))
    for k, (c, s) in expected.items():
        assert tuple(feats[k].shape) == (2, c, 64 // s, 128 // s)


def test_v1_backbone_bad_source_raises():
    cfg = tiny_cfg("v1")
    cfg.MODEL.BISENET.SPATIAL_SOURCE = "res3"
    with pytest.raises(ValueError, match="SPATIAL_SOURCE"):
        build_backbone(cfg)


def test_v2_backbone_strides_and_channels():
    backbone = build_backbone(tiny_cfg("v2")).eval()
    expected = {
        "detail": (128, 8),
        "stem": (16, 4),
        "s3": (32, 8),
        "s4": (64, 16),
        "s5": (128, 32),
        "semantic": (128, 32),
    }
    assert {k: (s.channels, s.stride) for k, s in backbone.output_shape().items()} == expected
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    for k, (c, s) in expected.items():
        assert tuple(feats[k].shape) == (1, c, 64 // s, 96 // s)


@pytest.mark.parametrize(
    "version,source,loss_keys",
    [
        ("v1", "spatial_path", {"loss_sem_seg", "loss_aux8", "loss_aux16"}),
        ("v1", "res2", {"loss_sem_seg", "loss_aux8", "loss_aux16"}),
        ("v2", None, {"loss_sem_seg"} | {f"loss_booster_{k}" for k in ("stem", "s3", "s4", "s5")}),
    ],
)
def test_head_contract(version, source, loss_keys):
    cfg = tiny_cfg(version, num_classes=7)
    if source:
        cfg.MODEL.BISENET.SPATIAL_SOURCE = source
    model = build_model(cfg)
    head = model.sem_seg_head
    assert head.ignore_value == 255
    images = torch.randn(2, 3, 64, 64)
    targets = torch.randint(0, 7, (2, 64, 64))
    targets[:, :8] = 255
    model.train()
    results, losses = head(model.backbone(images), targets)
    assert results is None and set(losses) == loss_keys
    total = sum(losses.values())
    assert torch.isfinite(total) and total.requires_grad
    total.backward()
    assert all(
        p.grad is not None
        for n, p in head.named_parameters()
        if "boosters" not in n or version == "v2"
    )
    with pytest.raises(ValueError, match="targets"):
        head(model.backbone(images), None)

    model.eval()
    called = []
    hooks = [
        m.register_forward_hook(lambda *a: called.append(1))
        for n, m in head.named_children()
        if n in ("aux8", "aux16", "boosters")
    ]
    hooks += [
        b.register_forward_hook(lambda *a: called.append(1))
        for b in getattr(head, "boosters", {}).values()
    ]
    with torch.no_grad():
        logits, extra = head(model.backbone(images), None)
    assert extra == {} and tuple(logits.shape) == (2, 7, 64, 64)
    assert not called, "auxiliary / booster outputs must not run at inference"
    for h in hooks:
        h.remove()


def _inputs(h=90, w=150, out=(180, 300), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, h, w, generator=g) * 255, "height": out[0], "width": out[1]}]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tta_without_augmentation_equals_plain_semantic_segmentor(version):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(version)).eval()
    assert type(model).__name__ == "BiSeNetSegmentor"
    for inputs in (_inputs(90, 150), _inputs(64, 96, out=(64, 96))):  # odd size (padded) and exact
        with torch.no_grad():
            ours = model(inputs)[0]["sem_seg"]
            plain = SemanticSegmentor.forward(model, inputs)[0]["sem_seg"]
        assert ours.shape == plain.shape == (5, inputs[0]["height"], inputs[0]["width"])
        assert torch.allclose(ours, plain, atol=1e-5)
    # sliding window whose crop covers the image is the whole-image inference
    model.tta.update(mode="slide", crop_size=(1024, 1024), stride=(683, 683))
    with torch.no_grad():
        slid = model(_inputs(90, 150))[0]["sem_seg"]
        whole = SemanticSegmentor.forward(model, _inputs(90, 150))[0]["sem_seg"]
    assert torch.allclose(slid, whole, atol=1e-5)


@pytest.mark.parametrize(
    "tta",
    [
        dict(flip=True),
        dict(scales=[0.5, 1.0, 1.25]),
        dict(mode="slide", crop_size=[64, 64], stride=[40, 40]),
        dict(mode="slide", crop_size=[64, 96], stride=[48, 64], scales=[0.5, 1.25], flip=True),
    ],
)
def test_tta_options_any_size(tta):
    model = build_model(tiny_cfg("v1", **tta)).eval()
    with torch.no_grad():
        out = model(_inputs(77, 141, out=(77, 141)))[0]["sem_seg"]
        plain = SemanticSegmentor.forward(model, _inputs(77, 141, out=(77, 141)))[0]["sem_seg"]
    assert out.shape == (5, 77, 141) and torch.isfinite(out).all()
    assert not torch.allclose(out, plain)  # the option really changes the computation


def test_sliding_and_flip_exact_for_pixelwise_predictor():
    """With a per-pixel network (1x1 conv) windows, padding and flips must not change anything."""
    conv = torch.nn.Conv2d(3, 4, 1)
    image = torch.randn(1, 3, 75, 130)
    with torch.no_grad():
        ref = conv(image)
        for out in (
            predict_padded(conv, image),
            predict_sliding(conv, image, (32, 48), (20, 30)),
            predict_sliding(conv, image, (40, 200), (13, 7)),
            predict_tta(conv, image, flip=True),
            predict_tta(conv, image, flip=True, mode="slide", crop_size=(33, 64), stride=(17, 50)),
        ):
            assert torch.allclose(out, ref, atol=1e-5)


def test_flip_averages_flipped_view():
    """A direction-dependent predictor (cumulative sum along width):
    flip TTA averages both directions."""
    predict = lambda x: x.cumsum(-1)  # noqa: E731
    image = torch.rand(1, 2, 32, 40)
    out = predict_tta(predict, image, flip=True)
    expected = (image.cumsum(-1) + image.flip(-1).cumsum(-1).flip(-1)) / 2
    assert torch.allclose(out, expected, atol=1e-5)


def test_bad_tta_config_raises():
    with pytest.raises(ValueError, match="MODE"):
        build_model(tiny_cfg("v1", mode="grid"))
    with pytest.raises(ValueError, match="CROP_SIZE"):
        build_model(tiny_cfg("v1", crop_size=[0, 64]))


def test_default_predictor_and_visualizer():
    cfg = tiny_cfg("v1", num_classes=4)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 256
    cfg.DATASETS.TEST = ("bisenet_test_visualizer",)
    meta = MetadataCatalog.get("bisenet_test_visualizer")
    meta.set(
        stuff_classes=["road", "car", "sky", "tree"],
        stuff_colors=[(128, 64, 128), (0, 0, 142), (70, 130, 180), (107, 142, 35)],
    )
    predictor = DefaultPredictor(cfg)
    image = (
        np.random.RandomState(0).randint(0, 255, (100, 170, 3)).astype(np.uint8)
    )  # BGR, resized internally
    sem_seg = predictor(image)["sem_seg"]
    assert sem_seg.shape == (4, 100, 170)
    labels = sem_seg.argmax(0)
    vis = Visualizer(image[:, :, ::-1], meta).draw_sem_seg(labels.cpu(), alpha=0.6).get_image()
    assert vis.shape == (100, 170, 3)
    # every pixel is covered by some class mask, so the drawing changes the image
    assert np.abs(vis.astype(int) - image[:, :, ::-1].astype(int)).mean() > 5


@pytest.mark.parametrize(
    "name",
    [
        "BiSeNet/V1_R18_cityscapes.yaml",
        "BiSeNet/V1_R50_cityscapes.yaml",
        "BiSeNet/V2_cityscapes.yaml",
    ],
)
def test_cityscapes_recipe_configs(name):
    cfg = get_config(name)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19 and cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255
    assert cfg.DATASETS.TRAIN == ("cityscapes_fine_sem_seg_train",) and cfg.DATASETS.TEST == (
        "cityscapes_fine_sem_seg_val",
    )
    assert tuple(cfg.INPUT.CROP.SIZE) == (1024, 1024) and list(cfg.INPUT.RANDOM_SCALE) == [
        0.75,
        2.0,
    ]
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" and cfg.SOLVER.WARMUP_ITERS == 1000
    assert (
        cfg.SOLVER.WEIGHT_DECAY == 5e-4
        and cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
        and cfg.SOLVER.WEIGHT_DECAY_BIAS == 0.0
    )
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.AMP.ENABLED and cfg.INPUT.FORMAT == "RGB"
    cfg.MODEL.DEVICE = "cpu"
    names = [n for n, _ in build_model(cfg).named_parameters()]
    for prefix in cfg.SOLVER.HEAD_PARAM_PREFIXES:  # every 10x-lr prefix names real parameters
        assert any(n.startswith(prefix) for n in names), prefix
    assert cfg.SOLVER.HEAD_LR_MULTIPLIER == 10.0
    fast = {n for n in names if n.startswith(tuple(cfg.SOLVER.HEAD_PARAM_PREFIXES))}
    if "V1" in name:
        # CoinCheung's BiSeNetV1.get_params: 10x on the FFM and the three outputs only; the spatial
        # path and the context path (ResNet, ARMs, global context, refinement convs)
        # at the base rate
        assert cfg.SOLVER.MAX_ITER == 80000
        assert {n.split(".")[1] for n in fast} == {"ffm", "predictor", "aux8", "aux16"}
        assert not any(
            n.startswith(("backbone.", "sem_seg_head.arm", "sem_seg_head.refine")) for n in fast
        )
    else:
        # CoinCheung's BiSeNetV2.get_params: 10x on the children named head and aux* (not the BGA)
        assert {n.split(".")[1] for n in fast} == {"predictor", "boosters"}


def test_v2_matches_reference_structure():
    """Same layers as CoinCheung/BiSeNet's BiSeNetV2 (19 classes): its parameter count (from the
    parity fixture's state-dict shapes), ReLU after each GE layer's last depthwise conv,
    booster widths."""
    import json
    import math
    import os

    with open(os.path.join(DATA_DIR, "coincheung_bisenetv2", "manifest.json")) as f:
        manifest = json.load(f)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    reference = sum(math.prod(s) for k, s, _ in manifest["state_dict"] if not k.endswith(buffers))
    cfg = get_config("BiSeNet/V2_cityscapes.yaml")
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == reference == 5231487
    s3 = model.backbone.s3
    assert s3[0].dwconv[0].activation is None and s3[0].dwconv[1].activation is not None  # stride 2
    assert s3[1].dwconv[0].activation is not None  # stride 1
    assert {k: b.up_conv.out_channels for k, b in model.sem_seg_head.boosters.items()} == {
        "stem": 16,
        "s3": 64,
        "s4": 256,
        "s5": 1024,
    }
    head = model.sem_seg_head.eval()
    with torch.no_grad():
        outs = head.outputs(model.backbone.eval()(torch.randn(1, 3, 64, 96)))
    assert {k: tuple(v.shape) for k, v in outs.items()} == {
        k: (1, 19, 64, 96) for k in ("main", "stem", "s3", "s4", "s5")
    }
