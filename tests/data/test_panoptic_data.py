"""Synthetic panoptic datasets: the files are valid COCO panoptic / Detectron2 "separated" /
Cityscapes panoptic files, and the registered names load with Detectron2's loaders.

Every check reads the files back independently (PIL + the id encoding written out here), so a
generator that wrote a wrong id encoding, area, bbox or stuff offset fails here.
"""

import collections
import functools
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.cityscapes_panoptic import (
    load_cityscapes_panoptic as d2_load_cityscapes_panoptic,
)
from PIL import Image
from scipy import ndimage

import solo_d2.data  # noqa: F401  (registers the datasets)
from solo_d2.data.panoptic_datasets import (
    check_panoptic_dataset,
    coco_panoptic_separated_metadata,
    coco_panoptic_standard_metadata,
    load_cityscapes_panoptic,
    register_builtin_cityscapes_panoptic,
)
from solo_d2.data.synthetic_panoptic import (
    ONLY_STUFF_INDEX,
    PANOPTIC_SPLITS,
    generate_synthetic_coco_panoptic,
)

SPLITS = ("train", "val")


def ids_of(png):
    """Segment ids of a COCO panoptic PNG: id = R + 256 G + 256^2 B."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


@pytest.fixture(scope="module")
def coco_panoptic(dataset_root):
    return generate_synthetic_coco_panoptic(dataset_root)


def _json(path):
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------- COCO panoptic files


@pytest.mark.parametrize("split", SPLITS)
def test_coco_panoptic_png_ids_match_json(coco_panoptic, split):
    data = _json(os.path.join(coco_panoptic, "annotations", "panoptic_{}.json".format(split)))
    cats = {c["id"]: c for c in data["categories"]}
    assert [(c["id"], c["name"], c["isthing"]) for c in data["categories"]] == [
        (1, "square", 1),
        (2, "circle", 1),
        (3, "triangle", 1),
        (5, "sky", 0),
        (7, "ground", 0),
        (8, "wall", 0),
    ]
    assert all(len(c["color"]) == 3 for c in data["categories"])
    images = {i["id"]: i for i in data["images"]}
    assert len(images) == len(data["annotations"]) == PANOPTIC_SPLITS[split]
    kinds = collections.Counter()
    for ann in data["annotations"]:
        img = images[ann["image_id"]]
        assert img["file_name"] == os.path.splitext(ann["file_name"])[0] + ".jpg"
        with Image.open(os.path.join(coco_panoptic, split, img["file_name"])) as im:
            assert im.format == "JPEG" and im.size == (img["width"], img["height"])
        ids = ids_of(os.path.join(coco_panoptic, "panoptic_" + split, ann["file_name"]))
        assert ids.shape == (img["height"], img["width"])
        segs = ann["segments_info"]
        assert len({s["id"] for s in segs}) == len(segs)
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in segs}
        for s in segs:
            mask = ids == s["id"]
            ys, xs = np.nonzero(mask)
            assert s["area"] == mask.sum()
            assert s["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            cat = cats[s["category_id"]]
            assert s["iscrowd"] in (0, 1) and (s["iscrowd"] == 0 or cat["isthing"])
            if not cat["isthing"]:  # stuff segment id = category color (panopticapi's IdGenerator)
                assert s["id"] == cat["color"][0] + 256 * cat["color"][1] + 65536 * cat["color"][2]
            if cat["name"] == "wall" and ndimage.label(mask)[1] > 1:
                kinds["disconnected stuff"] += 1
        things = [s for s in segs if cats[s["category_id"]]["isthing"]]
        index = int(os.path.splitext(ann["file_name"])[0])
        kinds["no thing"] += not things
        kinds["void"] += bool((ids == 0).any())
        kinds["crowd"] += any(s["iscrowd"] for s in things)
        kinds["overlap"] += len(things) > 1
        if index == ONLY_STUFF_INDEX:
            assert not things and (ids != 0).all()
    assert kinds["no thing"] >= 2 and kinds["void"] >= len(images) - 1 and kinds["overlap"] >= 2
    if split == "train":
        assert kinds["crowd"] >= 1 and kinds["disconnected stuff"] >= 1
        # the B byte of the ids is used (an encoding that drops it fails the id checks above)
        assert any(
            s["id"] >= 65536 and s["id"] % 256
            for a in data["annotations"]
            for s in a["segments_info"]
        )


@pytest.mark.parametrize("split", SPLITS)
def test_separated_semantic_pngs_agree_with_panoptic(coco_panoptic, split):
    data = _json(os.path.join(coco_panoptic, "annotations", "panoptic_{}.json".format(split)))
    # prepare_panoptic_fpn.py: things -> 0, stuff -> 1..S in category order, unlabeled -> 255
    to_semantic = {1: 0, 2: 0, 3: 0, 5: 1, 7: 2, 8: 3}
    for ann in data["annotations"]:
        ids = ids_of(os.path.join(coco_panoptic, "panoptic_" + split, ann["file_name"]))
        expected = np.full(ids.shape, 255, dtype=np.uint8)
        for s in ann["segments_info"]:
            expected[ids == s["id"]] = to_semantic[s["category_id"]]
        with Image.open(
            os.path.join(coco_panoptic, "panoptic_stuff_" + split, ann["file_name"])
        ) as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), expected)


@pytest.mark.parametrize("split", SPLITS)
def test_instances_json_are_the_thing_segments(coco_panoptic, split):
    pan = _json(os.path.join(coco_panoptic, "annotations", "panoptic_{}.json".format(split)))
    inst = _json(os.path.join(coco_panoptic, "annotations", "instances_{}.json".format(split)))
    assert [c["id"] for c in inst["categories"]] == [1, 2, 3]
    assert inst["images"] == pan["images"]
    by_image = collections.defaultdict(list)
    for a in inst["annotations"]:
        by_image[a["image_id"]].append(a)
    kinds = set()
    for ann in pan["annotations"]:
        img = next(i for i in pan["images"] if i["id"] == ann["image_id"])
        h, w = img["height"], img["width"]
        ids = ids_of(os.path.join(coco_panoptic, "panoptic_" + split, ann["file_name"]))
        things = [s for s in ann["segments_info"] if s["category_id"] <= 3]
        annos = by_image[ann["image_id"]]
        assert len(annos) == len(things)
        for a, s in zip(annos, things):  # same order: the drawing order of the shapes
            seg = a["segmentation"]
            kinds.add(type(seg).__name__)
            rle = (
                mask_util.merge(mask_util.frPyObjects(seg, h, w)) if isinstance(seg, list) else seg
            )
            np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), ids == s["id"])
            assert (a["category_id"], a["iscrowd"], a["area"]) == (
                s["category_id"],
                s["iscrowd"],
                s["area"],
            )
    assert kinds == {"list", "dict"}  # polygons and RLE


def test_generation_is_deterministic(coco_panoptic, tmp_path):
    again = generate_synthetic_coco_panoptic(str(tmp_path))
    for sub in ("val", "panoptic_val", "panoptic_stuff_val", "annotations"):
        for name in sorted(os.listdir(os.path.join(coco_panoptic, sub))):
            with open(os.path.join(coco_panoptic, sub, name), "rb") as a, open(
                os.path.join(again, sub, name), "rb"
            ) as b:
                assert a.read() == b.read(), (sub, name)


# ----------------------------------------------------------------- Cityscapes panoptic files


@pytest.mark.parametrize("split", SPLITS)
def test_cityscapes_panoptic_files_from_instance_ids(synthetic_cityscapes, split):
    """createPanopticImgs' output: each pixel's id is its instanceIds value (label id for stuff
    and crowd, label * 1000 + k for instances), 0 where the label is ignored in evaluation."""
    from cityscapesscripts.helpers.labels import id2label

    gt_fine = os.path.join(synthetic_cityscapes, "gtFine")
    data = _json(os.path.join(gt_fine, "cityscapes_panoptic_{}.json".format(split)))
    assert len(data["categories"]) == 19 and {c["isthing"] for c in data["categories"]} == {0, 1}
    assert len(data["annotations"]) == len(data["images"]) > 0
    for ann in data["annotations"]:
        city = ann["image_id"].split("_")[0]
        instance_ids = np.asarray(
            Image.open(
                os.path.join(gt_fine, split, city, ann["image_id"] + "_gtFine_instanceIds.png")
            )
        ).astype(np.int64)
        label = np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids)
        ignored = np.vectorize(lambda i: id2label[i].ignoreInEval)(label)
        ids = ids_of(os.path.join(gt_fine, "cityscapes_panoptic_" + split, ann["file_name"]))
        np.testing.assert_array_equal(ids, np.where(ignored, 0, instance_ids))
        assert {s["id"] for s in ann["segments_info"]} == set(np.unique(ids).tolist()) - {0}
        for s in ann["segments_info"]:
            assert s["category_id"] == (s["id"] // 1000 if s["id"] >= 1000 else s["id"])
            assert s["area"] == (ids == s["id"]).sum()


# ----------------------------------------------------------------- registered names


def test_standard_names_load_with_detectron2(dataset_root):
    meta = MetadataCatalog.get("synthetic_coco_panoptic_val")
    names = ["square", "circle", "triangle", "sky", "ground", "wall"]
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.label_divisor == 1000
    assert meta.thing_classes == names and meta.stuff_classes == names
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.stuff_dataset_id_to_contiguous_id == {5: 3, 7: 4, 8: 5}
    for split in SPLITS:
        dicts = DatasetCatalog.get("synthetic_coco_panoptic_" + split)
        assert len(dicts) == PANOPTIC_SPLITS[split]
        for d in dicts:
            assert d["file_name"].endswith(".jpg") and os.path.isfile(d["file_name"])
            assert os.path.isfile(d["pan_seg_file_name"])
            for s in d["segments_info"]:
                assert s["isthing"] == (s["category_id"] < 3) and 0 <= s["category_id"] < 6


def test_separated_names_load_with_detectron2():
    meta = MetadataCatalog.get("synthetic_coco_panoptic_val_separated")
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert meta.thing_classes == ["square", "circle", "triangle"]
    assert meta.stuff_classes == ["things", "sky", "ground", "wall"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.stuff_dataset_id_to_contiguous_id == {5: 1, 7: 2, 8: 3, 0: 0}
    assert len(meta.stuff_colors) == 4 and os.path.isdir(meta.sem_seg_root)
    for split in SPLITS:
        dicts = DatasetCatalog.get("synthetic_coco_panoptic_{}_separated".format(split))
        assert len(dicts) == PANOPTIC_SPLITS[split]
        assert all(os.path.isfile(d["sem_seg_file_name"]) for d in dicts)
        assert {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1, 2}
        stuffonly = DatasetCatalog.get("synthetic_coco_panoptic_{}_stuffonly".format(split))
        assert [d["sem_seg_file_name"] for d in stuffonly] == sorted(
            d["sem_seg_file_name"] for d in dicts
        )
    assert MetadataCatalog.get("synthetic_coco_panoptic_val_stuffonly").evaluator_type == "sem_seg"


def test_metadata_builders_match_detectron2_builtin_rules():
    """The builders give Detectron2's own COCO panoptic metadata on COCO's categories."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES, _get_builtin_metadata

    assert coco_panoptic_separated_metadata(COCO_CATEGORIES) == _get_builtin_metadata(
        "coco_panoptic_separated"
    )
    assert coco_panoptic_standard_metadata(COCO_CATEGORIES) == _get_builtin_metadata(
        "coco_panoptic_standard"
    )


