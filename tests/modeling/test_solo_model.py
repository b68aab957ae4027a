"""End-to-end behaviour of the ``SOLO`` meta-architecture on CPU: training with empty and
half-empty batches (bitmask and polygon instances through ``DatasetMapper``), batched
inference, overfitting a few images, ``DefaultPredictor`` and ``Visualizer``."""

import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetMapper
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from solo_d2 import model_zoo
from solo_d2.modeling.solo.meta_arch import gt_bitmasks

SIZE = 96
COLORS = [(220, 60, 60), (60, 220, 60), (60, 60, 220)]  # RGB per class
# (class, center y, center x, size) per scene; the third scene is empty
SCENES = [
    [(0, 25, 25, 36), (1, 65, 62, 44)],
    [(1, 30, 60, 40), (2, 68, 28, 34)],
    [],
]


pytestmark = pytest.mark.usefixtures("single_thread")


def _polygon(cls, cy, cx, s):
    if cls == 0:
        pts = [
            (cx - s / 2, cy - s / 2),
            (cx + s / 2, cy - s / 2),
            (cx + s / 2, cy + s / 2),
            (cx - s / 2, cy + s / 2),
        ]
    elif cls == 1:
        pts = [
            (cx + s / 2 * math.cos(a), cy + s / 2 * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)
        ]
    else:
        pts = [(cx, cy - s / 2), (cx + s / 2, cy + s / 2), (cx - s / 2, cy + s / 2)]
    return [float(v) for p in pts for v in p]


def _scene(tmp_dir, idx, *, crowd=False):
    """A dataset dict (file on disk, annotations with polygon and RLE segmentations)."""
    img = np.full((SIZE, SIZE, 3), 40, np.uint8)
    annos = []
    for cls, cy, cx, s in SCENES[idx]:
        poly = _polygon(cls, cy, cx, s)
        rle = mask_util.merge(mask_util.frPyObjects([poly], SIZE, SIZE))
        img[mask_util.decode(rle).astype(bool)] = COLORS[cls]
        rle["counts"] = rle["counts"].decode("ascii")
        x0, y0, w, h = mask_util.toBbox(rle).tolist()
        annos.append(
            {
                "bbox": [x0, y0, w, h],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": cls,
                "segmentation": [poly],
                "rle": rle,
                "iscrowd": 0,
            }
        )
    if crowd:
        annos.append(
            {
                "bbox": [0, 0, 10, 10],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 0,
                "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
                "rle": None,
                "iscrowd": 1,
            }
        )
    path = tmp_dir / f"scene{idx}.png"
    Image.fromarray(img).save(path)
    return {
        "file_name": str(path),
        "height": SIZE,
        "width": SIZE,
        "image_id": idx,
        "annotations": annos,
    }


def _mapped(d, mask_format, is_train=True):
    d = {**d, "annotations": [dict(a) for a in d["annotations"]]}
    for a in d["annotations"]:
        rle = a.pop("rle")
        if mask_format == "bitmask" and rle is not None:
            a["segmentation"] = rle
    mapper = DatasetMapper(
        is_train=is_train,
        augmentations=[],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format=mask_format,
    )
    return mapper(d)


def _cfg(head="SOLOv2Head", mask_format="bitmask"):
    cfg = model_zoo.get_config("Synthetic/SOLOv2_R18.yaml")
    cfg.MODEL.SOLO.HEAD_NAME = head
    cfg.MODEL.SOLO.NUM_GRIDS = [12, 10, 8, 6, 4]
    cfg.INPUT.MASK_FORMAT = mask_format
    cfg.INPUT.MIN_SIZE_TEST = SIZE
    cfg.INPUT.MAX_SIZE_TEST = SIZE
    return cfg


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("solo_scenes")
    return [_scene(tmp, i, crowd=(i == 0)) for i in range(len(SCENES))]


def test_gt_masks_from_polygons_and_bitmasks_agree(scenes):
    poly, bit = _mapped(scenes[0], "polygon"), _mapped(scenes[0], "bitmask")
    assert len(poly["instances"]) == 2  # the crowd region is dropped by DatasetMapper
    a = gt_bitmasks(poly["instances"], (128, 160), "cpu")
    b = gt_bitmasks(bit["instances"], (128, 160), "cpu")
    assert a.shape == b.shape == (2, 128, 160) and a.dtype == torch.bool
    assert torch.equal(a, b) and not a[:, SIZE:].any() and not a[:, :, SIZE:].any()
    empty = gt_bitmasks(_mapped(scenes[2], "polygon")["instances"], (128, 160), "cpu")
    assert empty.shape == (0, 128, 160)


