"""Synthetic datasets: determinism, formats read by pycocotools / Detectron2 / cityscapesscripts,
content (empty images, sizes, crowds, overlaps), race-safe generation, and check_dataset errors."""

import filecmp
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools.coco import COCO

from solo_d2.data import (
    check_dataset,
    generate_synthetic_cityscapes,
    generate_synthetic_coco,
    load_cityscapes_instances,
)
from solo_d2.data.synthetic import STAMP_FILE, stamp_ok
from tests.helpers import REPO_ROOT


def _tree_files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_generation_is_deterministic(tmp_path, synthetic_coco, synthetic_cityscapes):
    # no wall-clock limit: generation speed depends on the machine's load (README reports it)
    coco = generate_synthetic_coco(str(tmp_path))
    cityscapes = generate_synthetic_cityscapes(str(tmp_path))
    for fresh, shared in ((coco, synthetic_coco), (cityscapes, synthetic_cityscapes)):
        files = _tree_files(fresh)
        assert files == _tree_files(shared)
        match, mismatch, errors = filecmp.cmpfiles(fresh, shared, files, shallow=False)
        assert not mismatch and not errors, mismatch[:5]
    # another seed gives other scenes
    other = generate_synthetic_coco(str(tmp_path / "seed1"), seed=1)
    a = json.load(open(os.path.join(coco, "annotations", "instances_val.json")))
    b = json.load(open(os.path.join(other, "annotations", "instances_val.json")))
    assert a["annotations"] != b["annotations"]


# ----------------------------------------------------------------- COCO format


@pytest.mark.parametrize("split,count", [("train", 48), ("val", 16)])
def test_coco_json_readable_by_pycocotools_and_content(synthetic_coco, split, count):
    api = COCO(os.path.join(synthetic_coco, "annotations", "instances_{}.json".format(split)))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == ["square", "circle", "triangle"]
    assert api.getCatIds() == [1, 2, 3]
    images = api.loadImgs(api.getImgIds())
    assert len(images) == count
    for img in images:
        with Image.open(os.path.join(synthetic_coco, split, img["file_name"])) as im:
            assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
        assert 224 <= img["height"] <= 288 and 288 <= img["width"] <= 352
    anns = api.loadAnns(api.getAnnIds())
    empty = [i for i in api.getImgIds() if not api.getAnnIds(imgIds=[i])]
    assert len(empty) >= 2
    kinds = {"polygon": 0, "rle": 0}
    for ann in anns:
        mask = api.annToMask(ann)
        assert mask.sum() == pytest.approx(ann["area"], abs=1) and mask.sum() > 0
        kinds["polygon" if isinstance(ann["segmentation"], list) else "rle"] += 1
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
    assert kinds["polygon"] > 0 and kinds["rle"] > 0
    crowds = [a for a in anns if a["iscrowd"]]
    assert crowds and all(isinstance(a["segmentation"], dict) for a in crowds)
    if split == "train":  # a wide range of sizes: a few pixels to most of the image
        sizes = [math.sqrt(a["area"]) for a in anns if not a["iscrowd"]]
        assert min(sizes) <= 8 and max(sizes) >= 150
        assert {a["category_id"] for a in anns} == {1, 2, 3}


def test_coco_instances_overlap(synthetic_coco):
    """Occluded instances exist: their visible mask is smaller than their box
    and touches another's box."""
    api = COCO(os.path.join(synthetic_coco, "annotations", "instances_train.json"))
    overlapping = 0
    for img_id in api.getImgIds():
        anns = [a for a in api.loadAnns(api.getAnnIds(imgIds=[img_id])) if not a["iscrowd"]]
        boxes = np.array([a["bbox"] for a in anns], dtype=float).reshape(-1, 4)
        if len(boxes) > 1:
            iou = mask_util.iou(boxes.tolist(), boxes.tolist(), [0] * len(boxes))
            overlapping += int((np.triu(iou, 1) > 0).sum())
    assert overlapping >= 5


def test_coco_registered_and_loaded_by_detectron2(synthetic_coco):
    dicts = DatasetCatalog.get("synthetic_coco_train")
    meta = MetadataCatalog.get("synthetic_coco_train")
    assert len(dicts) == 48 and meta.evaluator_type == "coco"
    assert meta.thing_classes == ["square", "circle", "triangle"]
    cats = {a["category_id"] for d in dicts for a in d["annotations"]}
    assert cats == {0, 1, 2}  # contiguous ids
    assert os.path.isfile(meta.json_file) and os.path.isfile(dicts[0]["file_name"])


# ----------------------------------------------------------------- Cityscapes format


def _cs_files(root, split, suffix):
    out = []
    for city in sorted(os.listdir(os.path.join(root, "gtFine", split))):
        d = os.path.join(root, "gtFine", split, city)
        out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(suffix)]
    return out


