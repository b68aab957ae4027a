"""Evaluators proven on ground truth: GT fed as predictions scores AP = 100 / mIoU = 100,
and a deliberately wrong prediction set scores clearly lower.

Predictions come from the files through Detectron2's loaders (COCO json, Cityscapes
instanceIds / labelTrainIds), so loaders, formats and evaluators are checked to agree.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.structures import Boxes, Instances
from PIL import Image

from solo_d2.compat import has_compiled_ops
from solo_d2.config import get_cfg
from solo_d2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    build_evaluator,
    coco_tasks_from_config,
)
from solo_d2.evaluation import SemSegEvaluator as SoloSemSegEvaluator
from tests.helpers import REPO_ROOT

COCO_VAL = "synthetic_coco_val"
CS_INST_VAL = "synthetic_cityscapes_fine_instance_seg_val"
CS_SEM_VAL = "synthetic_cityscapes_fine_sem_seg_val"


def _run(evaluator, inputs, outputs):
    evaluator.reset()
    for inp, out in zip(inputs, outputs):
        evaluator.process([inp], [out])
    return evaluator.evaluate()


# ----------------------------------------------------------------- COCO


def _coco_gt_predictions(dicts, wrong=False):
    """Instances built from the non-crowd annotations of each image (optionally corrupted)."""
    gen = torch.Generator().manual_seed(0)
    outputs = []
    for d in dicts:
        annos = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
        gt = detection_utils.annotations_to_instances(
            annos, (d["height"], d["width"]), mask_format="bitmask"
        )
        if len(annos):
            masks, boxes, classes = (
                gt.gt_masks.tensor,
                gt.gt_boxes.tensor.clone(),
                gt.gt_classes.clone(),
            )
        else:  # an image without objects
            masks = torch.zeros((0, d["height"], d["width"]), dtype=torch.bool)
            boxes, classes = torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64)
        if wrong and len(gt):
            masks = torch.roll(masks, shifts=(9, 9), dims=(1, 2))  # shifted masks and boxes
            boxes = boxes + 9
            flip = torch.rand(len(gt), generator=gen) < 0.5
            classes[flip] = (classes[flip] + 1) % 3  # wrong classes for about half
        pred = Instances((d["height"], d["width"]))
        pred.pred_masks = masks
        pred.pred_boxes = Boxes(boxes)
        pred.pred_classes = classes
        pred.scores = torch.ones(len(gt))
        outputs.append({"instances": pred})
    return outputs


@pytest.fixture(scope="module")
def coco_val(synthetic_coco):
    return DatasetCatalog.get(COCO_VAL)


def test_coco_evaluator_gt_is_perfect_and_wrong_is_worse(coco_val, tmp_path):
    evaluator = COCOEvaluator(
        COCO_VAL,
        tasks=("segm", "bbox"),
        distributed=False,
        output_dir=str(tmp_path),
        use_fast_impl=False,
    )
    inputs = [
        {"image_id": d["image_id"], "height": d["height"], "width": d["width"]} for d in coco_val
    ]
    perfect = _run(evaluator, inputs, _coco_gt_predictions(coco_val))
    assert perfect["segm"]["AP"] == pytest.approx(100.0, abs=0.01)
    assert perfect["bbox"]["AP"] == pytest.approx(100.0, abs=0.01)
    wrong = _run(evaluator, inputs, _coco_gt_predictions(coco_val, wrong=True))
    assert wrong["segm"]["AP"] < 60.0
    assert wrong["bbox"]["AP"] < 60.0


# ----------------------------------------------------------------- Cityscapes instances


def _cityscapes_instance_predictions(dicts, wrong=False):
    """Instances read from each image's ``*_gtFine_instanceIds.png`` (optionally corrupted)."""
    from cityscapesscripts.helpers.labels import id2label

    thing_classes = MetadataCatalog.get(CS_INST_VAL).thing_classes
    outputs = []
    for k, d in enumerate(dicts):
        inst_file = (
            d["file_name"]
            .replace("leftImg8bit", "gtFine", 1)
            .replace("_leftImg8bit.png", "_gtFine_instanceIds.png")
        )
        ids = np.asarray(Image.open(inst_file))
        inst_ids = [
            i for i in np.unique(ids) if i >= 1000 and id2label[i // 1000].name in thing_classes
        ]
        masks = (
            torch.from_numpy(np.stack([ids == i for i in inst_ids]))
            if inst_ids
            else torch.zeros((0,) + ids.shape, dtype=torch.bool)
        )
        classes = torch.tensor(
            [thing_classes.index(id2label[i // 1000].name) for i in inst_ids], dtype=torch.int64
        )
        if wrong and len(inst_ids):
            masks = torch.roll(masks, shifts=(0, 25), dims=(1, 2))
            classes = (classes + 1 + k % 2) % len(thing_classes)
        pred = Instances(ids.shape)
        pred.pred_masks = masks
        pred.pred_classes = classes
        pred.scores = torch.linspace(1.0, 0.5, len(inst_ids))
        outputs.append({"instances": pred})
    return outputs


def test_cityscapes_instance_evaluator_gt_is_perfect_and_wrong_is_worse(synthetic_cityscapes):
    dicts = DatasetCatalog.get(CS_INST_VAL)
    inputs = [{"file_name": d["file_name"], "image_id": d["image_id"]} for d in dicts]
    evaluator = CityscapesInstanceEvaluator(CS_INST_VAL)
    perfect = _run(evaluator, inputs, _cityscapes_instance_predictions(dicts))
    assert perfect["segm"]["AP"] == pytest.approx(100.0, abs=0.01)
    assert perfect["segm"]["AP50"] == pytest.approx(100.0, abs=0.01)
    wrong = _run(evaluator, inputs, _cityscapes_instance_predictions(dicts, wrong=True))
    assert wrong["segm"]["AP"] < 30.0


def test_cityscapes_instance_evaluator_subset_and_missing_prediction(synthetic_cityscapes):
    """Evaluating a subset works; an image without ``instances`` counts as no detections."""
    dicts = DatasetCatalog.get(CS_INST_VAL)[:3]
    inputs = [{"file_name": d["file_name"]} for d in dicts]
    outputs = _cityscapes_instance_predictions(dicts)
    evaluator = CityscapesInstanceEvaluator(CS_INST_VAL)
    assert _run(evaluator, inputs, outputs)["segm"]["AP"] == pytest.approx(100.0, abs=0.01)
    with_gap = [{}] + outputs[1:]
    has_gt = len(outputs[0]["instances"]) > 0
    ap = _run(evaluator, inputs, with_gap)["segm"]["AP"]
    assert (ap < 100.0) if has_gt else ap == pytest.approx(100.0, abs=0.01)


# ----------------------------------------------------------------- semantic


def _sem_seg_predictions(dicts, wrong=False):
    """One-hot (19, H, W) scores from each ``*_gtFine_labelTrainIds.png`` (optionally corrupted)."""
    outputs = []
    for d in dicts:
        train_ids = torch.from_numpy(
            np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)
        )
        if wrong:
            valid = train_ids != 255
            train_ids = torch.where(valid, (train_ids + 1) % 19, train_ids)
            train_ids[: train_ids.shape[0] // 2] = torch.roll(
                train_ids[: train_ids.shape[0] // 2], 40, dims=1
            )
        logits = torch.zeros((19,) + tuple(train_ids.shape))
        valid = train_ids != 255
        logits[train_ids.clamp(max=18)[None] == torch.arange(19)[:, None, None]] = 1.0
        logits[:, ~valid] = 0.0
        outputs.append({"sem_seg": logits})
    return outputs


@pytest.mark.parametrize("which", ["cityscapes", "sem_seg", "solo_d2_sem_seg"])
def test_sem_seg_evaluators_gt_is_perfect_and_wrong_is_worse(synthetic_cityscapes, tmp_path, which):
    dicts = DatasetCatalog.get(CS_SEM_VAL)
    inputs = [
        {"file_name": d["file_name"], "sem_seg_file_name": d["sem_seg_file_name"]} for d in dicts
    ]
    if which == "cityscapes":
        evaluator, key, metric = CityscapesSemSegEvaluator(CS_SEM_VAL), "cityscapes_sem_seg", "IoU"
    else:
        cls = SemSegEvaluator if which == "sem_seg" else SoloSemSegEvaluator
        evaluator, key, metric = (
            cls(CS_SEM_VAL, distributed=False, output_dir=str(tmp_path)),
            "sem_seg",
            "mIoU",
        )
    perfect = _run(evaluator, inputs, _sem_seg_predictions(dicts))
    assert perfect[key][metric] == pytest.approx(100.0, abs=0.01)
    if which == "cityscapes":  # category-level IoU as well (every reported number is in percent)
        assert perfect[key]["IoU_sup"] == pytest.approx(100.0, abs=0.01)
    wrong = _run(evaluator, inputs, _sem_seg_predictions(dicts, wrong=True))
    assert wrong[key][metric] < 30.0


def test_cityscapes_evaluators_work_with_numpy_without_in1d(synthetic_cityscapes, monkeypatch):
    """cityscapesscripts calls ``np.in1d``, removed in NumPy 2.4: the evaluators give its
    modules a numpy that has it (here numpy without ``in1d`` is simulated)."""
    monkeypatch.delattr(np, "in1d", raising=False)
    dicts = DatasetCatalog.get(CS_SEM_VAL)[:2]
    inputs = [
        {"file_name": d["file_name"], "sem_seg_file_name": d["sem_seg_file_name"]} for d in dicts
    ]
    assert _run(CityscapesSemSegEvaluator(CS_SEM_VAL), inputs, _sem_seg_predictions(dicts))[
        "cityscapes_sem_seg"
    ]["IoU"] == pytest.approx(100.0, abs=0.01)
    dicts = DatasetCatalog.get(CS_INST_VAL)[:2]
    inputs = [{"file_name": d["file_name"]} for d in dicts]
    wrong = _run(
        CityscapesInstanceEvaluator(CS_INST_VAL),
        inputs,
        _cityscapes_instance_predictions(dicts, wrong=True),
    )
    assert wrong["segm"]["AP"] < 30.0
    assert not hasattr(np, "in1d")  # numpy itself is left alone


# ----------------------------------------------------------------- build_evaluator


def test_build_evaluator_by_evaluator_type(synthetic_coco, synthetic_cityscapes, tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.META_ARCHITECTURE = "SOLOv2"
    assert coco_tasks_from_config(cfg) == ("segm", "bbox")
    coco = build_evaluator(cfg, COCO_VAL, distributed=False)
    assert isinstance(coco, COCOEvaluator) and set(coco._tasks) == {"segm", "bbox"}
    # the default output folder is OUTPUT_DIR/inference; the arguments reach the evaluator
    assert coco._output_dir == os.path.join(str(tmp_path), "inference")
    assert coco._distributed is False and coco._use_fast_impl == has_compiled_ops()
    assert build_evaluator(cfg, COCO_VAL, str(tmp_path / "given"))._output_dir == str(
        tmp_path / "given"
    )
    assert build_evaluator(cfg, COCO_VAL)._distributed is True
    assert isinstance(build_evaluator(cfg, CS_INST_VAL), CityscapesInstanceEvaluator)
    both = build_evaluator(cfg, CS_SEM_VAL)
    assert isinstance(both, DatasetEvaluators)
    assert [type(e) for e in both._evaluators] == [CityscapesSemSegEvaluator, SoloSemSegEvaluator]

    name = "solo_d2_test_plain_sem_seg"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: DatasetCatalog.get(CS_SEM_VAL))
        meta = MetadataCatalog.get(CS_SEM_VAL)
        MetadataCatalog.get(name).set(
            evaluator_type="sem_seg", stuff_classes=meta.stuff_classes, ignore_label=255
        )
    assert (
        type(build_evaluator(cfg, name)) is SoloSemSegEvaluator
    )  # Detectron2's, v0.6's metrics on main too
    sem = build_evaluator(cfg, name, str(tmp_path / "sem"), distributed=False)
    assert sem.output_dir == str(tmp_path / "sem") and sem.distributed is False

    # boxes only for detectors without masks; keypoints when the config predicts them
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    assert coco_tasks_from_config(cfg) == ("bbox",)
    cfg.MODEL.KEYPOINT_ON = True
    assert coco_tasks_from_config(cfg) == ("bbox", "keypoints")
    cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.MASK_ON = "GeneralizedRCNN", True
    assert coco_tasks_from_config(cfg) == ("segm", "bbox", "keypoints")

    MetadataCatalog.get("solo_d2_test_no_evaluator").set(thing_classes=["a"])
    with pytest.raises(ValueError, match="solo_d2_test_no_evaluator.*evaluator_type"):
        build_evaluator(cfg, "solo_d2_test_no_evaluator")


def test_built_cityscapes_sem_seg_evaluators_run_together(synthetic_cityscapes, tmp_path):
    """Both evaluators of a cityscapes_sem_seg dataset report under distinct keys."""
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    dicts = DatasetCatalog.get(CS_SEM_VAL)
    inputs = [
        {"file_name": d["file_name"], "sem_seg_file_name": d["sem_seg_file_name"]} for d in dicts
    ]
    res = _run(
        build_evaluator(cfg, CS_SEM_VAL, str(tmp_path), distributed=False),
        inputs,
        _sem_seg_predictions(dicts),
    )
    assert res["cityscapes_sem_seg"]["IoU"] == pytest.approx(100.0, abs=0.01)
    assert res["sem_seg"]["mIoU"] == pytest.approx(100.0, abs=0.01)


def test_cityscapes_instance_evaluator_uses_prediction_scores(synthetic_cityscapes):
    """AP depends on the score order: the same two predictions per ground-truth instance (the
    exact mask and a shifted, non-overlapping false positive of the same class) score AP 100
    when the true positive ranks first and clearly less when the false positive does.
    (An evaluator that ignores or mis-writes scores gives both orders the same AP.)"""
    dicts = DatasetCatalog.get(CS_INST_VAL)
    inputs = [{"file_name": d["file_name"]} for d in dicts]
    gt = _cityscapes_instance_predictions(dicts)

    def with_false_positives(tp_score, fp_score):
        outputs = []
        for out in gt:
            inst = out["instances"]
            n = len(inst)
            shifted = torch.roll(
                inst.pred_masks, shifts=(0, inst.image_size[1] // 2), dims=(1, 2)
            ) & ~inst.pred_masks.any(0)
            pred = Instances(inst.image_size)
            pred.pred_masks = torch.cat([inst.pred_masks, shifted])
            pred.pred_classes = torch.cat([inst.pred_classes, inst.pred_classes])
            pred.scores = torch.cat([torch.full((n,), tp_score), torch.full((n,), fp_score)])
            outputs.append({"instances": pred})
        return outputs

    evaluator = CityscapesInstanceEvaluator(CS_INST_VAL)
    tp_first = _run(evaluator, inputs, with_false_positives(0.9, 0.3))["segm"]
    fp_first = _run(evaluator, inputs, with_false_positives(0.3, 0.9))["segm"]
    assert tp_first["AP"] == pytest.approx(100.0, abs=0.01)
    assert fp_first["AP"] < tp_first["AP"] - 10.0, (tp_first["AP"], fp_first["AP"])
    assert fp_first["AP50"] < 90.0


def test_cityscapes_evaluators_need_gt_dir():
    name = "solo_d2_test_no_gt_dir"
    MetadataCatalog.get(name).set(thing_classes=["car"])
    for cls in (CityscapesInstanceEvaluator, CityscapesSemSegEvaluator):
        with pytest.raises(KeyError, match="solo_d2_test_no_gt_dir.*gt_dir.*" + cls.__name__):
            cls(name)


def test_build_evaluator_generates_a_missing_synthetic_dataset(tmp_path):
    """COCOEvaluator reads the annotation json when it is built, so build_evaluator generates a
    synthetic dataset's files first (a fresh process: the dataset root is read at import)."""
    code = (
        "import os; from solo_d2.config import get_cfg; from solo_d2.evaluation import "
        "build_evaluator; cfg = get_cfg(); cfg.OUTPUT_DIR = os.environ['OUT']; "
        "cfg.MODEL.META_ARCHITECTURE = 'SOLOv2'; e = build_evaluator(cfg, 'synthetic_coco_val', "
        "distributed=False); print(len(e._coco_api.getImgIds()))"
    )
    env = dict(
        os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OUT=str(tmp_path / "out")
    )
    repo = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=repo, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 0
    assert (
        tmp_path / "datasets" / "synthetic_coco" / "annotations" / "instances_val.json"
    ).is_file()
