"""Your own data (docs/CUSTOM_DATA.md), in one process: registration of COCO, semantic and panoptic
datasets, the image check that decodes, class names that travel with the weights, and the checks
that stop silent useless runs (no instances, weights of another class count, a final evaluation
after a crash, a score threshold that does not apply). The page itself, run command by command
through the tools, is tests/tools/test_custom_data_page.py."""

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from solo_d2.data import ImageReadError, check_dataset, check_image_files
from solo_d2.data.register import (
    parse_class_names,
    register_coco,
    register_coco_panoptic_dataset,
    register_sem_seg,
)
from solo_d2.engine import Trainer, setup_cfg
from solo_d2.engine.model_metadata import (
    CHECKPOINT_KEY,
    Predictor,
    WeightsMismatchError,
    check_eval_datasets,
    load_weights_for_inference,
    model_metadata,
)
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.usefixtures("single_thread")

SOLO_CONFIG = str(REPO_ROOT / "configs/Synthetic/SOLOv2_R18.yaml")
BISENET_CONFIG = str(REPO_ROOT / "configs/Synthetic/BiSeNetV1_R18.yaml")
TINY = [
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    "160",
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "160",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "INPUT.RANDOM_FLIP",
    "none",
    "DATALOADER.ASPECT_RATIO_GROUPING",
    "False",
]
THINGS = ["ellipse", "star", "ring"]


