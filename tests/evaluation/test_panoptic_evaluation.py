"""Panoptic evaluators proven on ground truth: GT fed as predictions scores PQ = SQ = RQ = 100
(things and stuff) through each evaluator, a known perturbation scores the PQ/SQ/RQ computed
by hand below, and bad input fails with errors that name the dataset and the key.

Predictions are built from the panoptic ground-truth files (PNG + json) in Detectron2's model
output format: ``panoptic_seg = (int32 [H, W] segment ids, [{"id", "category_id", "isthing"}])``
with *contiguous* category ids in each dataset's metadata convention.
"""

import json
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator as D2COCOPanopticEvaluator
from detectron2.evaluation import DatasetEvaluators
from PIL import Image

from solo_d2.config import get_cfg
from solo_d2.evaluation import CityscapesPanopticEvaluator, COCOPanopticEvaluator, build_evaluator

COCO_STANDARD = "synthetic_coco_panoptic_val"
COCO_SEPARATED = "synthetic_coco_panoptic_val_separated"
CS_PANOPTIC = "synthetic_cityscapes_fine_panoptic_val"
KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


def _ids(png):
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def gt_predictions(name, edit=None):
    """(inputs, outputs) of every image of dataset ``name``: its panoptic ground truth as a
    prediction. ``edit(image_id, ids, segments)`` may change the ids (in place) and return new
    segments (``category_id``: dataset ids) before they become contiguous ids."""
    meta = MetadataCatalog.get(name)
    with open(meta.panoptic_json) as f:
        annotations = {a["image_id"]: a for a in json.load(f)["annotations"]}
    things, stuff = meta.thing_dataset_id_to_contiguous_id, meta.stuff_dataset_id_to_contiguous_id
    inputs, outputs = [], []
    for d in DatasetCatalog.get(name):
        ann = annotations[d["image_id"]]
        ids = _ids(os.path.join(meta.panoptic_root, ann["file_name"]))
        segments = [dict(s) for s in ann["segments_info"]]
        if edit is not None:
            segments = edit(d["image_id"], ids, segments)
        info = [
            {
                "id": s["id"],
                "isthing": s["category_id"] in things,
                "category_id": things[s["category_id"]]
                if s["category_id"] in things
                else stuff[s["category_id"]],
            }
            for s in segments
        ]
        inputs.append({"file_name": d["file_name"], "image_id": d["image_id"]})
        outputs.append({"panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), info)})
    return inputs, outputs


def run(evaluator, inputs, outputs):
    evaluator.reset()
    for inp, out in zip(inputs, outputs):
        evaluator.process([inp], [out])
    return evaluator.evaluate()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    c = get_cfg()
    c.OUTPUT_DIR = str(tmp_path_factory.mktemp("panoptic_eval"))
    return c


# ----------------------------------------------------------------- ground truth scores 100


@pytest.mark.parametrize("name", [COCO_STANDARD, COCO_SEPARATED])
def test_coco_panoptic_ground_truth_scores_100(cfg, name):
    evaluator = build_evaluator(cfg, name)
    assert isinstance(evaluator, COCOPanopticEvaluator) and isinstance(
        evaluator, D2COCOPanopticEvaluator
    )
    res = run(evaluator, *gt_predictions(name))
    assert list(res) == ["panoptic_seg"] and tuple(res["panoptic_seg"]) == KEYS
    assert res["panoptic_seg"] == pytest.approx({k: 100.0 for k in KEYS})
    assert all(type(v) is float for v in res["panoptic_seg"].values())
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "inference", "predictions.json"))


def test_cityscapes_panoptic_ground_truth_scores_100_with_both_evaluators(cfg):
    evaluator = build_evaluator(cfg, CS_PANOPTIC)
    assert isinstance(evaluator, DatasetEvaluators)
    assert [type(e) for e in evaluator._evaluators] == [
        COCOPanopticEvaluator,
        CityscapesPanopticEvaluator,
    ]
    res = run(evaluator, *gt_predictions(CS_PANOPTIC))
    assert set(res) == {"panoptic_seg", "cityscapes_panoptic_seg"}
    assert res["panoptic_seg"] == pytest.approx({k: 100.0 for k in KEYS})
    cs = res["cityscapes_panoptic_seg"]
    assert {k: cs[k] for k in KEYS} == pytest.approx({k: 100.0 for k in KEYS})
    # per class: the 16 classes of the synthetic scenes (no wall, fence, traffic light)
    per_class = sorted(k[3:] for k in cs if k.startswith("PQ-"))
    assert len(per_class) == 16 and "car" in per_class and "wall" not in per_class
    assert all(cs["PQ-" + c] == 100.0 for c in per_class)


