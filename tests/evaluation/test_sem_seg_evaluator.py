"""solo_d2's SemSegEvaluator (solo_d2.evaluation.sem_seg): Detectron2 v0.6's metrics on every
Detectron2. Detectron2 main averages mIoU over the ground-truth classes only (v0.6: over the
classes in the ground truth or the predictions) and adds boundary IoU."""

import inspect

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import SemSegEvaluator as D2SemSegEvaluator
from detectron2.evaluation import sem_seg_evaluation
from PIL import Image

from solo_d2.evaluation import SemSegEvaluator, sem_seg_metrics

CS_SEM_VAL = "synthetic_cityscapes_fine_sem_seg_val"
D2_IS_V06 = "_compute_boundary_iou" not in inspect.getsource(sem_seg_evaluation)


def _run(evaluator, dicts, outputs):
    evaluator.reset()
    for d, out in zip(dicts, outputs):
        evaluator.process([{"file_name": d["file_name"]}], [out])
    return evaluator.evaluate()["sem_seg"]


def _predictions(dicts, extra_class=None):
    """One-hot scores of each image's train ids; ``extra_class`` paints a block of a class the
    images do not contain (where v0.6's and main's mIoU differ)."""
    outputs = []
    for d in dicts:
        ids = torch.from_numpy(np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64))
        ids = torch.where(ids == 255, torch.zeros_like(ids), ids)
        if extra_class is not None:
            ids[:20, :40] = extra_class
        outputs.append({"sem_seg": (ids[None] == torch.arange(19)[:, None, None]).float()})
    return outputs


def _absent_class(dicts):
    present = set()
    for d in dicts:
        present |= set(np.unique(np.asarray(Image.open(d["sem_seg_file_name"]))).tolist())
    absent = sorted(set(range(19)) - present)
    assert absent, "the synthetic val images contain every class"
    return absent[0]


def test_metrics_of_a_hand_made_confusion_matrix():
    # rows: prediction, columns: ground truth; classes a, b, c (c only predicted), ignore last
    conf = np.array([[6, 2, 0, 1], [1, 3, 0, 0], [1, 0, 0, 0], [0, 0, 0, 5]], dtype=np.int64)
    res = sem_seg_metrics(conf, ["a", "b", "c"])
    iou_a, iou_b = 6 / (8 + 8 - 6), 3 / (5 + 4 - 3)
    assert res["IoU-a"] == pytest.approx(100 * iou_a) and res["IoU-b"] == pytest.approx(100 * iou_b)
    assert np.isnan(res["IoU-c"]) and np.isnan(res["ACC-c"])
    assert res["mIoU"] == pytest.approx(
        100 * (iou_a + iou_b) / 3
    )  # c (predicted, no ground truth) counts as 0
    assert res["fwIoU"] == pytest.approx(100 * (iou_a * 8 / 13 + iou_b * 5 / 13))
    assert res["mACC"] == pytest.approx(100 * (6 / 8 + 3 / 5) / 2)
    assert res["pACC"] == pytest.approx(100 * 9 / 13)


@pytest.mark.parametrize("extra", [False, True])
def test_results_are_detectron2_v06s(synthetic_cityscapes, tmp_path, extra):
    """Equal to v0.6's own evaluator where it runs; on main, v0.6's formula against main's keys."""
    dicts = DatasetCatalog.get(CS_SEM_VAL)
    outputs = _predictions(dicts, _absent_class(dicts) if extra else None)
    ours = _run(
        SemSegEvaluator(CS_SEM_VAL, distributed=False, output_dir=str(tmp_path / "a")),
        dicts,
        outputs,
    )
    d2 = _run(
        D2SemSegEvaluator(CS_SEM_VAL, distributed=False, output_dir=str(tmp_path / "b")),
        dicts,
        outputs,
    )
    assert (tmp_path / "a" / "sem_seg_predictions.json").is_file() and (
        tmp_path / "a" / "sem_seg_evaluation.pth"
    ).is_file()
    assert not any(k.startswith(("BoundaryIoU", "min(IoU")) for k in ours)
    if D2_IS_V06:
        assert list(ours) == list(d2)
        np.testing.assert_equal([ours[k] for k in ours], [d2[k] for k in ours])
    else:  # Detectron2 main: every shared key but mIoU is equal; mIoU equal without an extra class
        same = [k for k in ours if k != "mIoU"]
        np.testing.assert_allclose([ours[k] for k in same], [d2[k] for k in same], rtol=1e-12)
        assert (
            (ours["mIoU"] < d2["mIoU"])
            if extra
            else ours["mIoU"] == pytest.approx(d2["mIoU"], rel=1e-12)
        )
    if extra:  # the painted class is predicted, absent from the ground truth: an IoU 0 in the mean
        ious = [v for k, v in ours.items() if k.startswith("IoU-") and not np.isnan(v)]
        assert ours["mIoU"] == pytest.approx(sum(ious) / (len(ious) + 1))
