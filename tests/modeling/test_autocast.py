"""Mixed precision on CPU (``torch.autocast("cpu", dtype=torch.bfloat16)``): every model
family trains and predicts under autocast.

The CUDA fp16 path (detectron2's ``AMPTrainer``) is tested in ``tests/test_cuda.py`` where a
GPU exists; these tests run everywhere and cover what both paths share: ops without kernels in
reduced precision (the deformable conv), float32 losses, and float32 post-processing.
"""

import pytest
import torch

from benchmarks import baselines as bl
from tests.helpers.models import random_model

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = [
    "Synthetic/SOLO_R18.yaml",
    "Synthetic/DecoupledSOLOLight_R18.yaml",
    "Synthetic/SOLOv2_DCN_R18.yaml",
    "Synthetic/BiSeNetV1_R18.yaml",
    "Synthetic/BiSeNetV2.yaml",
]


@pytest.mark.parametrize("config", CONFIGS)
def test_training_step_under_bf16_autocast(config):
    cfg, model = random_model(config)
    model.train()
    batch = bl.training_batch(cfg, 96, 136, num_instances=3)
    with torch.no_grad():
        ref = model(batch)  # fp32; BatchNorm statistics move, so compare loosely
    dtypes = []
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first_conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    hook.remove()
    assert dtypes == [torch.bfloat16], "autocast did not run the convolutions in bfloat16"
    assert set(losses) == set(ref)
    for k, v in losses.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), (k, v)
        assert abs(v.item() - ref[k].item()) <= 0.1 * abs(ref[k].item()) + 1e-3, (
            k,
            v.item(),
            ref[k].item(),
        )
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_solo_postprocessing_runs_in_float32_under_autocast():
    """Under autocast the head outputs are cast to float32 before post-processing: the result
    equals post-processing the same (bf16-rounded) outputs in float32 without autocast, with
    candidates on several levels (the in-place mask writes)."""
    _, model = random_model(
        "Synthetic/SOLOv2_R18.yaml", "MODEL.SOLO.SCORE_THR", "0.0", "MODEL.SOLO.UPDATE_THR", "0.0"
    )
    model.eval()
    image = torch.randint(0, 255, (3, 96, 136), dtype=torch.uint8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        images = model.preprocess_image([{"image": image}])
        cate, mask_out = model._head_outputs(images)
    assert cate[0].dtype == torch.bfloat16 and mask_out[0][0].dtype == torch.bfloat16
    inputs = [{"height": 150, "width": 200}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.inference(inputs, images, cate, mask_out)[0]["instances"]
    up = [c.float() for c in cate], [tuple(t.float() for t in o) for o in mask_out]
    want = model.inference(inputs, images, *up)[0]["instances"]
    assert len(want) > 0 and len(set(want.pred_classes.tolist())) > 1
    assert got.scores.dtype == torch.float32 and got.pred_masks.dtype == torch.bool
    assert got.pred_masks.shape[-2:] == (150, 200)
    assert torch.equal(got.scores, want.scores) and torch.equal(got.pred_masks, want.pred_masks)
    assert torch.equal(got.pred_classes, want.pred_classes)


def test_bisenet_logits_are_float32_under_autocast():
    _, model = random_model("Synthetic/BiSeNetV2.yaml")
    model.eval()
    image = torch.randint(0, 255, (3, 96, 136), dtype=torch.uint8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model([{"image": image, "height": 120, "width": 170}])[0]["sem_seg"]
    assert out.dtype == torch.float32 and out.shape[-2:] == (120, 170) and torch.isfinite(out).all()