def test_cityscapes_panoptic_evaluator_on_a_subset():
    """cityscapesscripts evaluates the images processed (Detectron2's COCO one needs all)."""
    inputs, outputs = gt_predictions(CS_PANOPTIC)
    res = run(CityscapesPanopticEvaluator(CS_PANOPTIC), inputs[:2], outputs[:2])
    assert res["cityscapes_panoptic_seg"]["PQ"] == 100.0


# ----------------------------------------------------------------- a known perturbation


def _pq(table):
    """PQ, SQ, RQ (percent) of a class group, as the panoptic quality paper defines them:
    per class PQ = IoU_sum / (TP + FP/2 + FN/2), SQ = IoU_sum / TP, RQ = TP / (TP + FP/2 + FN/2),
    averaged over the classes with TP + FP + FN > 0."""
    pq = [iou / (tp + fp / 2 + fn / 2) for tp, fp, fn, iou in table.values()]
    sq = [iou / tp if tp else 0.0 for tp, fp, fn, iou in table.values()]
    rq = [tp / (tp + fp / 2 + fn / 2) for tp, fp, fn, iou in table.values()]
    return [100 * float(np.mean(v)) for v in (pq, sq, rq)]


def _expected(things, stuff):
    res = {}
    for suffix, table in (("", {**things, **stuff}), ("_th", things), ("_st", stuff)):
        res.update(zip(("PQ" + suffix, "SQ" + suffix, "RQ" + suffix), _pq(table)))
    return res


def _perturbation(remove, into, relabel):
    """edit(): in image ``remove[0]`` the thing segment of category ``remove[1]`` is removed and
    its pixels join the stuff segment of category ``into``; in image ``relabel[0]`` the stuff
    segment of category ``relabel[1]`` is predicted as category ``relabel[2]``."""

    def edit(image_id, ids, segments):
        if image_id == remove[0]:
            (gone,) = [s for s in segments if s["category_id"] == remove[1]]
            (target,) = [s for s in segments if s["category_id"] == into]
            ids[ids == gone["id"]] = target["id"]
            segments = [s for s in segments if s is not gone]
        if image_id == relabel[0]:
            (seg,) = [s for s in segments if s["category_id"] == relabel[1]]
            seg["category_id"] = relabel[2]
        return segments

    return edit


def _gt_counts(name):
    """Non-crowd ground-truth segments per category, and the area of each (image, category)."""
    with open(MetadataCatalog.get(name).panoptic_json) as f:
        anns = json.load(f)["annotations"]
    counts, areas = {}, {}
    for a in anns:
        for s in a["segments_info"]:
            counts[s["category_id"]] = counts.get(s["category_id"], 0) + (not s["iscrowd"])
            areas.setdefault((a["image_id"], s["category_id"]), []).append(s["area"])
    return counts, areas


def coco_expected():
    """synthetic_coco_panoptic_val: image 3 loses its square (category 1, 2067 px), whose pixels
    become ground (category 7, 25602 px); in image 5 the sky (category 5) is predicted as wall (8).

    Non-crowd GT segments: square 9, circle 6, triangle 8, sky 5, ground 8, wall 8 (one crowd
    circle, ignored: the prediction covering it exactly is not a false positive). Every other
    predicted segment is its GT segment (IoU 1).
      square:   TP 8, FP 0, FN 1 (the removed one), IoU sum 8
      circle:   TP 6, IoU sum 6;  triangle: TP 8, IoU sum 8
      sky:      TP 4, FN 1 (image 5's sky has no prediction of its class), IoU sum 4
      ground:   TP 8, IoU sum 7 + 25602 / (25602 + 2067): the grown ground segment's union is
                pred area + GT area - intersection = 27669 + 25602 - 25602
      wall:     TP 8, FP 1 (image 5's sky predicted as wall overlaps no wall), IoU sum 8
    """
    counts, areas = _gt_counts(COCO_STANDARD)
    assert counts == {1: 9, 2: 6, 3: 8, 5: 5, 7: 8, 8: 8}
    assert (
        areas[(3, 1)] == [2067] and areas[(3, 7)] == [25602] and (5, 5) in areas and (5, 8) in areas
    )
    things = {1: (8, 0, 1, 8.0), 2: (6, 0, 0, 6.0), 3: (8, 0, 0, 8.0)}
    stuff = {5: (4, 0, 1, 4.0), 7: (8, 0, 0, 7 + 25602 / 27669), 8: (8, 1, 0, 8.0)}
    return _expected(things, stuff)


