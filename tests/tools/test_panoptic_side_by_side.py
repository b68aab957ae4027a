"""The panoptic comparison (docs/PANOPTIC.md): the textured synthetic panoptic dataset, the
Panoptic FPN baseline config and tools/panoptic_side_by_side.py, run as a user runs it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from scipy import ndimage

from solo_d2.data import register_synthetic_datasets
from solo_d2.data.synthetic_panoptic import rgb2id
from tests.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "tools" / "panoptic_side_by_side.py"
SOLO = REPO_ROOT / "configs" / "Synthetic" / "SOLOv2_panoptic_textured.yaml"
PFPN = REPO_ROOT / "configs" / "Synthetic" / "PanopticFPN_R18_textured.yaml"


@pytest.fixture(scope="module")
def textured():
    register_synthetic_datasets()
    return {
        s: DatasetCatalog.get("synthetic_textured_panoptic_" + s)
        for s in ("train", "val", "fit", "holdout")
    }


def test_textured_splits_and_categories(textured):
    assert {s: len(d) for s, d in textured.items()} == {
        "train": 96,
        "val": 24,
        "fit": 72,
        "holdout": 24,
    }
    train = [d["file_name"] for d in textured["train"]]
    fit, holdout = ([d["file_name"] for d in textured[s]] for s in ("fit", "holdout"))
    assert fit + holdout == train  # the validation split is made from the training images only
    assert not set(train) & {d["file_name"] for d in textured["val"]}
    meta = MetadataCatalog.get("synthetic_textured_panoptic_fit_separated")
    assert meta.stuff_classes == ["things", "sky", "grass", "wall", "road"]
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.panoptic_json.endswith(
        "panoptic_fit.json"
    )
    with open(meta.panoptic_json) as f:
        assert len(json.load(f)["annotations"]) == 72  # the evaluator's ground truth is the split's


def test_textured_stuff_is_irregular_and_split(textured):
    """Stuff segments in several parts and thing-free, void-free images exist; every stuff class
    occurs, and void pixels too."""
    split_segments, classes, void = 0, set(), 0
    meta = MetadataCatalog.get("synthetic_textured_panoptic_train")
    stuff = set(meta.stuff_dataset_id_to_contiguous_id.values())
    for d in textured["train"][:24]:
        ids = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")))
        void += int((ids == 0).sum())
        for seg in d["segments_info"]:
            if seg["category_id"] in stuff:
                classes.add(seg["category_id"])
                split_segments += ndimage.label(ids == seg["id"])[1] > 1
    assert len(classes) == 4 and void > 0
    assert split_segments >= 10


def _run(out, *extra, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--seeds", "0", *map(str, extra)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_side_by_side_trains_both_and_prints_the_table(tmp_path, textured):
    quick = [
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATASETS.TEST",
        "('synthetic_textured_panoptic_holdout',)",
    ]
    proc = _run(
        tmp_path,
        "--run",
        "solo_d2",
        SOLO,
        *quick,
        "MODEL.SOLO.SCORE_THR",
        "0.5",
        "MODEL.SOLO.NMS_PRE",
        "50",
        "--run",
        "panoptic_fpn",
        PFPN,
        *quick[:4],
        "DATASETS.TEST",
        "('synthetic_textured_panoptic_holdout_separated',)",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [
        line
        for line in proc.stdout.splitlines()
        if line.startswith(("| solo_d2", "| panoptic_fpn"))
    ]
    assert len(rows) == 2, proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:3] == ["1", "2"]  # one run of 2 iterations
        assert all(c != "-" and float(c) >= 0 for c in cells[3:])  # PQ ... and the training time
    # a finished run is read back, not redone; --eval-only re-scores its weights with other settings
    again = _run(tmp_path, "--run", "solo_d2", SOLO, "--eval-only", "solo_d2")
    assert again.returncode == 0 and "running:" not in again.stdout, (
        again.stdout + again.stderr[-2000:]
    )
    proc = _run(
        tmp_path,
        "--eval-only",
        "solo_d2",
        "--run",
        "solo_conf",
        SOLO,
        *quick[4:],
        "MODEL.SOLO.SCORE_THR",
        "0.5",
        "MODEL.SOLO.NMS_PRE",
        "50",
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
        "0.9",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--eval-only" in proc.stdout and "| solo_conf | 1 | eval |" in proc.stdout
    # --report-only runs nothing: a run that is missing is left out of the table
    proc = _run(tmp_path, "--report-only", "--run", "solo_d2", SOLO, "--run", "not_run", SOLO)
    assert proc.returncode == 0 and "running:" not in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "| solo_d2 | 1 | 2 |" in proc.stdout and "not_run" not in proc.stdout


def test_side_by_side_reports_bad_arguments_and_failed_runs(tmp_path):
    proc = _run(tmp_path, "--run", "x", tmp_path / "missing.yaml")
    assert (
        proc.returncode == 2 and "missing.yaml" in proc.stderr and "does not exist" in proc.stderr
    )
    proc = _run(tmp_path, "--run", "x", SOLO, "SOLVER.MAX_ITER")
    assert proc.returncode == 2 and "KEY VALUE pairs" in proc.stderr
    proc = _run(tmp_path, "--eval-only", "nothing", "--run", "x", SOLO)
    assert proc.returncode == 2 and "model_final.pth does not exist" in proc.stderr
    proc = _run(tmp_path, "--run", "bad", SOLO, "MODEL.NO_SUCH_KEY", "1")
    assert proc.returncode == 1 and "FAILED: " in proc.stderr and "stdout.txt" in proc.stderr
