"""``SOLOPanoptic``: SOLOv2 things + a semantic stuff head on one backbone
(solo_d2.modeling.solo.panoptic)."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances

from solo_d2.checkpoint.core import build_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

STUFF = 3  # stuff classes; the semantic head has STUFF + 1 ("things")


def _cfg(*opts):
    return build_cfg(
        "configs/Synthetic/SOLOv2_R18.yaml",
        [
            "MODEL.META_ARCHITECTURE",
            "SOLOPanoptic",
            "MODEL.SEM_SEG_HEAD.NAME",
            "SOLOv2StuffHead",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            str(STUFF + 1),
            "MODEL.SEM_SEG_HEAD.CONVS_DIM",
            "32",
            "DATASETS.TRAIN",
            "()",
            "DATASETS.TEST",
            "()",
            "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
            "50",
            "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
            "0.0",
            *opts,
        ],
    )


def _batch(with_instances=(True, False)):
    g = torch.Generator().manual_seed(0)
    out = []
    for k, (h, w) in enumerate([(150, 203), (131, 170)]):
        sem = torch.randint(1, STUFF + 1, (h, w), generator=g)
        sem[:10] = 255
        inst = Instances((h, w))
        if with_instances[k]:
            masks = torch.zeros(2, h, w, dtype=torch.bool)
            masks[0, 20:80, 30:100] = True
            masks[1, 60:140, 120:190] = True
            sem[masks.any(0)] = 0
            inst.gt_masks = BitMasks(masks)
            inst.gt_boxes = Boxes(torch.tensor([[30.0, 20, 100, 80], [120, 60, 190, 140]]))
            inst.gt_classes = torch.tensor([0, 2])
        else:
            inst.gt_boxes = Boxes(torch.zeros(0, 4))
            inst.gt_classes = torch.zeros(0, dtype=torch.long)
        img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        out.append({"image": img, "height": h, "width": w, "instances": inst, "sem_seg": sem})
    return out


@pytest.mark.parametrize("head", ["SOLOv2StuffHead", "SemSegFPNHead"])
def test_trains_with_an_image_without_instances_and_sums_the_weighted_losses(head):
    torch.manual_seed(0)
    model = build_model(
        _cfg("MODEL.SEM_SEG_HEAD.NAME", head, "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT", "0.5")
    )
    model.train()
    losses = model(_batch())
    assert set(losses) == {"loss_cate", "loss_mask", "loss_sem_seg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.sem_seg_head.predictor.weight.grad.abs().sum() > 0
    assert model.ins_head.cate_pred.weight.grad.abs().sum() > 0
    # the instance weight scales the SOLO losses only
    torch.manual_seed(0)
    full = build_model(_cfg("MODEL.SEM_SEG_HEAD.NAME", head))
    full.load_state_dict(model.state_dict())
    full.train()
    ref = full(_batch())
    for k in ("loss_cate", "loss_mask"):
        assert float(losses[k]) == pytest.approx(0.5 * float(ref[k]), rel=1e-6)
    assert float(losses["loss_sem_seg"]) == pytest.approx(float(ref["loss_sem_seg"]), rel=1e-6)


def test_semantic_loss_ignores_void_and_is_the_cross_entropy_of_the_head():
    torch.manual_seed(0)
    model = build_model(_cfg())
    model.train()
    batch = _batch((False, False))
    for b in batch:
        b["sem_seg"][:] = 255
    losses = model(batch)
    assert float(losses["loss_sem_seg"]) == 0.0  # all void: zero, still differentiable
    sum(losses.values()).backward()


def test_inference_returns_detectron2s_panoptic_format():
    torch.manual_seed(0)
    model = build_model(_cfg()).eval()
    batch = [{k: v for k, v in b.items() if k in ("image", "height", "width")} for b in _batch()]
    batch[1]["height"], batch[1]["width"] = 262, 340  # output at the requested size
    with torch.no_grad():
        out = model(batch)
    for b, res in zip(batch, out):
        h, w = b["height"], b["width"]
        pan, info = res["panoptic_seg"]
        assert pan.shape == (h, w) and pan.dtype == torch.int32
        assert res["sem_seg"].shape == (STUFF + 1, h, w) and res["instances"].image_size == (h, w)
        ids = set(torch.unique(pan).tolist()) - {0}
        assert ids == {s["id"] for s in info}
        assert all(0 < s["category_id"] <= STUFF for s in info if not s["isthing"])
        assert all(s["category_id"] < 3 for s in info if s["isthing"])


def test_semantic_head_class_count_must_match_the_dataset(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = "test_panoptic_model_fake_separated"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2},
        stuff_classes=["things", "a", "b"],
        stuff_dataset_id_to_contiguous_id={0: 0, 10: 1, 11: 2},
    )
    with pytest.raises(
        ValueError,
        match=r"MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4.*test_panoptic_model_fake_separated.*2 stuff",
    ):
        build_model(_cfg("DATASETS.TEST", f"('{name}',)"))
    model = build_model(
        _cfg("DATASETS.TEST", f"('{name}',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3")
    )
    assert model.combine_cfg["thing_ids"] == [0, 1, 2] and model.combine_cfg["stuff_ids"] == [
        -1,
        1,
        2,
    ]
    with pytest.raises(ValueError, match=r"MODEL.SOLO.NUM_CLASSES = 2"):
        build_model(
            _cfg(
                "DATASETS.TEST",
                f"('{name}',)",
                "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
                "3",
                "MODEL.SOLO.NUM_CLASSES",
                "2",
            )
        )


def test_trainer_refuses_a_dataset_without_panoptic_annotations_before_training():
    from solo_d2.engine.trainer import check_num_classes

    cfg = _cfg("DATASETS.TRAIN", "('synthetic_coco_train',)")
    with pytest.raises(ValueError, match="synthetic_coco_train.*no panoptic metadata"):
        check_num_classes(cfg)
    cfg = _cfg("DATASETS.TRAIN", "('coco_2017_train_panoptic',)")  # builtin: 80 things, 53 stuff
    with pytest.raises(
        ValueError, match="MODEL.SOLO.NUM_CLASSES = 3.*coco_2017_train_panoptic.*80 thing"
    ):
        check_num_classes(cfg)
    cfg = _cfg("DATASETS.TRAIN", "('coco_2017_train_panoptic',)", "MODEL.SOLO.NUM_CLASSES", "80")
    with pytest.raises(
        ValueError, match="MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4.*53 stuff classes.*needs 54"
    ):
        check_num_classes(cfg)
    check_num_classes(
        _cfg(
            "DATASETS.TRAIN",
            "('coco_2017_train_panoptic',)",
            "MODEL.SOLO.NUM_CLASSES",
            "80",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            "54",
        )
    )


def test_export_refuses_the_panoptic_model_with_a_message():
    from solo_d2.export import export_wrapper

    with pytest.raises(TypeError, match="SOLOPanoptic is not exported"):
        export_wrapper(build_model(_cfg()))


@pytest.mark.parametrize(
    "name", ["synthetic_coco_panoptic_train", "synthetic_coco_panoptic_train_separated"]
)
def test_both_dataset_formats_train_and_predict_in_their_ids(name, synthetic_coco):
    """Real dataset dicts of each format through PanopticDatasetMapper into a training step, and
    predictions whose category ids the dataset's metadata accepts (the evaluator's own check)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import transforms as T

    from solo_d2.data.panoptic import PanopticDatasetMapper
    from solo_d2.evaluation.panoptic import panoptic_prediction

    cfg = _cfg(
        "DATASETS.TRAIN",
        f"('{name}',)",
        "DATASETS.TEST",
        f"('{name}',)",
        "MODEL.SOLO.SCORE_THR",
        "0.0",
        "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
        "1",
        "MODEL.SOLO.NUM_CLASSES",
        "3",
    )
    dicts = DatasetCatalog.get(name)[:3]
    mapper = PanopticDatasetMapper(
        cfg, is_train=True, augmentations=[T.ResizeShortestEdge(128, 160)]
    )
    batch = [mapper(d) for d in dicts]
    assert all(b["sem_seg"].shape == b["image"].shape[-2:] for b in batch)
    assert sum(len(b["instances"]) for b in batch) > 0 and any(
        (b["sem_seg"] > 0).any() for b in batch
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(
            [
                {"image": b["image"], "height": b["image"].shape[1], "width": b["image"].shape[2]}
                for b in batch
            ]
        )
    meta = MetadataCatalog.get(name)
    for k, res in enumerate(out):
        ids, segments = panoptic_prediction(res["panoptic_seg"], meta, name, str(k))
        assert any(not s["isthing"] for s in segments)