def cityscapes_expected():
    """synthetic_cityscapes_fine_panoptic_val: frankfurt_000000_000002 loses its truck (27,
    11974 px) to the road (7, 38874 px); in lindau_000000_000005 the sidewalk (8) is predicted
    as terrain (22).

    Non-crowd GT segments: road, sidewalk, building, pole, traffic sign, vegetation, terrain,
    sky 6 each; person 3, rider 2, car 2, truck 4, bus 1, train 2, motorcycle 1, bicycle 3
    (crowd person/car groups ignored; wall, fence, traffic light absent: not averaged).
      truck:    TP 3, FN 1, IoU sum 3
      road:     TP 6, IoU sum 5 + 38874 / (38874 + 11974)
      sidewalk: TP 5, FN 1, IoU sum 5
      terrain:  TP 6, FP 1, IoU sum 6
      all other classes: TP = count, IoU sum = count
    """
    counts, areas = _gt_counts(CS_PANOPTIC)
    assert counts == {
        7: 6,
        8: 6,
        11: 6,
        17: 6,
        20: 6,
        21: 6,
        22: 6,
        23: 6,
        24: 3,
        25: 2,
        26: 2,
        27: 4,
        28: 1,
        31: 2,
        32: 1,
        33: 3,
    }
    assert areas[("frankfurt_000000_000002", 27)] == [11974] and areas[
        ("frankfurt_000000_000002", 7)
    ] == [38874]
    things = {c: (n, 0, 0, float(n)) for c, n in counts.items() if c >= 24}
    stuff = {c: (n, 0, 0, float(n)) for c, n in counts.items() if c < 24}
    things[27] = (3, 0, 1, 3.0)
    stuff[7] = (6, 0, 0, 5 + 38874 / 50848)
    stuff[8] = (5, 0, 1, 5.0)
    stuff[22] = (6, 1, 0, 6.0)
    return _expected(things, stuff)


@pytest.mark.parametrize("name", [COCO_STANDARD, COCO_SEPARATED])
def test_coco_panoptic_known_perturbation(cfg, name):
    expected = coco_expected()
    inputs, outputs = gt_predictions(name, _perturbation(remove=(3, 1), into=7, relabel=(5, 5, 8)))
    res = run(build_evaluator(cfg, name), inputs, outputs)["panoptic_seg"]
    assert res == pytest.approx(expected, abs=1e-9)
    assert res["SQ_th"] == 100.0 and res["RQ_st"] < 100.0 and res["SQ_st"] < 100.0


def test_cityscapes_panoptic_known_perturbation_with_both_evaluators(cfg):
    expected = cityscapes_expected()
    edit = _perturbation(
        remove=("frankfurt_000000_000002", 27), into=7, relabel=("lindau_000000_000005", 8, 22)
    )
    res = run(build_evaluator(cfg, CS_PANOPTIC), *gt_predictions(CS_PANOPTIC, edit))
    assert res["panoptic_seg"] == pytest.approx(expected, abs=1e-9)
    cs = res["cityscapes_panoptic_seg"]
    assert {k: cs[k] for k in KEYS} == pytest.approx(expected, abs=1e-9)
    assert cs["PQ-truck"] == pytest.approx(100 * 3 / 3.5) and cs["SQ-truck"] == 100.0
    assert cs["SQ-road"] == pytest.approx(100 * (5 + 38874 / 50848) / 6) and cs["RQ-road"] == 100.0
    assert cs["PQ-terrain"] == pytest.approx(100 * 6 / 6.5)


# ----------------------------------------------------------------- bad input


