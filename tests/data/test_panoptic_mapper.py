"""PanopticDatasetMapper and panoptic_class_maps (solo_d2.data.panoptic): instance and semantic
targets from Detectron2's standard and separated panoptic dataset dicts."""

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from solo_d2.checkpoint.core import build_cfg
from solo_d2.data.mapper import ImageReadError
from solo_d2.data.panoptic import PanopticDatasetMapper, panoptic_class_maps

H, W = 45, 61
# standard metadata: one contiguous space;
# things are dataset ids 1, 2 (contiguous 0, 2), stuff 7, 9 (1, 3)
STANDARD = dict(
    thing_dataset_id_to_contiguous_id={1: 0, 2: 2},
    stuff_dataset_id_to_contiguous_id={1: 0, 2: 2, 7: 1, 9: 3},
    thing_classes=["a", "s1", "b", "s2"],
    stuff_classes=["a", "s1", "b", "s2"],
)
SEPARATED = dict(
    thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
    stuff_dataset_id_to_contiguous_id={0: 0, 7: 1, 9: 2},
    thing_classes=["a", "b"],
    stuff_classes=["things", "s1", "s2"],
)


def _register(name, meta):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(**meta)
    return name


def _mapper(name):
    cfg = build_cfg(
        "configs/Synthetic/SOLOv2_R18.yaml",
        ["DATASETS.TRAIN", f"('{name}',)", "INPUT.MASK_FORMAT", "bitmask"],
    )
    return PanopticDatasetMapper(cfg, is_train=True, augmentations=[])


def _id_png(ids, path):
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def test_class_maps_of_both_formats():
    assert panoptic_class_maps(MetadataCatalog.get(_register("test_pan_std", STANDARD))) == (
        [0, 2],
        [-1, 1, 3],
    )
    assert panoptic_class_maps(MetadataCatalog.get(_register("test_pan_sep", SEPARATED))) == (
        [0, 1],
        [-1, 1, 2],
    )
    with pytest.raises(ValueError, match="coco_2017_train.*no panoptic metadata"):
        panoptic_class_maps(MetadataCatalog.get("coco_2017_train"))


def test_standard_format_gives_instances_and_stuff_plus_things_labels(tmp_path):
    name = _register("test_pan_std", STANDARD)
    ids = np.zeros((H, W), np.int64)  # 0 = void
    ids[:, :20] = 300  # stuff 9 (contiguous 3 -> label 2)
    ids[30:, 20:] = 301  # stuff 7 (contiguous 1 -> label 1)
    ids[5:15, 25:40] = 5  # thing 2 (contiguous 2 -> SOLO class 1)
    ids[16:28, 42:58] = 6  # thing 1 (contiguous 0 -> SOLO class 0)
    ids[2:4, 50:60] = 7  # a crowd of thing 1: semantic "things", no instance
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(tmp_path / "img.jpg")
    _id_png(ids, tmp_path / "pan.png")
    info = [
        {"id": 300, "category_id": 3, "isthing": False},
        {"id": 301, "category_id": 1, "isthing": False},
        {"id": 5, "category_id": 2, "isthing": True},
        {"id": 6, "category_id": 0, "isthing": True},
        {"id": 7, "category_id": 0, "isthing": True, "iscrowd": 1},
    ]
    d = _mapper(name)(
        {
            "file_name": str(tmp_path / "img.jpg"),
            "pan_seg_file_name": str(tmp_path / "pan.png"),
            "segments_info": info,
            "height": H,
            "width": W,
        }
    )
    sem = d["sem_seg"].numpy()
    assert d["image"].shape == (3, H, W) and sem.shape == (H, W)
    assert (sem[:, :20] == 2).all() and (sem[30:, 20:] == 1).all()
    assert (
        (sem[5:15, 25:40] == 0).all()
        and (sem[16:28, 42:58] == 0).all()
        and (sem[2:4, 50:60] == 0).all()
    )
    assert (sem[(ids == 0)] == 255).all()
    ins = d["instances"]
    assert ins.gt_classes.tolist() == [1, 0]
    assert ins.gt_boxes.tensor.tolist() == [[25.0, 5.0, 40.0, 15.0], [42.0, 16.0, 58.0, 28.0]]
    assert np.array_equal(ins.gt_masks.tensor[0].numpy(), ids == 5)
    info[2]["category_id"] = 1  # a "thing" with a stuff category of the metadata
    with pytest.raises(ValueError, match="test_pan_std: segment 5 has thing category 1"):
        _mapper(name)(
            {
                "file_name": str(tmp_path / "img.jpg"),
                "pan_seg_file_name": str(tmp_path / "pan.png"),
                "segments_info": info,
                "height": H,
                "width": W,
            }
        )


def test_separated_format_reads_annotations_and_stuff_png(tmp_path):
    name = _register("test_pan_sep", SEPARATED)
    sem = np.full((H, W), 255, np.uint8)
    sem[:20] = 1
    sem[20:] = 2
    sem[25:35, 10:30] = 0
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / "img.jpg")
    Image.fromarray(sem).save(tmp_path / "sem.png")
    poly = [[10.0, 25.0, 30.0, 25.0, 30.0, 35.0, 10.0, 35.0]]
    d = _mapper(name)(
        {
            "file_name": str(tmp_path / "img.jpg"),
            "sem_seg_file_name": str(tmp_path / "sem.png"),
            "annotations": [
                {
                    "bbox": [10, 25, 30, 35],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": 1,
                    "segmentation": poly,
                    "iscrowd": 0,
                }
            ],
            "height": H,
            "width": W,
        }
    )
    assert np.array_equal(d["sem_seg"].numpy(), sem.astype(np.int64))
    assert d["instances"].gt_classes.tolist() == [1] and len(d["instances"]) == 1


def test_non_panoptic_items_and_unreadable_files_are_named(tmp_path):
    name = _register("test_pan_std", STANDARD)
    with pytest.raises(
        ValueError, match="test_pan_std.*neither 'pan_seg_file_name' nor 'sem_seg_file_name'"
    ):
        _mapper(name)({"file_name": "x.jpg", "annotations": [], "height": H, "width": W})
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "img.jpg")
    (tmp_path / "pan.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageReadError, match="pan_seg_file_name=.*pan.png"):
        _mapper(name)(
            {
                "file_name": str(tmp_path / "img.jpg"),
                "pan_seg_file_name": str(tmp_path / "pan.png"),
                "segments_info": [],
                "height": H,
                "width": W,
            }
        )
