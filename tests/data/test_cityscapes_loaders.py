"""solo_d2's Cityscapes loaders (solo_d2.data.cityscapes): the same dataset dicts as
Detectron2 v0.6's loaders on the synthetic Cityscapes tree, and Detectron2's builtin
``cityscapes_fine_*`` names load (and evaluate) through them, on v0.6 and on main."""

import functools
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import builtin_meta
from detectron2.data.datasets import cityscapes as d2_cityscapes

from solo_d2.data import cityscapes as solo_cityscapes
from tests.helpers import REPO_ROOT

# Detectron2 main's loaders import `deeplearning.projects.cityscapesApi.cityscapesscripts`
# (not public), v0.6's the public `cityscapesscripts`.
D2_LOADER_BROKEN = "deeplearning.projects.cityscapesApi" in inspect.getsource(d2_cityscapes)
needs_d2_loader = pytest.mark.skipif(
    D2_LOADER_BROKEN,
    reason="this detectron2 (main) cannot run its own Cityscapes loaders: they import "
    "deeplearning.projects.cityscapesApi.cityscapesscripts, which is not public; "
    "the comparison runs on detectron2 v0.6",
)


def _canonical(obj):
    """A comparable form of a dataset dict that also keeps each value's type (a numpy
    int64 bbox differs from a Python int one)."""
    if isinstance(obj, dict):
        return ("dict", tuple((k, _canonical(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_canonical(v) for v in obj))
    if isinstance(obj, np.ndarray):
        return ("ndarray", str(obj.dtype), obj.shape, obj.tobytes())
    return (type(obj).__name__, obj)


def _dirs(root, split):
    return os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split)


@needs_d2_loader
@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("from_json,to_polygons", [(True, True), (False, True), (False, False)])
def test_instance_dicts_equal_detectron2_v06(synthetic_cityscapes, split, from_json, to_polygons):
    image_dir, gt_dir = _dirs(synthetic_cityscapes, split)
    expected = d2_cityscapes.load_cityscapes_instances(
        image_dir, gt_dir, from_json=from_json, to_polygons=to_polygons
    )
    got = solo_cityscapes.load_cityscapes_instances(
        image_dir, gt_dir, from_json=from_json, to_polygons=to_polygons
    )
    assert len(got) == len(expected) > 0 and sum(len(d["annotations"]) for d in got) > 0
    assert [_canonical(d) for d in got] == [_canonical(d) for d in expected]


@needs_d2_loader
def test_instance_dicts_through_the_process_pool_equal_detectron2_v06(
    synthetic_cityscapes, monkeypatch
):
    """A split larger than SERIAL_MAX_FILES goes through a process pool, as Detectron2's."""
    monkeypatch.setattr(solo_cityscapes, "SERIAL_MAX_FILES", 0)
    image_dir, gt_dir = _dirs(synthetic_cityscapes, "train")
    expected = d2_cityscapes.load_cityscapes_instances(image_dir, gt_dir)
    got = solo_cityscapes.load_cityscapes_instances(image_dir, gt_dir)
    assert [_canonical(d) for d in got] == [_canonical(d) for d in expected]


@needs_d2_loader
@pytest.mark.parametrize("split", ["train", "val"])
def test_semantic_dicts_equal_detectron2_v06(synthetic_cityscapes, split):
    image_dir, gt_dir = _dirs(synthetic_cityscapes, split)
    expected = d2_cityscapes.load_cityscapes_semantic(image_dir, gt_dir)
    got = solo_cityscapes.load_cityscapes_semantic(image_dir, gt_dir)
    assert len(got) > 0 and [_canonical(d) for d in got] == [_canonical(d) for d in expected]


def test_pool_and_serial_paths_give_the_same_dicts(synthetic_cityscapes, monkeypatch):
    """Runs on every detectron2 (main included): the pool path equals the serial one."""
    image_dir, gt_dir = _dirs(synthetic_cityscapes, "val")
    serial = solo_cityscapes.load_cityscapes_instances(image_dir, gt_dir)
    monkeypatch.setattr(solo_cityscapes, "SERIAL_MAX_FILES", 0)
    pooled = solo_cityscapes.load_cityscapes_instances(image_dir, gt_dir)
    assert len(serial) == 6 and [_canonical(d) for d in pooled] == [_canonical(d) for d in serial]


def test_synthetic_cityscapes_sets_use_solo_d2_loaders(synthetic_cityscapes):
    image_dir, gt_dir = _dirs(synthetic_cityscapes, "val")
    assert [
        _canonical(d) for d in DatasetCatalog.get("synthetic_cityscapes_fine_instance_seg_val")
    ] == [_canonical(d) for d in solo_cityscapes.load_cityscapes_instances(image_dir, gt_dir)]
    assert DatasetCatalog.get(
        "synthetic_cityscapes_fine_sem_seg_val"
    ) == solo_cityscapes.load_cityscapes_semantic(image_dir, gt_dir)


def test_builtin_names_use_solo_d2_loaders_and_keep_their_metadata():
    meta = builtin_meta._get_builtin_metadata("cityscapes")
    assert len(solo_cityscapes.BUILTIN_CITYSCAPES_DATASETS) == 6
    for name in solo_cityscapes.BUILTIN_CITYSCAPES_DATASETS:
        loader = DatasetCatalog[name]
        md = MetadataCatalog.get(name)
        assert isinstance(loader, functools.partial), name
        assert loader.args == (md.image_dir, md.gt_dir), name
        split = name.rsplit("_", 1)[1]
        assert md.image_dir.rstrip("/").endswith("cityscapes/leftImg8bit/" + split), md.image_dir
        assert md.gt_dir.rstrip("/").endswith("cityscapes/gtFine/" + split), md.gt_dir
        assert (
            md.thing_classes == meta["thing_classes"] and md.stuff_classes == meta["stuff_classes"]
        )
        if "_instance_seg_" in name:
            assert loader.func is solo_cityscapes.load_cityscapes_instances
            assert loader.keywords == {"from_json": True, "to_polygons": True}
            assert md.evaluator_type == "cityscapes_instance"
        else:
            assert loader.func is solo_cityscapes.load_cityscapes_semantic and not loader.keywords
            assert md.evaluator_type == "cityscapes_sem_seg" and md.ignore_label == 255
    # idempotent: registering again keeps the same loaders on the same directories
    before = {n: DatasetCatalog[n].args for n in solo_cityscapes.BUILTIN_CITYSCAPES_DATASETS}
    assert solo_cityscapes.register_builtin_cityscapes() == list(
        solo_cityscapes.BUILTIN_CITYSCAPES_DATASETS
    )
    assert {
        n: DatasetCatalog[n].args for n in solo_cityscapes.BUILTIN_CITYSCAPES_DATASETS
    } == before


# a fresh process whose DETECTRON2_DATASETS holds a `cityscapes` tree (the synthetic one)
_BUILTIN = """
import json, sys
import numpy as np, torch
from PIL import Image
import solo_d2
from detectron2.data import DatasetCatalog
from solo_d2.config import get_cfg
from solo_d2.data.cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from solo_d2.evaluation import build_evaluator

src = sys.argv[1]
inst = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
sem = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
ref = load_cityscapes_instances(src + "/leftImg8bit/val", src + "/gtFine/val")
evaluator = build_evaluator(get_cfg(), "cityscapes_fine_sem_seg_val", distributed=False)
evaluator.reset()
for d in sem:
    train_ids = torch.from_numpy(np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64))
    logits = (train_ids[None] == torch.arange(19)[:, None, None]).float()
    evaluator.process([{"file_name": d["file_name"]}], [{"sem_seg": logits}])
iou = evaluator.evaluate()["cityscapes_sem_seg"]["IoU"]
print(json.dumps({
    "inst": len(inst), "sem": len(sem), "annotations": sum(len(d["annotations"]) for d in inst),
    "same_annotations": [d["annotations"] for d in inst] == [d["annotations"] for d in ref],
    "evaluator": type(
        build_evaluator(get_cfg(), "cityscapes_fine_instance_seg_val", distributed=False)
    ).__name__,
    "iou": iou,
}))
"""


def test_builtin_cityscapes_names_load_and_evaluate(tmp_path, synthetic_cityscapes):
    """``cityscapes_fine_*_val`` on a Cityscapes tree under DETECTRON2_DATASETS: loaded by
    solo_d2's loaders (on detectron2 main too) and evaluated by solo_d2's evaluators."""
    os.symlink(synthetic_cityscapes, tmp_path / "cityscapes")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _BUILTIN, synthetic_cityscapes],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["inst"] == out["sem"] == 6 and out["annotations"] > 0 and out["same_annotations"]
    assert out["evaluator"] == "CityscapesInstanceEvaluator"
    assert out["iou"] == pytest.approx(100.0, abs=0.01)