def test_dataset_without_panoptic_annotations_is_refused(cfg):
    with pytest.raises(
        ValueError, match="'synthetic_coco_val' has no panoptic annotations.*'panoptic_root'"
    ):
        COCOPanopticEvaluator("synthetic_coco_val")
    with pytest.raises(
        ValueError, match="'synthetic_cityscapes_fine_sem_seg_val' has no panoptic annotations"
    ):
        CityscapesPanopticEvaluator("synthetic_cityscapes_fine_sem_seg_val")
    name = "test_panoptic_eval_without_json"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        evaluator_type="coco_panoptic_seg",
        panoptic_root="x",
        thing_dataset_id_to_contiguous_id={},
        stuff_dataset_id_to_contiguous_id={},
    )
    try:
        with pytest.raises(ValueError, match="'test_panoptic_eval_without_json'.*'panoptic_json'"):
            build_evaluator(cfg, name)
        MetadataCatalog.get(name).set(panoptic_json="/nonexistent/panoptic_val.json")
        with pytest.raises(
            FileNotFoundError,
            match="'test_panoptic_eval_without_json'.*panoptic_json '/nonexistent",
        ):
            build_evaluator(cfg, name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _bad(name, change):
    inputs, outputs = gt_predictions(name)
    ids, info = outputs[2]["panoptic_seg"]
    ids, info = change(ids.clone(), [dict(s) for s in info])
    return inputs[2], {"panoptic_seg": (ids, info)}


def _set(key, value, k=0):
    def change(ids, info):
        info[k][key] = value
        return ids, info

    return change


@pytest.mark.parametrize(
    "name,change,message",
    [
        (
            COCO_STANDARD,
            _set("category_id", 9),
            r"segments_info\[0\]\['category_id'\] = 9 \(isthing=False\) is "
            r"not a contiguous stuff id",
        ),
        (
            COCO_STANDARD,
            _set("isthing", True),
            r"segments_info\[0\]\['category_id'\] = 3 \(isthing=True\) is not a "
            r"contiguous thing id.*\[0, 1, 2\]",
        ),
        # separated: stuff contiguous 0 is the "things" class, no segment
        (
            COCO_SEPARATED,
            _set("category_id", 0),
            r"'category_id'\] = 0 \(isthing=False\).*'stuff_dataset_id_to_contiguous_id' "
            r"has values \[1, 2, 3\]",
        ),
        (
            COCO_STANDARD,
            lambda ids, info: (ids, [{"id": s["id"]} for s in info]),
            r"segments_info\[0\] must be a dict with 'id', 'category_id' and 'isthing'",
        ),
        # no 'isthing': category_id is a dataset id (Detectron2's convention); 4 is none here
        (
            COCO_STANDARD,
            lambda ids, info: (ids, [{"id": s["id"], "category_id": 4} for s in info]),
            r"segments_info\[0\]\['category_id'\] = 4 \(no 'isthing': a dataset category "
            r"id\).*\[1, 2, 3, 5, 7, 8\]",
        ),
        (
            COCO_STANDARD,
            lambda ids, info: (ids, info[1:]),
            r"segment ids \[\d+\] of panoptic_seg\[0\] are not in segments_info",
        ),
        (
            COCO_STANDARD,
            lambda ids, info: (ids, info + [dict(info[0])]),
            r"segments_info\[\d+\]\['id'\] = \d+ is repeated",
        ),
        (
            CS_PANOPTIC,
            _set("category_id", 19),
            r"'category_id'\] = 19 \(isthing=False\) is not a contiguous stuff id",
        ),
        (
            COCO_STANDARD,
            lambda ids, info: (ids.float(), info),
            r"must be an \[H, W\] integer tensor",
        ),
    ],
)
def test_bad_predictions_name_the_dataset_and_key(name, change, message):
    inp, out = _bad(name, change)
    evaluators = [COCOPanopticEvaluator(name)] + (
        [CityscapesPanopticEvaluator(name)] if name == CS_PANOPTIC else []
    )
    for evaluator in evaluators:
        evaluator.reset()
        with pytest.raises(
            ValueError,
            match=r"Dataset '{}', image '.*{}': .*".format(name, os.path.basename(inp["file_name"]))
            + message,
        ):
            evaluator.process([inp], [out])


def test_missing_panopticapi_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "panopticapi.evaluation", None)  # import fails
    with pytest.raises(ImportError, match="pip install --no-deps panopticapi-lite"):
        COCOPanopticEvaluator(COCO_STANDARD)


def test_segments_without_pixels_are_dropped():
    """A listed segment with no pixel (panopticapi refuses those) is left out, as it cannot
    change PQ."""
    inputs, outputs = gt_predictions(COCO_STANDARD)
    ids, info = outputs[0]["panoptic_seg"]
    outputs[0] = {"panoptic_seg": (ids, info + [{"id": 77, "category_id": 0, "isthing": True}])}
    assert run(COCOPanopticEvaluator(COCO_STANDARD), inputs, outputs)["panoptic_seg"]["PQ"] == 100.0


def test_dataset_category_id_predictions():
    """Segments without ``isthing`` carry the dataset's own category ids (Detectron2's rule)."""
    meta = MetadataCatalog.get(COCO_SEPARATED)
    to_dataset = {**{v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}}
    inputs, outputs = gt_predictions(COCO_SEPARATED)
    for out in outputs:
        ids, info = out["panoptic_seg"]
        stuff = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}
        info[:] = [
            {
                "id": s["id"],
                "category_id": (to_dataset if s["isthing"] else stuff)[s["category_id"]],
            }
            for s in info
        ]
    assert (
        run(COCOPanopticEvaluator(COCO_SEPARATED), inputs, outputs)["panoptic_seg"]["PQ"] == 100.0
    )


def test_label_divisor_predictions():
    """``segments_info=None``: ids are category * label_divisor + instance, -1 void (Detectron2)."""
    name = COCO_STANDARD
    meta = MetadataCatalog.get(name)
    inputs, outputs = gt_predictions(name)
    converted = []
    for out in outputs:
        ids, info = out["panoptic_seg"]
        new = torch.full_like(ids, -1)
        for k, s in enumerate(info):
            new[ids == s["id"]] = s["category_id"] * meta.label_divisor + k
        converted.append({"panoptic_seg": (new, None)})
    assert run(COCOPanopticEvaluator(name), inputs, converted)["panoptic_seg"]["PQ"] == 100.0
