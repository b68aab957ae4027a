"""Parity with the official SOLO code (WXinlong/SOLO f4cd03b) and mmdetection 3.3.0, inference and
one training step, for SOLO, Decoupled SOLO, Decoupled-light, SOLOv2 and SOLOv2-light.

Each ``tests/data/{official,mmdet}_<variant>_tiny`` fixture holds what the reference computed with
weights of the ``crc32-v1`` rule on two images run as one batch (see ``tests/data/README.md``). Here
the reference checkpoint is rebuilt, converted with ``tools/convert_checkpoint.py`` into the config
the manifest names (plus its shrink keys), loaded with Detectron2's checkpointer and run the normal
way: dataset dicts in, ``model.eval()`` detections out; ``model.train()``, ``loss_dict =
model(batch)``, ``sum(loss_dict.values()).backward()``. Checked: raw head outputs, classes, scores
and masks; every loss term, the targets (mmdetection's own per-level labels and positive cells),
gradient norms and full gradients of the final convs, and (mmdetection) every gradient norm of the
model cast to float64 against the reference's float64 rerun.

The training departures between the references are options (docs/MODEL_ZOO.md, training
fidelity): the official configs use the recipe defaults; the ``Converted/mmdet`` configs set
``MODEL.SOLO.GRID_ROUNDING "trunc"`` and ``MODEL.SOLO.LOSS.DICE_NORMALIZER "cells"``, and every
config of the family trains the BN affine parameters (``MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE``).
"""

import numpy as np
import pytest
import torch

