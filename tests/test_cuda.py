"""CUDA paths: skipped without a GPU (CI has none); run with ``pytest tests/test_cuda.py``
on a machine with one.

On the GPU the functions must compute what they compute on the CPU (target assignment
exactly; post-processing and Matrix NMS to float rounding), training must run under AMP
through detectron2's ``AMPTrainer`` with finite losses, and ``tools/train_net.py`` must train
and evaluate with ``MODEL.DEVICE cuda`` and ``SOLVER.AMP.ENABLED True``.
"""

import itertools
import json
import math
import types

import numpy as np
import pytest
import torch

from benchmarks import baselines as bl
from solo_d2.modeling.solo.matrix_nms import matrix_nms
from solo_d2.modeling.solo.targets import grid_cell, instance_geometry, solo_targets
from tests.helpers import REPO_ROOT, run_tool
from tests.helpers.models import random_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """Comparisons with the CPU need float32 convolutions and matmuls
    (cuDNN uses TF32 by default)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("with_boxes", [True, False])
def test_targets_on_cuda_equal_cpu(with_boxes):
    h, w = 200, 296  # non-square, several instances per level, 80 classes
    masks, classes = bl.random_instances(2, 30, h, w, seed=7)
    masks[1][3] = False  # an empty mask
    boxes = bl.boxes_of(masks) if with_boxes else None
    kw = dict(
        num_grids=bl.GRIDS,
        scale_ranges=bl.RANGES,
        mask_sizes=[(h // 4, w // 4)] * 2 + [(h // 8, w // 8)] * 3,
        sigma=0.2,
        num_classes=80,
    )
    for m in masks:  # geometry first, so that a difference is found where it starts
        for name, a, b in zip(
            ("box_h", "box_w", "cy", "cx", "area"),
            instance_geometry(m),
            instance_geometry(m.to(CUDA)),
        ):
            assert torch.equal(a, b.cpu()), name
    cpu = solo_targets(masks, classes, gt_boxes=boxes, **kw)
    gpu = solo_targets(
        [m.to(CUDA) for m in masks],
        [c.to(CUDA) for c in classes],
        gt_boxes=[b.to(CUDA) for b in boxes] if boxes else None,
        **kw,
    )
    assert sum(t.num_targets for t in cpu) > 20
    for c, g in zip(cpu, gpu):
        for name, a, b in zip(c._fields, c, g):
            if isinstance(a, torch.Tensor):
                assert b.device.type == "cuda", name
                assert torch.equal(a, b.cpu()), name


def test_grid_cells_on_cuda_equal_cpu():
    """CUDA divides by a Python number as a product with its float32 reciprocal, one bit off
    the quotient for some values; grid_cell must divide exactly on both devices."""
    coords = torch.arange(0, 1216 * 8, dtype=torch.float32) / 8 + torch.rand(
        1216 * 8, generator=torch.Generator().manual_seed(0)
    )
    for extent in (800, 1216, 1333):
        recip = coords * torch.tensor(1.0 / extent, dtype=torch.float32)
        assert (recip != coords / extent).any()  # values where the two ways differ are present
        for s in bl.GRIDS:
            assert torch.equal(
                grid_cell(coords.to(CUDA), extent, s).cpu(), grid_cell(coords, extent, s)
            ), (extent, s)


def test_matrix_nms_on_cuda_matches_cpu():
    masks = bl.random_instances(1, 120, 64, 90, seed=2)[0][0]
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (120,), generator=g)
    scores = torch.rand(120, generator=g).sort(descending=True).values
    cpu = matrix_nms(masks, labels, scores)
    gpu = matrix_nms(masks.to(CUDA), labels.to(CUDA), scores.to(CUDA))
    assert (cpu < scores).any()  # some scores decayed
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0)


def test_postprocessing_on_cuda_matches_cpu():
    size = (256, 384)
    cate, mask_out, padded = bl.synthetic_solov2_outputs(200, size=size, num_objects=20)
    _, model = random_model(
        "SOLOv2/R50_3x.yaml",
        "MODEL.RESNETS.DEPTH",
        "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        "64",
        device="cpu",
    )
    model.eval()
    with torch.no_grad():
        cpu = bl.solo_d2_postprocess(model, cate, mask_out, padded, output_size=(300, 460))
        model.to(CUDA)
        gpu = bl.solo_d2_postprocess(
            model,
            [c.to(CUDA) for c in cate],
            [(k.to(CUDA), f.to(CUDA)) for k, f in mask_out],
            padded,
            output_size=(300, 460),
        )
        ref = bl.adelaidet_postprocess(
            [c.to(CUDA) for c in cate],
            [(k.to(CUDA), f.to(CUDA)) for k, f in mask_out],
            padded,
            (300, 460),
            bl.test_cfg_of(model),
        )
    assert len(cpu) > 10 and len(set(cpu.pred_classes.tolist())) > 1
    assert len(gpu) == len(cpu) and gpu.pred_masks.device.type == "cuda"
    assert torch.equal(gpu.pred_classes.cpu(), cpu.pred_classes)
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-5, rtol=0)
    differ = (gpu.pred_masks.cpu() != cpu.pred_masks).sum().item()
    assert differ <= 1e-4 * cpu.pred_masks.numel(), (
        differ
    )  # only pixels at the 0.5 threshold may flip
    torch.testing.assert_close(gpu.pred_boxes.tensor.cpu(), cpu.pred_boxes.tensor, atol=1.0, rtol=0)
    torch.testing.assert_close(
        gpu.scores, ref[1], atol=1e-5, rtol=0
    )  # the reference algorithm on the GPU
    with (
        torch.no_grad()
    ):  # output size = input size: masks pasted around their boxes on the CPU, whole on the GPU
        gpu_same = bl.solo_d2_postprocess(
            model,
            [c.to(CUDA) for c in cate],
            [(k.to(CUDA), f.to(CUDA)) for k, f in mask_out],
            padded,
        )
        model.cpu()
        cpu_same = bl.solo_d2_postprocess(model, cate, mask_out, padded)
    assert len(gpu_same) == len(cpu_same) and torch.equal(
        gpu_same.pred_classes.cpu(), cpu_same.pred_classes
    )
    differ = (gpu_same.pred_masks.cpu() != cpu_same.pred_masks).sum().item()
    assert differ <= 1e-4 * cpu_same.pred_masks.numel(), differ
    torch.testing.assert_close(
        gpu_same.pred_boxes.tensor.cpu(), cpu_same.pred_boxes.tensor, atol=1.0, rtol=0
    )


@pytest.mark.parametrize(
    "config",
    [
        "Synthetic/SOLOv2_DCN_R18.yaml",
        "Synthetic/DecoupledSOLO_R18.yaml",
        "Synthetic/BiSeNetV2.yaml",
    ],
)
def test_model_on_cuda_matches_cpu(config):
    """Head outputs (SOLO) or logits (BiSeNet) of the GPU model equal the CPU model's to float
    rounding; the GPU model's predictions are well formed (random weights give near-equal
    scores, so their order is not compared: the post-processing test above compares that)."""
    from torchvision.ops import masks_to_boxes

    opts = (
        (
            "MODEL.SOLO.SCORE_THR",
            "0.0",
            "MODEL.SOLO.UPDATE_THR",
            "0.0",
            "MODEL.SOLO.MASK_THR",
            "0.1",
        )
        if "SOLO" in config
        else ()
    )
    _, model = random_model(config, *opts, device="cpu")
    model.eval()
    image = torch.randint(
        0, 255, (3, 120, 176), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    inputs = [{"image": image, "height": 150, "width": 220}, {"image": image[:, :96, :128]}]
    with torch.no_grad():
        cpu = model(inputs)
        cpu_heads = (
            model._head_outputs(model.preprocess_image(inputs)) if "SOLO" in config else None
        )
        model.to(CUDA)
        gpu = model(inputs)
        gpu_heads = (
            model._head_outputs(model.preprocess_image(inputs)) if "SOLO" in config else None
        )
    if cpu_heads is not None:
        flat = lambda x: [t for v in x for t in (v if isinstance(v, (tuple, list)) else (v,))]  # noqa: E731
        for a, b in zip(
            flat(cpu_heads[0]) + flat(cpu_heads[1]), flat(gpu_heads[0]) + flat(gpu_heads[1])
        ):
            torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-4)
    for inp, c, g in zip(inputs, cpu, gpu):
        size = (inp.get("height", inp["image"].shape[1]), inp.get("width", inp["image"].shape[2]))
        if "sem_seg" in c:
            assert g["sem_seg"].device.type == "cuda" and g["sem_seg"].shape[-2:] == size
            torch.testing.assert_close(g["sem_seg"].cpu(), c["sem_seg"], atol=1e-3, rtol=1e-3)
            continue
        g = g["instances"]
        assert len(g) > 0 and len(g) == len(c["instances"]) and g.image_size == size
        assert g.pred_masks.device.type == "cuda" and g.pred_masks.dtype == torch.bool
        assert g.pred_masks.shape[-2:] == size and g.scores.dtype == torch.float32
        assert bool((g.scores[:-1] >= g.scores[1:]).all())
        nonempty = g.pred_masks.flatten(1).any(1)
        torch.testing.assert_close(
            g.pred_boxes.tensor[nonempty],
            masks_to_boxes(g.pred_masks[nonempty]).float()
            + torch.tensor([0, 0, 1, 1], device=CUDA),
            atol=0,
            rtol=0,
        )


def _amp_active(model, box):
    """Record the output dtype of the model's plain convolutions (no norm layer after them:
    detectron2's FrozenBatchNorm2d computes in float32, and so does the deformable conv)."""
    from detectron2.layers import Conv2d

    convs = [
        m
        for m in model.modules()
        if type(m) in (torch.nn.Conv2d, Conv2d) and getattr(m, "norm", None) is None
    ]
    hooks = [c.register_forward_hook(lambda m, i, o: box.append(o.dtype)) for c in convs]
    return types.SimpleNamespace(remove=lambda: [h.remove() for h in hooks])


