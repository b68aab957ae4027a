"""TorchScript and ONNX export (solo_d2.export, tools/export_model.py, tools/onnx_predict.py):
parity of the exported graphs with eager inference on the same weights.

Every graph is traced at one input size and run at others (dynamic height and width; a
size that is not a multiple of 32, so the in-graph padding and cropping are exercised;
BiSeNet also at another batch size). ONNX files pass ``onnx.checker`` and run with
onnxruntime on CPU.

Models:

- SOLOv2 is trained briefly in-process on the synthetic COCO-format data (4 training images
  at a 128-pixel short side, AdamW, ``TRAIN_ITERS`` steps), so it makes real detections with
  few candidates (the path where every candidate above ``SCORE_THR`` enters Matrix NMS).
- SOLOv2-light, Decoupled SOLO and SOLO use their initial weights (seeded) with
  ``SCORE_THR = UPDATE_THR = 0`` (and ``MASK_PRIOR_PROB = 0.8``, so the initial masks
  pass ``MASK_THR``): every (cell, class) is a candidate, far more than
  ``NMS_PRE``, which exercises the ranking by score x maskness of ``rank_candidates``
  and fills all ``MAX_PER_IMG`` outputs. Training them too would cost minutes on one core.
- BiSeNet V1 R18 and V2 use their initial weights (seeded; eval-mode BN): the logits are
  compared directly.

Tolerances: TorchScript reproduces eager exactly (masks identical, scores within 1e-6).
ONNX: same number of detections and classes, scores within 1e-4, and at most
``ONNX_MASK_TOL`` (0.1%) of the mask pixels differ (onnxruntime's Resize and reductions
round differently from torch in the last float bit, which can flip a pixel whose
probability is 0.5 within 1e-7); logits within 1e-3 and argmax labels identical except
0.1% of pixels.
"""

import json

import numpy as np
import pytest
import torch

from tests.helpers import REPO_ROOT, run_tool

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from solo_d2 import model_zoo  # noqa: E402
from solo_d2.export import SOLOExportWrapper, check_onnx, export, export_wrapper  # noqa: E402

TRAIN_ITERS = 40
ONNX_MASK_TOL = 1e-3
TRACE_SIZE = (128, 160)  # traced at this size, run at the sizes of the test images
pytestmark = pytest.mark.usefixtures("single_thread")


def _solo_cfg(name, **solo):
    cfg = model_zoo.get_config(name)
    cfg.MODEL.DEVICE = "cpu"
    for k, v in solo.items():
        setattr(cfg.MODEL.SOLO, k, v)
    return cfg


def _map(cfg, dicts, short, is_train):
    mapper = DatasetMapper(
        is_train=is_train,
        augmentations=[T.ResizeShortestEdge(short, 4 * short)],
        image_format=cfg.INPUT.FORMAT,
        use_instance_mask=True,
        instance_mask_format=cfg.INPUT.MASK_FORMAT,
    )
    return [mapper(dict(d)) for d in dicts]


@pytest.fixture(scope="session")
def coco_dicts(synthetic_coco):
    return DatasetCatalog.get("synthetic_coco_train"), DatasetCatalog.get("synthetic_coco_val")


