"""Parity with CoinCheung/BiSeNet (commit 6b4b67a8): converted weights reproduce its outputs.

Each fixture in ``tests/data/coincheung_bisenetv{1,2}/`` holds the reference model's state-dict
layout (weights made by rule ``crc32-v1``, rebuilt by :mod:`tests.helpers.parity_utils`), one RGB
image and every output the reference returns for it (main logits and the auxiliary heads, all at
input resolution). The tests convert the rebuilt checkpoint with ``tools/convert_checkpoint.py`` as
a user does, build the model of the config the tool names, load the written file with Detectron2's
checkpointer and run the image through the model's normal input path.
"""

import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from solo_d2.config import get_cfg
from tests.helpers import REPO_ROOT, run_converter
from tests.helpers.parity_utils import (
    DATA_DIR,
    build_converted,
    load_manifest,
    rule_state_dict,
    save_reference,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# fixture -> (converter source, reference output name -> key of the solo_d2 head's ``outputs``)
FIXTURES = {
    "coincheung_bisenetv1": (
        "coincheung-bisenetv1",
        {"feat_out": "main", "feat_out16": "aux8", "feat_out32": "aux16"},
    ),
    "coincheung_bisenetv2": (
        "coincheung-bisenetv2",
        {
            "logits": "main",
            "logits_aux2": "stem",
            "logits_aux3": "s3",
            "logits_aux4": "s4",
            "logits_aux5_4": "s5",
        },
    ),
}


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_converted_model_matches_reference(fixture, tmp_path):
    source, names = FIXTURES[fixture]
    manifest = load_manifest(fixture)
    assert set(manifest["outputs"]) == set(names), "every reference output must be compared"
    tol = manifest["suggested_tolerance"]
    atol, rtol = tol["atol"], tol["rtol"]
    assert atol <= 1e-4 and rtol <= 1e-4

    out_path = tmp_path / "converted.pth"
    proc = run_converter(source, save_reference(tmp_path, rule_state_dict(manifest)), out_path)
    assert proc.returncode == 0, proc.stderr
    config = proc.stdout.strip().splitlines()[-1]
    assert config == f"configs/Converted/CoinCheung_BiSeNetV{fixture[-1]}_cityscapes.yaml"
    cfg, model = build_converted(config, out_path)

    image = np.load(os.path.join(DATA_DIR, fixture, "input.npy"))  # H x W x 3 uint8, RGB
    assert manifest["input"]["layout"] == "HWC uint8 RGB"
    if cfg.INPUT.FORMAT == "BGR":
        image = image[:, :, ::-1]
    else:
        assert cfg.INPUT.FORMAT == "RGB"
    # the config's pixel statistics are the reference's normalization in 0-255 units
    norm = manifest["input"]["normalization"]
    order = [2, 1, 0] if cfg.INPUT.FORMAT == "BGR" else [0, 1, 2]
    assert np.allclose(cfg.MODEL.PIXEL_MEAN, np.array(norm["mean"])[order] * 255, atol=1e-3)
    assert np.allclose(cfg.MODEL.PIXEL_STD, np.array(norm["std"])[order] * 255, atol=1e-3)

    expected = np.load(os.path.join(DATA_DIR, fixture, "expected.npz"))
    h, w = image.shape[:2]
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    with torch.no_grad():
        sem_seg = model([{"image": chw, "height": h, "width": w}])[0]["sem_seg"]
        # auxiliary heads: the same backbone features, through the head's training-free ``outputs``
        x = (chw.float() - model.pixel_mean) / model.pixel_std
        outputs = model.sem_seg_head.outputs(model.backbone(x[None]))

    main = next(n for n, o in manifest["outputs"].items() if o["index"] == 0)
    assert tuple(sem_seg.shape) == tuple(
        manifest["outputs"][main]["shape"][1:]
    )  # logits at input size
    diffs = {"sem_seg": float(np.abs(sem_seg.numpy() - expected[main][0]).max())}
    assert np.allclose(sem_seg.numpy(), expected[main][0], atol=atol, rtol=rtol), diffs
    for ref_name, ours in names.items():
        actual = outputs[ours].numpy()
        assert actual.shape == expected[ref_name].shape, ref_name
        diffs[ref_name] = float(np.abs(actual - expected[ref_name]).max())
        assert np.allclose(actual, expected[ref_name], atol=atol, rtol=rtol), (ref_name, diffs)
    print(fixture, "max abs differences:", diffs)


def test_converter_refuses_other_source(tmp_path):
    """A V1 checkpoint given as V2: the error names keys V2 does not know; nothing is written."""
    state = rule_state_dict(load_manifest("coincheung_bisenetv1"))
    out_path = tmp_path / "converted.pth"
    proc = run_converter("coincheung-bisenetv2", save_reference(tmp_path, state), out_path)
    assert proc.returncode != 0
    assert "not a coincheung-bisenetv2 checkpoint" in proc.stderr
    # all 222 keys are foreign to V2; the first ones (sorted) are listed by name
    assert "222 keys match no coincheung-bisenetv2 name" in proc.stderr
    assert "conv_out.conv.conv.weight" in proc.stderr and "conv_out16.conv.bn.bias" in proc.stderr
    assert not out_path.exists() and not list(tmp_path.glob("*.tmp"))


def test_converter_refuses_wrong_class_count(tmp_path):
    """A V1 checkpoint with 20 classes does not fit the 19-class config: the key is named."""
    state = rule_state_dict(load_manifest("coincheung_bisenetv1"))
    state["conv_out.conv_out.weight"] = torch.randn(20, 256, 1, 1)
    state["conv_out.conv_out.bias"] = torch.zeros(20)
    out_path = tmp_path / "converted.pth"
    proc = run_converter("coincheung-bisenetv1", save_reference(tmp_path, state), out_path)
    assert proc.returncode != 0
    assert "sem_seg_head.predictor.predictor.weight" in proc.stderr
    assert "(20, 256, 1, 1)" in proc.stderr
    assert not out_path.exists() and not list(tmp_path.glob("*.tmp"))


def test_v2_imagenet_backbone_initializes_the_recipe_backbone(tmp_path):
    """CoinCheung's backbone_v2.pth is ``{"detail": {...}, "segment": {...}}``; converted, it fills
    every ``backbone.*`` tensor of the V2 recipe (strictly) and nothing else."""
    state = rule_state_dict(load_manifest("coincheung_bisenetv2"))
    nested = {
        part: {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
        for part in ("detail", "segment")
    }
    src, out_path = tmp_path / "backbone_v2.pth", tmp_path / "bisenetv2_backbone.pth"
    torch.save(nested, src)
    proc = run_converter("coincheung-bisenetv2-backbone", src, out_path)
    assert proc.returncode == 0, proc.stderr
    config = proc.stdout.strip().splitlines()[-1]
    assert config == "configs/BiSeNet/V2_cityscapes.yaml"
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / config))
    assert cfg.MODEL.WEIGHTS == "pretrained/bisenetv2_backbone.pth"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    head_before = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith("sem_seg_head.")
    }
    DetectionCheckpointer(model).load(str(out_path))
    converted = torch.load(out_path, weights_only=True)["model"]
    assert set(converted) == {k for k in model.state_dict() if k.startswith("backbone.")}
    ref_key = "segment.S5_5.conv_last.conv.weight"
    assert torch.equal(model.state_dict()["backbone.context.out.weight"], state[ref_key])
    for k, v in head_before.items():
        assert torch.equal(model.state_dict()[k], v), k
    # a full V2 checkpoint is not a backbone file: its head keys match no backbone name
    torch.save(state, src)
    proc = run_converter("coincheung-bisenetv2-backbone", src, tmp_path / "x.pth")
    assert proc.returncode != 0 and "aux2.conv" in proc.stderr and not (tmp_path / "x.pth").exists()
    assert "match no coincheung-bisenetv2-backbone name" in proc.stderr