@pytest.mark.parametrize(
    "head,mask_format",
    [
        ("SOLOHead", "bitmask"),
        ("DecoupledSOLOHead", "polygon"),
        ("DecoupledSOLOLightHead", "bitmask"),
        ("SOLOv2Head", "polygon"),
    ],
)
def test_train_steps_with_empty_batches_then_batched_eval(scenes, head, mask_format):
    torch.manual_seed(0)
    model = build_model(_cfg(head, mask_format)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    half = [_mapped(scenes[0], mask_format), _mapped(scenes[2], mask_format)]
    empty = [_mapped(scenes[2], mask_format), _mapped(scenes[2], mask_format)]
    for batch, has_pos in ((half, True), (empty, False), (half, True)):
        losses = model(batch)
        assert set(losses) == {"loss_cate", "loss_mask"}
        assert all(torch.isfinite(v) for v in losses.values())
        assert (losses["loss_mask"].item() > 0) == has_pos
        opt.zero_grad()
        sum(losses.values()).backward()
        grad = model.ins_head.cate_pred.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        opt.step()

    model.eval()
    inputs = [
        _mapped(scenes[0], mask_format, is_train=False),
        _mapped(scenes[1], mask_format, is_train=False),
    ]
    inputs[0]["image"] = inputs[0]["image"][:, :80, :]  # different sizes in one batch
    inputs[1]["height"], inputs[1]["width"] = 150, 170  # output at the original size
    with torch.no_grad():
        out = model(inputs)
    assert len(out) == 2
    for o, size in zip(out, [(SIZE, SIZE), (150, 170)]):
        inst = o["instances"]
        assert inst.image_size == size and inst.pred_masks.shape[1:] == size
        assert inst.pred_masks.dtype == torch.bool and inst.has("pred_boxes") and inst.has("scores")


def _overfit(head, scenes, iters):
    torch.manual_seed(0)
    cfg = _cfg(head)
    model = build_model(cfg).train()
    data = [_mapped(scenes[0], "bitmask"), _mapped(scenes[1], "bitmask")]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    mask_losses = []
    for _ in range(iters):
        losses = model(data)
        mask_losses.append(losses["loss_mask"].item())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    return cfg, model.eval(), data, mask_losses


def _best_iou(inst, gt_mask, gt_class):
    same = inst.pred_masks[inst.pred_classes == gt_class]
    if len(same) == 0:
        return 0.0
    inter = (same & gt_mask).flatten(1).sum(1).float()
    union = (same | gt_mask).flatten(1).sum(1).float()
    return (inter / union).max().item()


# IoU threshold 0.75: masks are predicted at stride 4 and upsampled, so even a perfect model
# misplaces the boundary by up to ~2 px; for the smallest object here (34 px triangle) that
# alone costs up to ~20% of its area. Random masks of these sizes score IoU < 0.2.
IOU_THRESHOLD = 0.75


@pytest.mark.parametrize("head", ["SOLOv2Head", "DecoupledSOLOHead", "SOLOHead"])
def test_overfit_few_images(scenes, head, tmp_path):
    cfg, model, data, mask_losses = _overfit(head, scenes, iters=100)
    start, end = np.mean(mask_losses[:3]), np.mean(mask_losses[-5:])
    assert end < 0.25 * start, (start, end)
    with torch.no_grad():
        batched = model([{"image": d["image"]} for d in data])
        single = model([{"image": data[1]["image"]}])
    for d, o in zip(data, batched):
        gt = d["instances"]
        for mask, cls in zip(gt.gt_masks.tensor, gt.gt_classes):
            assert _best_iou(o["instances"], mask, cls) > IOU_THRESHOLD
        assert o["instances"].scores[0] > 0.5
        boxes = o["instances"].pred_boxes.tensor
        assert (boxes[:, 2] > boxes[:, 0]).all()  # boxes derived from the masks
    # batched inference of same-size images equals one image at a time
    torch.testing.assert_close(batched[1]["instances"].scores, single[0]["instances"].scores)
    assert torch.equal(batched[1]["instances"].pred_masks, single[0]["instances"].pred_masks)

    if head != "SOLOv2Head":
        return
    # DefaultPredictor with the trained weights, then the Visualizer draws its output
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("overfit")
    cfg.MODEL.WEIGHTS = str(tmp_path / "overfit.pth")
    predictor = DefaultPredictor(cfg)
    rgb = np.asarray(Image.open(scenes[1]["file_name"]).convert("RGB"))
    pred = predictor(rgb[:, :, ::-1].copy())["instances"].to("cpu")
    assert pred.image_size == (SIZE, SIZE)
    assert torch.equal(pred.pred_masks, batched[1]["instances"].pred_masks)
    meta = Metadata(name="solo_test", thing_classes=["square", "circle", "triangle"])
    drawn = Visualizer(rgb, meta).draw_instance_predictions(pred).get_image()
    assert drawn.shape == rgb.shape
    changed = np.abs(drawn.astype(int) - rgb.astype(int)).sum(-1) > 0
    assert changed[pred.pred_masks[0].numpy()].mean() > 0.5  # the top mask is painted


@pytest.mark.parametrize("head", ["SOLOHead", "DecoupledSOLOLightHead", "SOLOv2Head"])
def test_every_parameter_gets_a_gradient_without_positives(scenes, head):
    """DDP (find_unused_parameters=False) needs every parameter in the graph on every worker."""
    model = build_model(_cfg(head)).train()
    empty = [_mapped(scenes[2], "bitmask"), _mapped(scenes[2], "bitmask")]
    sum(model(empty).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