@pytest.fixture(scope="session")
def trained_solov2(coco_dicts, tmp_path_factory):
    """(cfg, eval model, path of its weights): SOLOv2 R18 after TRAIN_ITERS steps on 4 images."""
    train, _ = coco_dicts
    cfg = _solo_cfg("Synthetic/SOLOv2_R18.yaml")
    data = _map(cfg, [d for d in train if d["annotations"]][:4], 128, True)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for i in range(TRAIN_ITERS):
        batch = [data[(2 * i) % 4], data[(2 * i + 1) % 4]]
        losses = model(batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    model.eval()
    out = tmp_path_factory.mktemp("solov2_trained")
    DetectionCheckpointer(model, save_dir=str(out)).save("model")
    return cfg, model, out / "model.pth"


@pytest.fixture(scope="session")
def test_images(coco_dicts):
    """Two val images (BGR 0-255 [3, H, W]) at sizes other than the traced one, one not a
    multiple of 32."""
    _, val = coco_dicts
    cfg = _solo_cfg("Synthetic/SOLOv2_R18.yaml")
    a = _map(cfg, [val[0]], 112, False)[0]["image"].float()
    b = _map(cfg, [val[1]], 144, False)[0]["image"].float()
    assert a.shape[-2:] != TRACE_SIZE and b.shape[-2:] != TRACE_SIZE and a.shape[-1] % 32
    return [a, b]


def _sample(coco_dicts):
    train, _ = coco_dicts
    img = _map(_solo_cfg("Synthetic/SOLOv2_R18.yaml"), [train[5]], 128, False)[0]["image"].float()
    return torch.nn.functional.interpolate(img[None], size=TRACE_SIZE, mode="bilinear")[0].round()


def _export_both(wrapper, sample, tmp_path):
    ts = export(wrapper, sample, str(tmp_path / "model.ts"), "torchscript")
    path = export(wrapper, sample, str(tmp_path / "model.onnx"), "onnx")
    check_onnx(path)
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return ts, sess


def _run_onnx(sess, x):
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    return [torch.from_numpy(np.asarray(o)) for o in outs]


def _compare_solo(inst, outs, *, exact):
    """Export outputs (masks, scores, classes, boxes, count) vs eager Instances; returns the
    fraction of differing mask pixels."""
    masks, scores, classes, boxes, count = outs
    n = int(count)
    assert n == len(inst), (n, len(inst))
    m = masks.shape[0]
    assert masks.shape[1:] == inst.image_size and masks.dtype == torch.bool
    # padding rows are empty
    assert (
        not masks[n:].any()
        and (scores[n:] == 0).all()
        and (classes[n:] == -1).all()
        and (boxes[n:] == 0).all()
    )
    assert m >= n
    assert torch.equal(classes[:n], inst.pred_classes)
    torch.testing.assert_close(scores[:n], inst.scores, rtol=0, atol=1e-6 if exact else 1e-4)
    diff = (masks[:n] != inst.pred_masks).float().mean().item() if n else 0.0
    if exact:
        assert diff == 0.0
        torch.testing.assert_close(boxes[:n], inst.pred_boxes.tensor, rtol=0, atol=0)
    else:
        assert diff <= ONNX_MASK_TOL, diff
        torch.testing.assert_close(boxes[:n], inst.pred_boxes.tensor, rtol=0, atol=2.0)
    return diff


def _check_solo_model(model, wrapper, sample, images, tmp_path, min_detections):
    ts, sess = _export_both(wrapper, sample, tmp_path)
    stats = []
    with torch.no_grad():
        for img in images:
            inst = model([{"image": img}])[0]["instances"]
            assert len(inst) >= min_detections
            _compare_solo(inst, wrapper(img), exact=True)
            _compare_solo(inst, ts(img), exact=True)
            stats.append(_compare_solo(inst, _run_onnx(sess, img), exact=False))
            top = f"{inst.scores.max().item():.3f}" if len(inst) else "-"
            print(
                f"{type(wrapper.ins_head).__name__} {tuple(img.shape[1:])}: {len(inst)} "
                f"detections, top score {top}"
            )
    print(f"{type(wrapper.ins_head).__name__}: ONNX mask pixels differing: {stats}")
    return stats


def test_solov2_trained_export_parity(trained_solov2, test_images, coco_dicts, tmp_path):
    _, model, _ = trained_solov2
    wrapper = export_wrapper(model)
    assert isinstance(wrapper, SOLOExportWrapper) and wrapper.kind == "solov2"
    _check_solo_model(model, wrapper, _sample(coco_dicts), test_images, tmp_path, min_detections=1)


@pytest.mark.parametrize(
    "name,kind",
    [
        ("Synthetic/SOLOv2Light_R18.yaml", "solov2"),
        ("Synthetic/DecoupledSOLO_R18.yaml", "decoupled"),
        ("Synthetic/SOLO_R18.yaml", "solo"),
    ],
)
def test_solo_family_export_parity_many_candidates(name, kind, test_images, coco_dicts, tmp_path):
    # initial mask outputs near 0.8 (0.64 for the decoupled product): above MASK_THR
    cfg = _solo_cfg(name, SCORE_THR=0.0, UPDATE_THR=0.0, MASK_PRIOR_PROB=0.8)
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    wrapper = export_wrapper(model)
    assert wrapper.kind == kind
    # every cell x class is a candidate: far more than NMS_PRE, the ranking path
    assert (
        sum(g * g for g in cfg.MODEL.SOLO.NUM_GRIDS) * cfg.MODEL.SOLO.NUM_CLASSES
        > cfg.MODEL.SOLO.NMS_PRE
    )
    _check_solo_model(
        model,
        wrapper,
        _sample(coco_dicts),
        test_images,
        tmp_path,
        min_detections=cfg.MODEL.SOLO.MAX_PER_IMG,
    )


def test_solo_export_with_no_detections(trained_solov2, coco_dicts, tmp_path):
    """No candidate at all (SCORE_THR 1): fixed-size all-empty outputs, count 0, in every format."""
    import copy

    model = copy.deepcopy(trained_solov2[1])
    model.score_thresh = 1.0
    wrapper = export_wrapper(model)
    ts, sess = _export_both(wrapper, _sample(coco_dicts), tmp_path)
    blank = torch.full((3, 100, 140), 128.0)
    with torch.no_grad():
        assert len(model([{"image": blank}])[0]["instances"]) == 0
        for outs in (wrapper(blank), ts(blank), _run_onnx(sess, blank)):
            assert int(outs[4]) == 0 and outs[0].shape == (wrapper.max_per_img, 100, 140)
            assert not outs[0].any() and (outs[1] == 0).all() and (outs[2] == -1).all()


def test_solov2_dcn_exports_to_torchscript_and_refuses_onnx(test_images, coco_dicts, tmp_path):
    """Deformable convolutions trace (TorchScript identical to eager); ONNX is refused clearly."""
    cfg = _solo_cfg("Synthetic/SOLOv2_DCN_R18.yaml", SCORE_THR=0.0, UPDATE_THR=0.0)
    torch.manual_seed(2)
    model = build_model(cfg).eval()
    wrapper = export_wrapper(model)
    ts = export(wrapper, _sample(coco_dicts), str(tmp_path / "model.ts"), "torchscript")
    with torch.no_grad():
        inst = model([{"image": test_images[0]}])[0]["instances"]
        assert len(inst) == cfg.MODEL.SOLO.MAX_PER_IMG
        _compare_solo(inst, ts(test_images[0]), exact=True)
    with pytest.raises(ValueError, match="deformable convolutions.*torchscript"):
        export(wrapper, _sample(coco_dicts), str(tmp_path / "model.onnx"), "onnx")


@pytest.mark.parametrize("name", ["Synthetic/BiSeNetV1_R18.yaml", "Synthetic/BiSeNetV2.yaml"])
def test_bisenet_export_parity(name, tmp_path, synthetic_cityscapes):
    cfg = model_zoo.get_config(name)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    sample = torch.rand(1, 3, 128, 160, generator=gen) * 255
    images = torch.rand(2, 3, 100, 172, generator=gen) * 255  # other batch size and H, W
    with torch.no_grad():
        eager = torch.stack([model([{"image": im}])[0]["sem_seg"] for im in images])
        wrapper = export_wrapper(model)
        ts, sess = _export_both(wrapper, sample, tmp_path)
        for out in (wrapper(images), ts(images), _run_onnx(sess, images)[0]):
            assert out.shape == eager.shape
            torch.testing.assert_close(out, eager, rtol=0, atol=1e-3)
            assert (out.argmax(1) != eager.argmax(1)).float().mean() <= 1e-3
        labels = export(
            export_wrapper(model, argmax=True), sample, str(tmp_path / "labels.onnx"), "onnx"
        )
        sess = ort.InferenceSession(labels, providers=["CPUExecutionProvider"])
        out = _run_onnx(sess, images)[0]
        assert out.shape == (2, 100, 172) and (out != eager.argmax(1)).float().mean() <= 1e-3


def test_export_model_and_onnx_predict_tools(trained_solov2, coco_dicts, tmp_path):
    """tools/export_model.py exports the trained weights; tools/onnx_predict.py (onnxruntime,
    no torch, no detectron2) runs them on an image and writes a PNG."""
    import cv2

    _, _, weights = trained_solov2
    _, val = coco_dicts
    out = tmp_path / "exported"
    proc = run_tool(
        "tools/export_model.py",
        "--config-file",
        REPO_ROOT / "configs/Synthetic/SOLOv2_R18.yaml",
        "--format",
        "onnx",
        "--output",
        out,
        "--sample-image",
        val[2]["file_name"],
        "INPUT.MIN_SIZE_TEST",
        "128",
        "MODEL.WEIGHTS",
        weights,
        OMP_NUM_THREADS="1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "model.json").read_text())
    assert (
        info["opset"] == 17
        and info["outputs"][-1] == "num_detections"
        and info["min_size_test"] == 128
    )
    check_onnx(str(out / "model.onnx"))
    png = tmp_path / "pred.png"
    proc = run_tool(
        "-X",
        "importtime",
        "tools/onnx_predict.py",
        out / "model.onnx",
        val[0]["file_name"],
        "-o",
        png,
        "--threshold",
        "0.1",
        OMP_NUM_THREADS="1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if "|" in line
    }
    assert "onnxruntime" in imported and "torch" not in imported and "detectron2" not in imported
    assert "detections" in proc.stdout and f"wrote {png}" in proc.stdout
    img, src = cv2.imread(str(png)), cv2.imread(val[0]["file_name"])
    assert img is not None and img.shape == src.shape

    proc = run_tool(
        "tools/export_model.py",
        "--config-file",
        REPO_ROOT / "configs/Synthetic/SOLOv2_R18.yaml",
        "--format",
        "onnx",
        "--output",
        out,
        OMP_NUM_THREADS="1",
    )
    assert proc.returncode == 2 and "MODEL.WEIGHTS is empty" in proc.stderr