@pytest.mark.parametrize(
    "config",
    [
        "Synthetic/SOLO_R18.yaml",
        "Synthetic/DecoupledSOLOLight_R18.yaml",
        "Synthetic/SOLOv2_DCN_R18.yaml",
        "Synthetic/SOLOv2Light_R18.yaml",
        "Synthetic/BiSeNetV1_R18.yaml",
        "Synthetic/BiSeNetV2.yaml",
    ],
)
def test_amp_trainer_steps(config):
    """detectron2's AMPTrainer (``SOLVER.AMP.ENABLED``): fp16 convolutions, float32 losses close
    to the fp32 ones, finite losses over several steps, parameters updated."""
    from detectron2.engine import AMPTrainer
    from detectron2.utils.events import EventStorage

    from solo_d2.engine.trainer import Trainer

    cfg, model = random_model(config, device="cuda")
    model.train()
    batch = bl.training_batch(cfg, 160, 224, num_instances=5)
    with torch.no_grad():
        ref = {k: v.item() for k, v in model(batch).items()}
    before = [p.detach().clone() for p in model.parameters()]
    trainer = AMPTrainer(model, itertools.repeat(batch), Trainer.build_optimizer(cfg, model))
    dtypes = []
    hook = _amp_active(model, dtypes)
    with EventStorage(0) as storage:
        for _ in range(4):
            trainer.run_step()
            storage.step()
        history = {
            k: [v for v, _ in h.values()]
            for k, h in storage.histories().items()
            if k.startswith("loss")
        }
    hook.remove()
    assert dtypes and set(dtypes) == {torch.float16}, set(dtypes)
    assert set(history) == set(ref)
    for k, values in history.items():
        assert all(math.isfinite(v) for v in values), (k, values)
        assert abs(values[0] - ref[k]) <= 0.05 * abs(ref[k]) + 1e-3, (k, values[0], ref[k])
    assert trainer.grad_scaler.get_scale() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "config,metric",
    [
        ("Synthetic/SOLOv2Light_R18.yaml", "segm/AP"),
        ("Synthetic/SOLOv2_R18_cityscapes.yaml", "segm/AP"),
        ("Synthetic/BiSeNetV1_R18.yaml", "sem_seg/mIoU"),
    ],
)
def test_train_net_on_cuda_with_amp(tmp_path, config, metric, synthetic_coco, synthetic_cityscapes):
    out = tmp_path / "out"
    proc = run_tool(
        "tools/train_net.py",
        "--config-file",
        REPO_ROOT / "configs" / config,
        "--num-gpus",
        "1",
        "MODEL.DEVICE",
        "cuda",
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.MAX_ITER",
        "6",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "TEST.EVAL_PERIOD",
        "0",
        "OUTPUT_DIR",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert losses and all(np.isfinite(losses))
    assert any(metric in r for r in records), f"no {metric} in metrics.json"
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["trainer"]["_trainer"]["grad_scaler"]["scale"] > 0  # AMPTrainer's state was saved