def _load_tool(path, name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mydata(tmp_path_factory):
    """datasets/make_example_dataset.py's example: 8 train and 4 val images."""
    out = tmp_path_factory.mktemp("custom") / "mydata"
    _load_tool("datasets/make_example_dataset.py", "make_example_dataset").main(
        [str(out), "--train", "8", "--val", "4"]
    )
    return out


def _fresh(name):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    return name


def _cfg(config, *opts):
    return setup_cfg(config, TINY + list(opts), device="cpu")


# ----------------------------------------------------------------- registration


def test_register_coco_sets_the_classes_before_loading_and_refuses_wrong_input(mydata, tmp_path):
    name = _fresh("custom_test_coco")
    register_coco(name, str(mydata / "train.json"), str(mydata / "train"))
    meta = MetadataCatalog.get(name)
    # set at registration (the class-count checks run before any loading), as load_coco_json sets
    # them
    assert meta.thing_classes == THINGS and meta.thing_dataset_id_to_contiguous_id == {
        1: 0,
        2: 1,
        3: 2,
    }
    assert meta.evaluator_type == "coco"
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 8 and {d["height"] for d in dicts} == {240, 320, 224}
    segm = [a["segmentation"] for d in dicts for a in d["annotations"]]
    assert segm and all(isinstance(s, dict) and "counts" in s for s in segm)  # RLE, as written
    assert any(not d["annotations"] for d in dicts)  # an image without objects is kept
    # the launcher and an in-process worker both register: the same files again is a no-op
    register_coco(name, str(mydata / "train.json"), str(mydata / "train"))
    with pytest.raises(
        ValueError,
        match=r"dataset name 'custom_test_coco' is already registered.*pick another NAME",
    ):
        register_coco(name, str(mydata / "val.json"), str(mydata / "val"))
    with pytest.raises(
        ValueError, match=r"dataset name 'synthetic_coco_val' is already registered"
    ):
        register_coco("synthetic_coco_val", str(mydata / "val.json"), str(mydata / "val"))
    with pytest.raises(ValueError, match=r"COCO \*panoptic\* json.*--register-coco-panoptic"):
        register_coco(
            _fresh("custom_test_pan_as_coco"),
            str(mydata / "panoptic_val.json"),
            str(mydata / "val"),
        )
    boxes_only = json.loads((mydata / "val.json").read_text())
    del boxes_only["annotations"][3]["segmentation"]  # one box without a mask is enough to refuse
    (tmp_path / "boxes.json").write_text(json.dumps(boxes_only))
    with pytest.raises(
        ValueError,
        match=r"1 of the \d+ annotations of .* have no 'segmentation' \(e.g. id \d+, image_id",
    ):
        register_coco(
            _fresh("custom_test_boxes"),
            str(tmp_path / "boxes.json"),
            str(mydata / "val"),
        )
    with pytest.raises(
        FileNotFoundError,
        match=r"--register-coco: image folder '.*nowhere' does not exist.*CUSTOM_DATA",
    ):
        register_coco(
            _fresh("custom_test_nowhere"),
            str(mydata / "val.json"),
            str(mydata / "nowhere"),
        )


def test_register_sem_seg_pairs_images_and_labels(mydata):
    name = _fresh("custom_test_sem")
    classes = parse_class_names(str(mydata / "classes.txt"))
    assert classes == ["wall", "floor"] + THINGS
    register_sem_seg(name, str(mydata / "val"), str(mydata / "labels_val"), classes)
    meta = MetadataCatalog.get(name)
    assert (
        meta.stuff_classes == classes
        and meta.ignore_label == 255
        and meta.evaluator_type == "sem_seg"
    )
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 4
    for d in dicts:
        assert (
            os.path.basename(d["file_name"])[:-4] == os.path.basename(d["sem_seg_file_name"])[:-4]
        )
    assert (
        check_image_files(name, "all", progress=False) == 8
    )  # 4 images + 4 label PNGs, valid labels
    with pytest.raises(ValueError, match="already registered with classes"):
        register_sem_seg(name, str(mydata / "val"), str(mydata / "labels_val"), classes[:4])


def test_register_coco_panoptic_reads_the_image_names_of_the_json(mydata, tmp_path):
    """Images named otherwise than ``<png name>.jpg`` (which Detectron2's loader assumes): PNG
    copies named ``img_<n>.png``, as the json's ``images`` say."""
    import cv2

    data = json.loads((mydata / "panoptic_val.json").read_text())
    (tmp_path / "images").mkdir()
    for im in data["images"]:
        new = "img_" + im["file_name"].replace(".jpg", ".png")
        cv2.imwrite(
            str(tmp_path / "images" / new),
            cv2.imread(str(mydata / "val" / im["file_name"])),
        )
        im["file_name"] = new
    (tmp_path / "pan.json").write_text(json.dumps(data))
    name = _fresh("custom_test_pan")
    register_coco_panoptic_dataset(
        name,
        str(tmp_path / "images"),
        str(mydata / "panoptic_val"),
        str(tmp_path / "pan.json"),
    )
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == meta.stuff_classes == THINGS + ["wall", "floor"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.stuff_dataset_id_to_contiguous_id == {4: 3, 5: 4}
    assert meta.evaluator_type == "coco_panoptic_seg"
    dicts = DatasetCatalog.get(name)
    assert [os.path.basename(d["file_name"]) for d in dicts] == [
        "img_00000{}.png".format(i) for i in range(4)
    ]
    assert all(
        os.path.isfile(d["file_name"]) and os.path.isfile(d["pan_seg_file_name"]) for d in dicts
    )
    assert {s["category_id"] for d in dicts for s in d["segments_info"] if not s["isthing"]} == {
        3,
        4,
    }
    assert check_image_files(name, "all", progress=False) == 8
    # with Detectron2's naming (<PNG name>.jpg) the dicts are those of Detectron2's loader
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    name = _fresh("custom_test_pan_jpg")
    register_coco_panoptic_dataset(
        name,
        str(mydata / "val"),
        str(mydata / "panoptic_val"),
        str(mydata / "panoptic_val.json"),
    )
    ours = DatasetCatalog.get(name)
    theirs = load_coco_panoptic_json(
        str(mydata / "panoptic_val.json"),
        str(mydata / "val"),
        str(mydata / "panoptic_val"),
        MetadataCatalog.get(name).as_dict(),
    )
    assert [{k: v for k, v in d.items() if k not in ("height", "width")} for d in ours] == theirs
    with pytest.raises(ValueError, match="is not a COCO panoptic json"):
        register_coco_panoptic_dataset(
            _fresh("custom_test_pan_bad"),
            str(mydata / "val"),
            str(mydata / "panoptic_val"),
            str(mydata / "val.json"),
        )


def test_parse_class_names(tmp_path):
    assert parse_class_names("road, car ,sky") == ["road", "car", "sky"]
    (tmp_path / "c.txt").write_text("road\n\ncar\n")
    (tmp_path / "c.json").write_text('["a", "b"]')
    assert parse_class_names(str(tmp_path / "c.txt")) == ["road", "car"]
    assert parse_class_names(str(tmp_path / "c.json")) == ["a", "b"]
    with pytest.raises(ValueError, match="no class names"):
        parse_class_names(" , ")


# ----------------------------------------------------------------- image and file checks


def test_check_images_all_decodes_and_names_each_unreadable_file(mydata, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(mydata / "val", root / "val")
    shutil.copytree(mydata / "labels_val", root / "labels_val")
    broken = [root / "val" / "000001.jpg", root / "val" / "000003.jpg"]
    for p in broken:
        p.write_bytes(p.read_bytes()[:400])  # truncated JPEG
    label = root / "labels_val" / "000002.png"
    import cv2

    lab = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 7  # neither a class index (0..4) nor 255
    cv2.imwrite(str(label), lab)
    name = _fresh("custom_test_broken")
    register_sem_seg(name, str(root / "val"), str(root / "labels_val"), ["wall", "floor"] + THINGS)
    assert check_image_files(name, "sample") == 8  # the default only checks that the files exist
    with pytest.raises(ImageReadError) as e:
        check_image_files(name, "all")
    msg = str(e.value)
    assert "3 of 8 files cannot be read" in msg
    for p in broken:
        assert "'{}': OSError".format(p) in msg or "'{}': ".format(p) in msg
    assert (
        "'{}': label values [7] are neither a class index (0..4) nor the ignore label 255".format(
            label
        )
        in msg
    )
    assert (
        "Decoding the images of 'custom_test_broken'" in capsys.readouterr().err
    )  # the progress bar
    with pytest.raises(ImageReadError, match="000001.jpg"):
        check_dataset(name, check_images="all")
    # from the command line, registering the folders there
    proc = subprocess.run(
        [sys.executable, "datasets/check_dataset.py", "custom_cli", "--check-images", "all",
         "--register-sem-seg", "custom_cli", str(root / "val"), str(root / "labels_val"),
         "wall,floor,ellipse,star,ring"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "custom_cli: Dataset 'custom_cli': 3 of 8 files cannot be read" in proc.stderr
    assert "Decoding the images of 'custom_cli'" in proc.stderr and str(broken[0]) in proc.stderr


def test_missing_files_and_unknown_names_point_to_the_custom_data_page(mydata, tmp_path):
    shutil.copytree(mydata / "val", tmp_path / "val")
    name = _fresh("custom_test_gone")
    register_coco(name, str(mydata / "val.json"), str(tmp_path / "val"))
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(
        FileNotFoundError,
        match=r"image_root .* does not exist.*docs/CUSTOM_DATA.md.*--register-coco",
    ):
        check_dataset(name)
    with pytest.raises(
        KeyError,
        match=r"'mydata_nope' is not registered.*--register-coco mydata_nope JSON IMAGE_DIR"
        r".*docs/CUSTOM_DATA.md",
    ):
        check_dataset("mydata_nope")


# ----------------------------------------------------------------- training guards


def test_a_training_set_without_instances_is_refused(mydata, tmp_path, synthetic_cityscapes):
    empty = json.loads((mydata / "train.json").read_text())
    for a in empty["annotations"]:
        a["iscrowd"] = 1  # crowd regions are not instances to learn
    (tmp_path / "crowd.json").write_text(json.dumps(empty))
    name = _fresh("custom_test_no_instances")
    register_coco(name, str(tmp_path / "crowd.json"), str(mydata / "train"))
    cfg = _cfg(
        SOLO_CONFIG,
        "DATASETS.TRAIN",
        f"('{name}',)",
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
        "False",
    )
    with pytest.raises(
        ValueError,
        match=r"training set 'custom_test_no_instances' \(8 images\) has no instance "
        r"annotation.*DATALOADER.ALLOW_NO_INSTANCES True",
    ):
        Trainer.build_train_loader(cfg)
    cfg = _cfg(
        SOLO_CONFIG,
        "DATASETS.TRAIN",
        f"('{name}',)",
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
        "False",
        "DATALOADER.ALLOW_NO_INSTANCES",
        "True",
    )
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == 2 and all(len(x["instances"]) == 0 for x in batch)
    # panoptic dicts: standard COCO ones mark things with isthing, Cityscapes ones do not
    from solo_d2.engine import check_training_instances

    for name3, config in (
        ("synthetic_coco_panoptic_train", "SOLOv2_panoptic.yaml"),
        ("synthetic_cityscapes_fine_panoptic_train", "SOLOv2_panoptic_cityscapes.yaml"),
    ):
        pan = _cfg(str(REPO_ROOT / "configs/Synthetic" / config))
        assert check_training_instances(pan, DatasetCatalog.get(name3)) > 0, name3
    # one instance anywhere is enough
    name2 = _fresh("custom_test_some_instances")
    register_coco(name2, str(mydata / "train.json"), str(mydata / "train"))
    cfg = _cfg(
        SOLO_CONFIG,
        "DATASETS.TRAIN",
        f"('{name}', '{name2}')",
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
        "False",
    )
    Trainer.build_train_loader(cfg)


def test_no_final_evaluation_after_a_crash_in_the_last_iteration(mydata, tmp_path):
    """Detectron2's EvalHook evaluates after an exception in the last iteration (iter + 1 >=
    max_iter) and prints AP tables before the traceback; solo_d2's trainer does not."""
    shutil.copytree(mydata / "train", tmp_path / "train")
    for p in (tmp_path / "train").iterdir():
        p.write_bytes(p.read_bytes()[:300])
    name = _fresh("custom_test_corrupt")
    register_coco(name, str(mydata / "train.json"), str(tmp_path / "train"))
    val = _fresh("custom_test_val")
    register_coco(val, str(mydata / "val.json"), str(mydata / "val"))
    out = tmp_path / "out"
    cfg = _cfg(
        SOLO_CONFIG,
        "DATASETS.TRAIN",
        f"('{name}',)",
        "DATASETS.TEST",
        f"('{val}',)",
        "SOLVER.MAX_ITER",
        "1",
        "TEST.EVAL_PERIOD",
        "0",
        "OUTPUT_DIR",
        str(out),
    )
    trainer = Trainer(cfg)
    with pytest.raises(ImageReadError, match="000"):
        trainer.train()
    assert not (
        out / "inference"
    ).exists()  # no evaluation ran (it writes coco_instances_results.json there)


def test_checkpoints_hold_the_training_set_class_names(mydata, tmp_path):
    name = _fresh("custom_test_names")
    register_coco(name, str(mydata / "train.json"), str(mydata / "train"))
    cfg = _cfg(
        SOLO_CONFIG,
        "DATASETS.TRAIN",
        f"('{name}',)",
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        str(tmp_path),
    )
    trainer = Trainer(cfg)
    trainer.checkpointer.save("model_test")
    saved = torch.load(tmp_path / "model_test.pth", weights_only=True)[CHECKPOINT_KEY]
    assert saved["thing_classes"] == THINGS and saved["dataset"] == name
    assert saved["thing_dataset_id_to_contiguous_id"] == {1: 0, 2: 1, 3: 2}
    # fine-tuning from / resuming a checkpoint of another dataset keeps the names being trained
    other = dict(saved, thing_classes=["a", "b", "c"])
    torch.save(
        {"model": trainer.model.state_dict(), CHECKPOINT_KEY: other},
        tmp_path / "other.pth",
    )
    trainer.checkpointer.load(str(tmp_path / "other.pth"))
    trainer.checkpointer.save("model_after")
    assert (
        torch.load(tmp_path / "model_after.pth", weights_only=True)[CHECKPOINT_KEY]["thing_classes"]
        == THINGS
    )


# ----------------------------------------------------------------- inference: weights, names, thres


@pytest.fixture(scope="module")
def three_class_weights(tmp_path_factory):
    """A tiny SOLOv2 of 3 classes saved as solo_d2's trainer saves it (with the class names)."""
    from detectron2.modeling import build_model

    cfg = _cfg(SOLO_CONFIG, "MODEL.SOLO.NUM_CLASSES", "3")
    path = tmp_path_factory.mktemp("weights") / "three.pth"
    meta = {"thing_classes": THINGS, "dataset": "mydata_train"}
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), CHECKPOINT_KEY: meta}, path)
    return str(path)


def test_weights_of_another_class_count_are_refused_for_inference(three_class_weights):
    from detectron2.modeling import build_model

    cfg = _cfg(SOLO_CONFIG, "MODEL.SOLO.NUM_CLASSES", "5", "MODEL.WEIGHTS", three_class_weights)
    with pytest.raises(WeightsMismatchError) as e:
        load_weights_for_inference(cfg, build_model(cfg))
    msg = str(e.value)
    assert (
        "ins_head.cate_pred.weight has shape (3, 64, 3, 3) in the checkpoint, (5, 64, 3, 3) in "
        "the model" in msg
    )
    assert (
        "trained for 3 classes and MODEL.SOLO.NUM_CLASSES is 5: set MODEL.SOLO.NUM_CLASSES 3" in msg
    )
    assert "dataset 'mydata_train' with 3 thing_classes (ellipse, star, ring)" in msg
    with pytest.raises(WeightsMismatchError):
        Predictor(cfg)  # the DefaultPredictor path
    cfg = _cfg(SOLO_CONFIG, "MODEL.SOLO.NUM_CLASSES", "3", "MODEL.WEIGHTS", three_class_weights)
    predictor = Predictor(cfg)
    assert predictor.checkpoint_metadata["thing_classes"] == THINGS
    assert predictor.metadata.thing_classes == THINGS  # for the Visualizer
    out = predictor(np.zeros((80, 120, 3), np.uint8))
    assert "instances" in out


def test_panoptic_predictor_writes_the_category_ids_of_the_saved_dataset(tmp_path):
    """SOLOPanoptic built without its dataset registered (a predicting process): the Predictor
    takes the category ids of the checkpoint's metadata, so that the saved names fit them."""
    from detectron2.modeling import build_model

    cfg = _cfg(
        str(REPO_ROOT / "configs/Synthetic/SOLOv2_panoptic.yaml"),
        "MODEL.SOLO.NUM_CLASSES",
        "3",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
        "3",
        "DATASETS.TRAIN",
        "('mydata_pan_train',)",
        "DATASETS.TEST",
        "('mydata_pan_val',)",
        "MODEL.WEIGHTS",
        str(tmp_path / "pan.pth"),
    )
    meta = {
        "thing_classes": THINGS + ["wall", "floor"],
        "stuff_classes": THINGS + ["wall", "floor"],
        "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1, 3: 2},
        "stuff_dataset_id_to_contiguous_id": {4: 3, 5: 4},
        "dataset": "mydata_pan_train",
    }
    torch.save(
        {"model": build_model(cfg).state_dict(), CHECKPOINT_KEY: meta},
        tmp_path / "pan.pth",
    )
    predictor = Predictor(cfg)
    assert predictor.model.combine_cfg["thing_ids"] == [0, 1, 2]
    assert predictor.model.combine_cfg["stuff_ids"] == [-1, 3, 4]  # label 0 is "things"
    assert predictor.metadata.stuff_classes[3] == "wall"
    seg, segments = predictor(np.full((96, 128, 3), 120, np.uint8))["panoptic_seg"]
    for s in segments:
        assert s["category_id"] in ((0, 1, 2) if s["isthing"] else (3, 4))


def test_class_names_come_from_the_override_the_checkpoint_or_the_dataset_with_warnings(
    caplog,
):
    caplog.set_level(logging.WARNING)
    cfg = _cfg(
        SOLO_CONFIG,
        "MODEL.SOLO.NUM_CLASSES",
        "3",
        "MODEL.WEIGHTS",
        "w.pth",
        "DATASETS.TEST",
        "('synthetic_coco_val',)",
    )
    saved = {"thing_classes": THINGS, "dataset": "mydata_train"}
    assert model_metadata(cfg, saved, ["a", "b", "c"]) == {
        "thing_classes": ["a", "b", "c"],
        "source": "--class-names",
    }
    got = model_metadata(cfg, saved)
    assert got["thing_classes"] == THINGS and "mydata_train" in got["source"]
    assert not caplog.records
    # an override of the wrong length is not used; the warning names both
    assert model_metadata(cfg, saved, ["a", "b"])["thing_classes"] == THINGS
    assert (
        "--class-names gives 2 names (a, b) but the model has 3 classes (MODEL.SOLO.NUM_CLASSES 3)"
        in caplog.text
    )
    caplog.clear()
    # no names in the checkpoint: the config's dataset, with a warning naming it
    got = model_metadata(cfg, None)
    assert got["thing_classes"] == ["square", "circle", "triangle"]
    assert (
        "holds no class names" in caplog.text
        and "dataset 'synthetic_coco_val' (DATASETS.TEST[0])" in caplog.text
    )
    caplog.clear()
    # a dataset of another class count: not used, both named
    cfg5 = _cfg(
        SOLO_CONFIG,
        "MODEL.SOLO.NUM_CLASSES",
        "5",
        "DATASETS.TEST",
        "('synthetic_coco_val',)",
    )
    assert "thing_classes" not in model_metadata(cfg5, None)
    assert (
        "Dataset 'synthetic_coco_val' (DATASETS.TEST[0]) has 3 thing_classes (square, circle, "
        "triangle) but the "
        "model has 5 classes (MODEL.SOLO.NUM_CLASSES 5)" in caplog.text
    )
    caplog.clear()
    # nothing at all: numbers, with a warning
    cfg_none = _cfg(
        SOLO_CONFIG,
        "MODEL.SOLO.NUM_CLASSES",
        "3",
        "DATASETS.TEST",
        "('mydata_not_registered',)",
        "DATASETS.TRAIN",
        "()",
    )
    assert model_metadata(cfg_none, None) == {"source": "none"}
    assert (
        "No class names for the model's 3 classes" in caplog.text and "--class-names" in caplog.text
    )
    # semantic models: stuff_classes (numbers when unknown, the Visualizer needs a list)
    bis = _cfg(BISENET_CONFIG, "DATASETS.TEST", "()", "DATASETS.TRAIN", "()")
    assert model_metadata(bis, None)["stuff_classes"] == [str(i) for i in range(19)]


def test_eval_datasets_must_have_the_config_class_count(caplog):
    cfg = _cfg(
        SOLO_CONFIG,
        "MODEL.SOLO.NUM_CLASSES",
        "5",
        "DATASETS.TEST",
        "('synthetic_coco_val',)",
    )
    with pytest.raises(
        ValueError,
        match=r"MODEL.SOLO.NUM_CLASSES=5 does not match the evaluation dataset "
        r"'synthetic_coco_val', which has 3 thing_classes \(square, circle, triangle\)",
    ):
        check_eval_datasets(cfg)
    cfg = _cfg(
        SOLO_CONFIG,
        "MODEL.SOLO.NUM_CLASSES",
        "3",
        "DATASETS.TEST",
        "('synthetic_coco_val',)",
    )
    caplog.set_level(logging.WARNING)
    check_eval_datasets(cfg, {"thing_classes": THINGS, "dataset": "mydata_train"})
    assert (
        "trained on classes ellipse, star, ring (dataset 'mydata_train') and is evaluated on "
        "dataset "
        "'synthetic_coco_val' with classes square, circle, triangle" in caplog.text
    )


def test_roi_heads_score_threshold_warns_for_solo_and_the_demo_threshold_sets_solo_keys(
    caplog,
):
    caplog.set_level(logging.WARNING)
    _cfg(SOLO_CONFIG)
    assert "SCORE_THRESH_TEST" not in caplog.text
    _cfg(SOLO_CONFIG, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3")
    assert "MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.3 has no effect on SOLO models" in caplog.text
    assert "MODEL.SOLO.SCORE_THR" in caplog.text and "--confidence-threshold" in caplog.text
    caplog.clear()
    _cfg(BISENET_CONFIG, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3")
    assert "SCORE_THRESH_TEST" not in caplog.text

    demo = _load_tool("tools/demo.py", "solo_d2_demo_tool_thresholds")
    cfg = setup_cfg(SOLO_CONFIG, demo.threshold_opts(0.35), device="cpu")
    assert cfg.MODEL.SOLO.SCORE_THR == cfg.MODEL.SOLO.UPDATE_THR == 0.35
    assert cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH == 0.35
    cfg = setup_cfg(
        SOLO_CONFIG,
        demo.threshold_opts(0.35) + ["MODEL.SOLO.UPDATE_THR", "0.5"],
        device="cpu",
    )
    assert cfg.MODEL.SOLO.UPDATE_THR == 0.5  # --opts given by the user win


def test_onnx_predict_uses_model_json_names_only_when_they_fit(capsys):
    tool = _load_tool("tools/onnx_predict.py", "solo_d2_onnx_predict_tool")
    assert tool.checked_class_names({"class_names": THINGS, "num_classes": 3}) == THINGS
    assert tool.checked_class_names({"class_names": THINGS, "num_classes": 3}, ["a", "b", "c"]) == [
        "a",
        "b",
        "c",
    ]
    assert capsys.readouterr().err == ""
    assert tool.checked_class_names({"class_names": None, "num_classes": 3}) is None
    assert "model.json has no class names for the model's 3 classes" in capsys.readouterr().err
    assert tool.checked_class_names({"class_names": THINGS, "num_classes": 3}, ["a", "b"]) is None
    assert (
        "--class-names gives 2 class names (a, b) but the model has 3 classes"
        in capsys.readouterr().err
    )
    assert tool.class_label(THINGS, 2) == "ring" and tool.class_label(None, 2) == "2"


# ----------------------------------------------------------------- COCOEvaluator, built the standar


def test_coco_evaluator_built_the_standard_way_works_without_compiled_ops(tmp_path, synthetic_coco):
    """``inference_on_dataset(model, loader, COCOEvaluator(name))`` with the offline detectron2:
    COCOeval_opt falls back to pycocotools' COCOeval (tools/install_detectron2_offline.py), with the
    numbers of ``use_fast_impl=False``."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from detectron2.modeling import build_model

    from solo_d2.compat import has_compiled_ops

    if has_compiled_ops():
        pytest.skip("detectron2 has its compiled ops: COCOeval_opt is the C++ one")
    cfg = _cfg(
        SOLO_CONFIG,
        "MODEL.SOLO.SCORE_THR",
        "0.0",
        "MODEL.SOLO.UPDATE_THR",
        "0.0",
        "MODEL.SOLO.NMS_PRE",
        "40",
        "MODEL.SOLO.MAX_PER_IMG",
        "20",
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    loader = build_detection_test_loader(cfg, "synthetic_coco_val")
    standard = inference_on_dataset(
        model,
        loader,
        COCOEvaluator("synthetic_coco_val", output_dir=str(tmp_path / "a")),
    )
    official = inference_on_dataset(
        model,
        loader,
        COCOEvaluator("synthetic_coco_val", output_dir=str(tmp_path / "b"), use_fast_impl=False),
    )
    assert set(standard) == {"bbox", "segm"}
    for task in standard:
        for k, v in official[task].items():
            assert standard[task][k] == pytest.approx(v, nan_ok=True), (task, k)


def test_the_installer_adds_the_cocoeval_fallback_once(tmp_path):
    import detectron2.evaluation.fast_eval_api as fast

    installer = _load_tool("tools/install_detectron2_offline.py", "solo_d2_installer")
    original = open(fast.__file__).read().split(installer.FAST_EVAL_MARKER)[0]
    pkg = tmp_path / "site" / "detectron2"
    (pkg / "evaluation").mkdir(parents=True)
    (pkg / "evaluation" / "fast_eval_api.py").write_text(original)
    (pkg / "_C.py").write_text("# a compiled extension's stand-in written by someone else\n")
    assert installer.patch_installed(tmp_path / "site") == 0
    assert (
        installer.FAST_EVAL_MARKER not in (pkg / "evaluation" / "fast_eval_api.py").read_text()
    )  # not ours
    (pkg / "_C.py").write_text(installer.C_STANDIN)
    installer.patch_installed(tmp_path / "site")
    text = (pkg / "evaluation" / "fast_eval_api.py").read_text()
    assert text.count(installer.FAST_EVAL_MARKER) == 1 and text.startswith(original.rstrip("\n"))
    assert installer.patch_fast_eval(pkg) is False  # once only
    # the patched module: COCOeval_opt is pycocotools' COCOeval under the stand-in
    ns = {"__name__": "patched_fast_eval"}
    code = text.replace(
        "from detectron2 import _C",
        "import types\n_C = types.SimpleNamespace(SOLO_D2_STANDIN=True)",
    )
    exec(compile(code, "fast_eval_api.py", "exec"), ns)
    from pycocotools.cocoeval import COCOeval

    assert ns["COCOeval_opt"] is COCOeval and ns["SOLO_D2_PYTHON_FALLBACK"] is True