def test_cityscapes_panoptic_names_as_detectron2_registers_them(synthetic_cityscapes, tmp_path):
    builtin = MetadataCatalog.get("cityscapes_fine_panoptic_val").as_dict()
    meta = MetadataCatalog.get("synthetic_cityscapes_fine_panoptic_val").as_dict()
    path_keys = {"name", "panoptic_root", "image_root", "panoptic_json", "gt_dir", "synthetic_root"}
    assert set(meta) - {"synthetic_root"} == set(builtin)
    assert {k: v for k, v in meta.items() if k not in path_keys} == {
        k: v for k, v in builtin.items() if k not in path_keys
    }
    assert meta["gt_dir"] == os.path.join(synthetic_cityscapes, "gtFine", "val")
    assert meta["panoptic_json"] == meta["panoptic_root"] + ".json"
    dicts = DatasetCatalog.get("synthetic_cityscapes_fine_panoptic_val")
    # Detectron2's loader cuts the image path at its first dot (next test), and a checkout may
    # lie below one (mktemp's tmp.XXXX): it reads the same files through a dot-free link.
    link = str(tmp_path / "cityscapes")
    os.symlink(synthetic_cityscapes, link)
    assert "." not in link
    args = [
        meta[k].replace(synthetic_cityscapes, link, 1)
        for k in ("image_root", "panoptic_root", "panoptic_json")
    ]
    maps = {
        k: builtin[k]
        for k in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id")
    }
    theirs = d2_load_cityscapes_panoptic(*args, maps)
    for d in theirs:
        for key in ("file_name", "sem_seg_file_name", "pan_seg_file_name"):
            d[key] = d[key].replace(link, synthetic_cityscapes, 1)
    assert dicts == theirs  # the same dicts as Detectron2's loader
    for d in dicts:
        assert os.path.isfile(d["sem_seg_file_name"]) and os.path.isfile(d["pan_seg_file_name"])
        assert {s["category_id"] for s in d["segments_info"]} <= set(range(19))