from tests.helpers.parity_solo import (
    SoloFixture,
    dataset_dicts,
    grad_norm_gap_allowed,
    match_order,
    unpack_masks,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# every SOLO-family fixture folder of tests/data (copied from shared/parity), by name
NAMES = [
    "official_solo_tiny",
    "official_decoupled_tiny",
    "official_decoupled_light_tiny",
    "official_solov2_tiny",
    "official_solov2_light_tiny",
    "mmdet_solo_tiny",
    "mmdet_decoupled_tiny",
    "mmdet_decoupled_light_tiny",
    "mmdet_solov2_tiny",
    "mmdet_solov2_light_tiny",
]
LOSS_NAMES = {
    "official": {"loss_mask": "loss_ins", "loss_cate": "loss_cate"},
    "mmdet": {"loss_mask": "loss_mask", "loss_cate": "loss_cls"},
}


_PREPARED = {}


def _prepare(name, tmp_path_factory):
    """The fixture with its converted checkpoint and parameter-name map, built once per session."""
    if name not in _PREPARED:
        fixture = SoloFixture(name)
        fixture.weights, fixture.tool = fixture.convert(str(tmp_path_factory.mktemp(name)))
        fixture.names = fixture.param_names(fixture.weights)
        _PREPARED[name] = fixture
    return _PREPARED[name]


@pytest.fixture(scope="module", params=NAMES)
def fx(request, tmp_path_factory):
    return _prepare(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=[n for n in NAMES if n.startswith("mmdet")])
def fx_mmdet(request, tmp_path_factory):
    """mmdetection fixtures only: the official ones record no float64 rerun."""
    return _prepare(request.param, tmp_path_factory)


def _batch(fx, cfg, with_gt=True):
    gts = [fx.ground_truth(i) for i in range(2)] if with_gt else None
    return dataset_dicts(fx.images(cfg.INPUT.FORMAT), gts)


def _head_expected(fx, model_out, level):
    """(name, ours, expected) for the raw head outputs of one level the fixture stores."""
    exp, out = fx.expected, []
    cate, mask = model_out[0][level], model_out[1][level]
    if fx.kind == "official":
        names = {
            "cate": f"head_cate_{level}",
            "ins": f"head_ins_{level}",
            "x": f"head_ins_x_{level}",
            "y": f"head_ins_y_{level}",
            "kernel": f"head_kernel_{level}",
            "feat": "mask_feat",
        }
    else:
        names = {
            "cate": f"cate_logits_l{level}",
            "ins": f"mask_logits_l{level}",
            "x": f"mask_x_logits_l{level}",
            "y": f"mask_y_logits_l{level}",
            "kernel": f"kernel_preds_l{level}",
            "feat": "mask_feats",
        }
    out.append(("cate", cate, exp[names["cate"]]))
    if names["ins"] in exp:
        ch = exp[names["ins"] + "_channels"]
        out.append(("ins", mask[:, ch], exp[names["ins"]]))
    if names["x"] in exp:
        for i, key in enumerate(("x", "y")):
            ch = exp[names[key] + "_channels"]
            out.append((key, mask[i][:, ch], exp[names[key]]))
    if names["kernel"] in exp:
        out.append(("kernel", mask[0], exp[names["kernel"]]))
        if level == 0:
            out.append(("feat", mask[1], exp[names["feat"]]))
    return out


def _tolerance(fx, key, default):
    tol = fx.manifest.get("tolerances") or fx.manifest.get("suggested_tolerance")
    return tol.get(key, default)


def test_tool_converts_into_the_named_config(fx):
    assert fx.tool.stdout.strip().splitlines()[-1] == fx.config
    assert "solo_d2_config" in (fx.manifest.get("reference") or fx.manifest)


@pytest.mark.parametrize("crowded", [False, True])
def test_inference_head_outputs_and_detections(fx, crowded, monkeypatch):
    """``crowded``: the path of images whose candidate cells' masks would not fit in
    ``SOLO._MAX_MASK_ELEMENTS`` (area and maskness in chunks of a few cells, then the masks of the
    top ``NMS_PRE`` candidates only) gives the reference's detections too."""
    cfg, model = fx.build(fx.weights)
    model.eval()
    if crowded:
        monkeypatch.setattr(type(model), "_MAX_MASK_ELEMENTS", 3 * 64 * 64)
    batch = _batch(fx, cfg, with_gt=False)
    with torch.no_grad():
        images = model.preprocess_image(batch)
        head_out = model._head_outputs(images)
        results = model(batch)
    atol = _tolerance(fx, "head_abs", 1e-4)
    compared = 0
    for level in range(5):
        for name, ours, ref in _head_expected(fx, head_out, level):
            np.testing.assert_allclose(
                ours.numpy(), ref, atol=atol, rtol=0, err_msg=f"{name} level {level}"
            )
            compared += 1
    assert compared >= 10
    for i, res in enumerate(results):
        pre = f"img{i}_" if fx.kind == "official" else ""
        suf = "" if fx.kind == "official" else f"_{i}"
        ref_scores = fx.expected[f"{pre}scores{suf}"]
        ins = res["instances"]
        assert ins.image_size == tuple(batch[i]["image"].shape[-2:])
        assert len(ins) == len(ref_scores) > 0
        scores = ins.scores.numpy()
        order = match_order(scores, ref_scores, 1e-5)
        # A score includes the maskness and the Matrix-NMS decay of binarized masks, so one pixel at
        # 0.5 flipping under float error moves it: 1e-7 relative noise on the weights moved single
        # scores of mmdet_solo_tiny by up to 4.7e-5 (docs/TESTING.md). So: all within 10x the
        # manifest's tolerance, at most 2% of the detections beyond it.
        tol = _tolerance(fx, "score_abs", 1e-5)
        diff = np.abs(scores - ref_scores[order])
        assert diff.max() <= 10 * tol and (diff > tol).mean() <= 0.02, (
            diff.max(),
            (diff > tol).sum(),
        )
        assert ins.pred_classes.tolist() == fx.expected[f"{pre}labels{suf}"][order].tolist()
        ref_masks = unpack_masks(
            fx.expected[f"{pre}masks_packed{suf}"], fx.expected[f"{pre}masks_shape{suf}"]
        )
        assert (ins.pred_masks.numpy() != ref_masks[order]).mean() <= _tolerance(
            fx, "mask_pixel_fraction", 1e-3
        )


def _train_step(fx, dtype=torch.float32):
    cfg, model = fx.build(fx.weights)
    model.to(dtype).train()
    batch = _batch(fx, cfg)
    loss_dict = model(batch)
    sum(loss_dict.values()).backward()
    return model, loss_dict, batch


def _reference_training(fx):
    """(losses {solo_d2 name: value}, grad norms {reference param: value}) of the fixture."""
    exp, names = fx.expected, LOSS_NAMES[fx.kind]
    if fx.kind == "official":
        grads = {
            k[len("grad_norm/") :]: float(exp[k]) for k in exp.files if k.startswith("grad_norm/")
        }
    else:
        grads = dict(zip(fx.manifest["training"]["grad_norm_keys"], exp["grad_norms"].tolist()))
    return {ours: float(exp[ref]) for ours, ref in names.items()}, grads


def _grad_norm(params, name):
    g = params[name].grad
    return 0.0 if g is None else float(g.double().norm())


_FLOAT64 = {}


def _float64_step(fx):
    """(losses {name: value}, gradient norms {our parameter: value}) of the training step with the
    model cast to float64, run once per fixture: the float64 test checks it, the float32 test
    takes its float32 error from it."""
    if fx.name not in _FLOAT64:
        model, loss_dict, _ = _train_step(fx, torch.float64)
        params = dict(model.named_parameters())
        _FLOAT64[fx.name] = (
            {k: float(v) for k, v in loss_dict.items()},
            {k: _grad_norm(params, k) for k in params},
        )
    return _FLOAT64[fx.name]


def _reference_float64_grad_norms(fx):
    """{reference param: gradient norm} of mmdetection's float64 rerun."""
    training = fx.manifest["training"]
    return dict(zip(training["grad_norm_keys"], training["float64_rerun"]["grad_norms"]))


def test_training_losses_and_head_gradients(fx):
    model, loss_dict, _ = _train_step(fx)
    ref_losses, ref_grads = _reference_training(fx)
    assert set(loss_dict) == set(ref_losses)
    for key, value in ref_losses.items():
        assert float(loss_dict[key]) == pytest.approx(value, rel=1e-5), key
    params = dict(model.named_parameters())
    head = [k for k in ref_grads if k.startswith(("bbox_head.", "mask_head.", "mask_feat_head."))]
    assert len(head) >= 3
    ours64 = _float64_step(fx)[1]
    ref64 = _reference_float64_grad_norms(fx) if fx.kind == "mmdet" else {}
    for (
        key
    ) in head:  # the verdicts: the head's gradient norms, 1e-4 beyond both sides' float32 error
        ours = _grad_norm(params, fx.names[key])
        allowed = grad_norm_gap_allowed(ref_grads[key], ours, ours64[fx.names[key]], ref64.get(key))
        assert abs(ours - ref_grads[key]) <= allowed, (key, ours, ref_grads[key], allowed)
    for (
        key
    ) in ref_grads:  # the backbone and neck: within the reference's own float32 error (mmdet: 3e-3)
        assert _grad_norm(params, fx.names[key]) == pytest.approx(ref_grads[key], rel=5e-3), key
    if fx.kind == "mmdet":
        frozen = set(fx.manifest["training"]["frozen_parameters"])
        assert all(
            (params[fx.names[k]].grad is None) == (k in frozen)
            for k in fx.names
            if fx.names[k] in params
        )
        for key in [k for k in fx.expected.files if k.startswith("grad__")]:
            ref = fx.expected[key]
            ours = params[fx.names[key[len("grad__") :]]].grad.numpy()
            np.testing.assert_allclose(
                ours, ref, atol=1e-4 * np.abs(ref).max(), rtol=0, err_msg=key
            )


def test_training_targets(fx):
    cfg, model = fx.build(fx.weights)
    model.train()
    batch = _batch(fx, cfg)
    with torch.no_grad():
        images = model.preprocess_image(batch)
        targets = model.targets(batch, images, model._head_outputs(images)[1])
    num_pos = sum(int(t.pos_mask.sum()) for t in targets)
    if fx.kind == "official":
        assert num_pos == int(fx.expected["num_pos"])  # positive cells, a cell claimed twice once
        per_level = fx.manifest["gt"]["positives_per_level"]
        assert [[int(t.pos_mask[b].sum()) for t in targets] for b in range(2)] == per_level
        return
    exp = fx.expected
    assert num_pos == int(exp["num_pos"])
    assert sum(t.num_targets for t in targets) == int(exp["num_mask_targets"])
    for level, t in enumerate(targets):
        np.testing.assert_array_equal(
            t.labels.numpy(), exp[f"cate_targets_l{level}"], err_msg=f"level {level}"
        )
        np.testing.assert_array_equal(
            t.pos_mask.numpy(), exp[f"pos_mask_l{level}"], err_msg=f"level {level}"
        )
        per_image = torch.bincount(t.target_img, minlength=2).tolist()
        assert per_image == exp[f"num_mask_targets_l{level}"].tolist(), f"level {level}"


def test_training_float64_against_the_reference_float64_rerun(fx_mmdet):
    fx = fx_mmdet
    losses, norms = _float64_step(fx)
    rerun = fx.manifest["training"]["float64_rerun"]
    for ours, ref in LOSS_NAMES["mmdet"].items():
        assert losses[ours] == pytest.approx(rerun["losses"][ref], rel=1e-6), ours
    for key, value in _reference_float64_grad_norms(fx).items():
        assert norms[fx.names[key]] == pytest.approx(value, rel=1e-6, abs=1e-12), key