def test_cityscapes_tree_uses_cityscapes_ids(synthetic_cityscapes):
    from cityscapesscripts.helpers.labels import id2label

    id_to_train = np.full(256, 255, dtype=np.uint8)
    for label_id, label in id2label.items():
        if 0 <= label_id < 256 and 0 <= label.trainId < 255:
            id_to_train[label_id] = label.trainId
    counts = {"train": 12, "val": 6}
    has_empty, has_crowd = False, False
    for split, count in counts.items():
        label_files = _cs_files(synthetic_cityscapes, split, "_gtFine_labelIds.png")
        assert len(label_files) == count
        assert len({os.path.basename(os.path.dirname(f)) for f in label_files}) == 2  # two cities
        for f in label_files:
            stem = f[: -len("_gtFine_labelIds.png")]
            image = os.path.join(
                synthetic_cityscapes,
                "leftImg8bit",
                split,
                os.path.basename(os.path.dirname(f)),
                os.path.basename(stem) + "_leftImg8bit.png",
            )
            with Image.open(image) as im:
                assert im.size == (512, 256)
            label_ids = np.asarray(Image.open(f))
            train_ids = np.asarray(Image.open(stem + "_gtFine_labelTrainIds.png"))
            inst_ids = np.asarray(Image.open(stem + "_gtFine_instanceIds.png")).astype(np.int64)
            assert set(np.unique(label_ids)) <= set(id2label)
            assert (id_to_train[label_ids] == train_ids).all()
            # instance ids: label*1000+k for things, the label id elsewhere
            assert (np.where(inst_ids >= 1000, inst_ids // 1000, inst_ids) == label_ids).all()
            has_empty |= not (inst_ids >= 1000).any()
            objects = json.load(open(stem + "_gtFine_polygons.json"))
            assert (objects["imgHeight"], objects["imgWidth"]) == (256, 512)
            has_crowd |= any(o["label"].endswith("group") for o in objects["objects"])
    assert has_empty and has_crowd


def test_cityscapes_loaders_agree_with_label_images(synthetic_cityscapes):
    """The json loader (Detectron2's algorithm, solo_d2.data.cityscapes) reproduces the
    instanceIds masks; the semantic loader finds train ids."""
    from cityscapesscripts.helpers.labels import name2label

    dicts = DatasetCatalog.get("synthetic_cityscapes_fine_instance_seg_val")
    meta = MetadataCatalog.get("synthetic_cityscapes_fine_instance_seg_val")
    assert meta.evaluator_type == "cityscapes_instance" and len(meta.thing_classes) == 8
    ious = []
    for d in dicts:
        inst_file = (
            d["file_name"]
            .replace("leftImg8bit", "gtFine", 1)
            .replace("_leftImg8bit.png", "_gtFine_instanceIds.png")
        )
        inst_ids = np.asarray(Image.open(inst_file))
        for anno in d["annotations"]:
            if anno["iscrowd"]:
                continue
            rle = mask_util.merge(
                mask_util.frPyObjects(anno["segmentation"], d["height"], d["width"])
            )
            mask = mask_util.decode(rle).astype(bool)
            label_id = name2label[meta.thing_classes[anno["category_id"]]].id
            candidates = [i for i in np.unique(inst_ids[mask]) if i // 1000 == label_id]
            best = max(
                (
                    np.logical_and(mask, inst_ids == i).sum()
                    / np.logical_or(mask, inst_ids == i).sum()
                    for i in candidates
                ),
                default=0.0,
            )
            if mask.sum() >= 200:
                ious.append(best)
    assert len(ious) >= 5 and np.mean(ious) > 0.85
    # the png path of the same loader finds every instance (crowds included)
    # of the instanceIds images
    png = load_cityscapes_instances(meta.image_dir, meta.gt_dir, from_json=False, to_polygons=False)
    expected = 0
    for f in _cs_files(
        os.path.dirname(os.path.dirname(meta.gt_dir)), "val", "_gtFine_instanceIds.png"
    ):
        ids = np.asarray(Image.open(f))
        for i in np.unique(ids[ids >= 24]):
            ys, xs = np.nonzero(ids == i)
            expected += int(xs.max() > xs.min() and ys.max() > ys.min())
    assert expected > 0 and sum(len(d["annotations"]) for d in png) == expected
    sem = DatasetCatalog.get("synthetic_cityscapes_fine_sem_seg_val")
    sem_meta = MetadataCatalog.get("synthetic_cityscapes_fine_sem_seg_val")
    assert sem_meta.evaluator_type == "cityscapes_sem_seg" and sem_meta.ignore_label == 255
    assert len(sem_meta.stuff_classes) == 19 and len(sem) == 6
    values = set()
    for d in sem:
        values |= set(np.unique(np.asarray(Image.open(d["sem_seg_file_name"]))).tolist())
    assert values <= set(range(19)) | {255} and len(values - {255}) >= 12


# ----------------------------------------------------------------- generation safety


# the generator module alone (no torch/detectron2 import), loaded from its file
_RACE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("solo_d2_synthetic", sys.argv[2])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.generate_synthetic_cityscapes(sys.argv[1])
"""


def test_concurrent_generation_and_stale_tree(tmp_path, synthetic_cityscapes):
    root = tmp_path / "race"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "unused"))
    module_file = sys.modules[generate_synthetic_cityscapes.__module__].__file__
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, str(root), module_file], env=env, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for p in procs:
        try:
            _, err = p.communicate(timeout=600)  # a hang guard, not a speed limit
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(
                "concurrent generate_synthetic_cityscapes hung for 600 s "
                "(lock/rename loop in _ensure?)"
            )
        assert p.returncode == 0, err.decode()[-2000:]
    target = root / "synthetic_cityscapes"
    assert sorted(os.listdir(root)) == ["synthetic_cityscapes"]  # no temporary leftovers
    assert _tree_files(str(target)) == _tree_files(synthetic_cityscapes)
    # a partial tree (no stamp) is never used: it is replaced by a complete one
    os.remove(target / STAMP_FILE)
    (target / "gtFine" / "val" / "lindau").rename(target / "broken")
    assert not stamp_ok(str(target), "cityscapes")
    generate_synthetic_cityscapes(str(root))
    assert stamp_ok(str(target), "cityscapes")
    assert _tree_files(str(target)) == _tree_files(synthetic_cityscapes)


# ----------------------------------------------------------------- check_dataset


def test_check_dataset_synthetic_and_unknown(synthetic_coco):
    assert any(p.endswith("instances_val.json") for p in check_dataset("synthetic_coco_val"))
    with pytest.raises(KeyError) as info:
        check_dataset("no_such_dataset_2017")
    message = str(info.value)
    assert (
        "no_such_dataset_2017" in message
        and "synthetic_coco_train" in message
        and "coco_2017_val" in message
    )


@pytest.mark.parametrize(
    "name,command",
    [
        ("coco_2017_val", "val2017.zip"),
        ("cityscapes_fine_instance_seg_train", "prepare_cityscapes.py"),
        ("cityscapes_fine_sem_seg_val", "prepare_cityscapes.py"),
    ],
)
def test_check_dataset_missing_builtin(name, command):
    meta = MetadataCatalog.get(name)
    path = meta.json_file if hasattr(meta, "json_file") else meta.image_dir
    if os.path.exists(path):
        pytest.skip("the real dataset is present at " + path)
    with pytest.raises(FileNotFoundError) as info:
        check_dataset(name)
    assert path in str(info.value) and command in str(info.value)


def test_check_dataset_missing_label_train_ids(tmp_path, synthetic_cityscapes):
    root = tmp_path / "cityscapes"
    shutil.copytree(
        os.path.join(synthetic_cityscapes, "leftImg8bit", "val"), root / "leftImg8bit" / "val"
    )
    shutil.copytree(
        os.path.join(synthetic_cityscapes, "gtFine", "val"),
        root / "gtFine" / "val",
        ignore=shutil.ignore_patterns("*_labelTrainIds.png"),
    )
    name = "cityscapes_fine_sem_seg_solo_d2_test"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        image_dir=str(root / "leftImg8bit" / "val"),
        gt_dir=str(root / "gtFine" / "val"),
        evaluator_type="cityscapes_sem_seg",
    )
    with pytest.raises(FileNotFoundError, match="prepare_cityscapes.py"):
        check_dataset(name)
    subprocess.run(
        [sys.executable, "datasets/prepare_cityscapes.py", "--cityscapes", str(root)],
        check=True,
        cwd=str(REPO_ROOT),
        capture_output=True,
    )
    check_dataset(name)
    for f in _cs_files(str(root), "val", "_gtFine_labelTrainIds.png"):
        rel = os.path.relpath(f, root)
        assert filecmp.cmp(f, os.path.join(synthetic_cityscapes, rel), shallow=False)


# ----------------------------------------------------------------- reliability: 16-bit PNG, images


def test_instance_ids_png_is_16_bit_and_matches_the_polygons(synthetic_cityscapes):
    """``*_gtFine_instanceIds.png`` holds ids up to 33999 (label id * 1000 + index): a 16-bit
    grayscale PNG (Pillow 11 cannot write mode I, the generator writes I;16) whose values equal
    cityscapesscripts' rendering of the polygons."""
    import cv2
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage

    files = _cs_files(synthetic_cityscapes, "val", "_gtFine_instanceIds.png")
    assert files
    saw_instances = False
    for f in files:
        raw = open(f, "rb").read(32)
        assert (
            raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[24] == 16 and raw[25] == 0
        )  # IHDR: bit depth 16, gray
        ids = cv2.imread(f, cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint16
        ann = Annotation()
        ann.fromJsonFile(f.replace("_instanceIds.png", "_polygons.json"))
        np.testing.assert_array_equal(ids, np.asarray(createInstanceImage(ann, "ids")))
        np.testing.assert_array_equal(np.asarray(Image.open(f)), ids)  # PIL reads the same values
        saw_instances |= bool((ids >= 1000).any())
    assert saw_instances


def test_save_png16_roundtrip_and_range(tmp_path):
    from solo_d2.data.synthetic import _save_png16

    values = np.array([[0, 1, 255, 256], [1000, 26001, 33999, 65535]], dtype=np.int32)
    _save_png16(Image.fromarray(values), str(tmp_path / "a.png"))  # int32 -> mode "I"
    import cv2

    back = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, values)
    with pytest.raises(ValueError, match="0..65535"):
        _save_png16(np.array([[70000]], dtype=np.int32), str(tmp_path / "b.png"))


def _register_copy(name, dicts, meta_from):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=list(MetadataCatalog.get(meta_from).thing_classes))


def test_check_dataset_finds_missing_images(tmp_path, synthetic_coco):
    dicts = [dict(d) for d in DatasetCatalog.get("synthetic_coco_val")]
    missing = str(tmp_path / "gone.png")
    dicts[-1]["file_name"] = missing
    name = "solo_d2_test_missing_image"
    _register_copy(name, dicts, "synthetic_coco_val")
    with pytest.raises(
        FileNotFoundError, match=r"1 of 16 image files checked \(all 16 items\).*gone.png"
    ):
        check_dataset(name)  # a small dataset is checked entirely even in "sample" mode
    check_dataset(name, check_images="none")
    # a large dataset: "sample" checks a fixed subset, "all" checks every item
    from solo_d2.data import check_image_files

    big = [dict(dicts[0], image_id=i) for i in range(2000)]
    sampled = set(np.random.RandomState(0).choice(2000, 100, replace=False).tolist())
    big[min(set(range(2000)) - sampled)]["file_name"] = missing  # outside the fixed sample
    _register_copy(name, big, "synthetic_coco_val")
    assert check_image_files(name, "sample", sample_size=100) == 100
    big[min(sampled)]["file_name"] = missing  # inside it
    with pytest.raises(
        FileNotFoundError, match=r"1 of 100 image files checked \(a sample of 100 of 2000 items\)"
    ):
        check_image_files(name, "sample", sample_size=100)
    big[min(sampled)]["file_name"] = dicts[0]["file_name"]
    with pytest.raises(
        FileNotFoundError, match=r"1 of 2000 image files checked \(all 2000 items\).*gone.png"
    ):
        check_dataset(name, check_images="all")
    with pytest.raises(ValueError, match="check_images"):
        check_dataset(name, check_images="some")
    proc = subprocess.run(
        [
            sys.executable,
            "datasets/check_dataset.py",
            "synthetic_coco_val",
            "--check-images",
            "all",
        ],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "synthetic_coco_val: OK" in proc.stdout, proc.stderr[-2000:]


def test_truncated_image_fails_naming_the_file(tmp_path, synthetic_coco):
    """The loaders of solo_d2's Trainer (FileNamingDatasetMapper) name the unreadable file."""
    import solo_d2
    from solo_d2.data import FileNamingDatasetMapper, ImageReadError
    from solo_d2.engine import Trainer

    d = dict(DatasetCatalog.get("synthetic_coco_val")[0])
    data = open(d["file_name"], "rb").read()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    d["file_name"] = str(truncated)
    cfg = solo_d2.get_cfg()
    cfg.merge_from_file(
        os.path.join(
            str(REPO_ROOT),
            "configs",
            "Synthetic",
            "SOLOv2_R18.yaml",
        )
    )
    for is_train in (True, False):
        with pytest.raises(ImageReadError, match=r"file_name=.*truncated\.png.*truncated") as e:
            FileNamingDatasetMapper(cfg, is_train)(dict(d))
        assert isinstance(e.value, OSError)
    name = "solo_d2_test_truncated_image"
    _register_copy(name, [d], "synthetic_coco_val")
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 1
    with pytest.raises(ImageReadError, match="truncated.png"):
        next(iter(Trainer.build_train_loader(cfg)))
    with pytest.raises(ImageReadError, match="truncated.png"):
        next(iter(Trainer.build_test_loader(cfg, name)))