def test_cityscapes_panoptic_loader_with_a_dot_in_the_root(synthetic_cityscapes, tmp_path):
    """Detectron2 cuts the image path at its first dot to find _labelTrainIds.png; solo_d2's
    loader does not."""
    root = tmp_path / "data.v1"
    root.mkdir()
    os.symlink(synthetic_cityscapes, root / "cityscapes")
    meta = MetadataCatalog.get("cityscapes_fine_panoptic_val")
    maps = {
        k: getattr(meta, k)
        for k in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id")
    }
    args = (
        str(root / "cityscapes/leftImg8bit/val"),
        str(root / "cityscapes/gtFine/cityscapes_panoptic_val"),
        str(root / "cityscapes/gtFine/cityscapes_panoptic_val.json"),
        maps,
    )
    dicts = load_cityscapes_panoptic(*args)
    assert all(os.path.isfile(d["sem_seg_file_name"]) for d in dicts)
    with pytest.raises(AssertionError, match="labelTrainIds"):
        d2_load_cityscapes_panoptic(*args)


def test_builtin_cityscapes_panoptic_names_use_solo_d2_loader():
    register_builtin_cityscapes_panoptic()  # idempotent
    meta = MetadataCatalog.get("cityscapes_fine_panoptic_train")
    loader = DatasetCatalog["cityscapes_fine_panoptic_train"]
    assert isinstance(loader, functools.partial) and loader.func is load_cityscapes_panoptic
    assert loader.args[:3] == (meta.image_root, meta.panoptic_root, meta.panoptic_json)
    assert meta.evaluator_type == "cityscapes_panoptic_seg"


def test_missing_cityscapes_panoptic_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="cityscapes_panoptic_val.json.*createPanopticImgs"):
        load_cityscapes_panoptic(
            str(tmp_path), str(tmp_path), str(tmp_path / "cityscapes_panoptic_val.json"), {}
        )


def test_check_panoptic_dataset():
    for name in (
        "synthetic_coco_panoptic_val",
        "synthetic_coco_panoptic_val_separated",
        "synthetic_cityscapes_fine_panoptic_val",
    ):
        assert check_panoptic_dataset(name).name == name
    with pytest.raises(
        ValueError,
        match="'synthetic_coco_val' has no panoptic annotations.*evaluator_type is 'coco'",
    ):
        check_panoptic_dataset("synthetic_coco_val")
    name = "test_panoptic_without_json"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        evaluator_type="coco_panoptic_seg", panoptic_root="x", thing_classes=[], stuff_classes=[]
    )
    try:
        with pytest.raises(ValueError, match="'test_panoptic_without_json'.*'panoptic_json'"):
            check_panoptic_dataset(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    with pytest.raises(KeyError, match="not registered"):
        check_panoptic_dataset("no_such_dataset")
