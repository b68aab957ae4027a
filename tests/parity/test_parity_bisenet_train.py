"""Training parity with CoinCheung/BiSeNet (commit 6b4b67a8): one training step of BiSeNetV1 / V2.

The fixtures ``tests/data/coincheung_bisenetv{1,2}_train/`` (format: ``tests/data/README.md``,
"Training fixtures") hold what CoinCheung's ``tools/train_amp.py`` computes (without AMP) in one
step on a batch of two 96x192 RGB images: ``OhemCELoss(0.7, 255)`` of the main output and of every
auxiliary output (weight 1 each, total = sum), which pixels each OHEM keeps, the BatchNorm running
statistics after the step, the gradients of the summed loss, and the same step in float64.

Each test goes through Detectron2's normal training path: the reference checkpoint is rebuilt by
rule ``crc32-v1`` with every output's final conv scaled by ``manifest["weight_scale"]`` (so that
OHEM keeps a strict subset), converted with ``tools/convert_checkpoint.py``, loaded strictly into
the config the tool names (``build_model`` + ``DetectionCheckpointer``), put in ``model.train()`` as
Detectron2's trainer does (Dropout then in eval mode, as the fixture's ``mode`` says), fed the two
images and labels as dataset dicts, and ``sum(loss_dict.values()).backward()`` is run. Compared,
with the manifest's ``suggested_tolerance``:

- every loss term (solo_d2's loss names mapped to the reference outputs) and the total, rtol 1e-5;
- the OHEM counts ``[n_valid, n_min, n_hard, n_kept]`` and the kept pixels, exactly: they come from
  :func:`solo_d2.modeling.bisenet.loss.ohem_selection` (the function the OHEM loss itself uses)
  applied to the logits and targets the head passed to its loss;
- BN running mean / var (and ``num_batches_tracked``) of ``bn_stats_layers`` after the step,
  atol 1e-5;
- norms of the final convs' gradients (``grad_arrays``), rtol 1e-4, and those gradients, atol
  1e-3 x max|grad|;
- in float64 (``model.double()``, the uint8 input normalized in float64 by the model, the losses
  computed in float64): the losses and every gradient norm of ``grad_norm_keys`` (and of all
  parameters), rtol 1e-6, against ``float64_rerun``. The other float32 norms pass a BatchNorm over
  two pooled values per channel, whose float32 error reaches ~1e-1 in the reference itself: they
  are printed as diagnostics only. (``float64_rerun["loss_total"]`` is stored rounded to float32,
  ~4e-8 off the sum of its terms; rtol 1e-6 allows for that.)

Reference names (state-dict keys, BN layers) are mapped to solo_d2's through the converter's own
rename rules (``solo_d2/checkpoint/bisenet.py``), not a table of this file.

V2's case ``dropout_active`` (the five ``nn.Dropout(0.1)`` in train mode after
``torch.manual_seed(0)``) is informational in the fixture; solo_d2's heads apply the same
dropouts, of the same shapes, in the same order, so on CPU they draw the same masks and the case
is checked too.
"""

import sys

import numpy as np
import pytest
import torch
from torch import nn

from solo_d2.checkpoint.bisenet import coincheung_v1_rules, coincheung_v2_rules
from solo_d2.checkpoint.core import rename_keys
from solo_d2.modeling.bisenet.loss import ohem_selection, pixel_losses
from tests.helpers import run_converter
from tests.helpers.parity_utils import (
    DATA_DIR,
    build_converted,
    load_manifest,
    rule_state_dict,
    save_reference,
)

# fixture -> (converter source, its rename rules, reference output -> solo_d2 loss name)
FIXTURES = {
    "coincheung_bisenetv1_train": (
        "coincheung-bisenetv1",
        coincheung_v1_rules,
        {"feat_out": "loss_sem_seg", "feat_out16": "loss_aux8", "feat_out32": "loss_aux16"},
    ),
    "coincheung_bisenetv2_train": (
        "coincheung-bisenetv2",
        coincheung_v2_rules,
        {
            "logits": "loss_sem_seg",
            "logits_aux2": "loss_booster_stem",
            "logits_aux3": "loss_booster_s3",
            "logits_aux4": "loss_booster_s4",
            "logits_aux5_4": "loss_booster_s5",
        },
    ),
}
DROPOUT_CASE = "dropout_active"  # V2 only: Dropout in train mode, masks drawn after manual_seed(0)
CASES = [
    (name, case)
    for name in FIXTURES
    for case in load_manifest(name)["cases"]
    if case != DROPOUT_CASE
]


def scaled_reference_state(manifest):
    """The reference's state dict: rule ``crc32-v1``, then ``weight_scale`` (final convs x 8)."""
    state = rule_state_dict(manifest)
    for key, factor in manifest["weight_scale"]["values"].items():
        if key not in state:
            raise KeyError(f"weight_scale names {key!r}, which is not in the state dict")
        state[key] = state[key] * factor
    return state


def rel_err(actual, expected):
    return abs(float(actual) - float(expected)) / abs(float(expected))


def load_inputs(name, case, cfg):
    """The fixture's batch as Detectron2 dataset dicts (image CHW uint8 in ``INPUT.FORMAT``)."""
    manifest = load_manifest(name)
    labels = np.load(f"{DATA_DIR}/{name}/labels_{case}.npy")  # uint8 [2, H, W], 255 = ignore
    assert manifest["inputs"]["layout"].startswith("HWC uint8 RGB")
    order = {"RGB": [0, 1, 2], "BGR": [2, 1, 0]}[cfg.INPUT.FORMAT]
    batch = []
    for i, file in enumerate(manifest["inputs"]["images"]):
        image = np.load(f"{DATA_DIR}/{name}/{file}")[:, :, order]
        h, w = image.shape[:2]
        batch.append(
            {
                "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
                "sem_seg": torch.from_numpy(labels[i].astype(np.int64)),
                "height": h,
                "width": w,
            }
        )
    # the model's (x - PIXEL_MEAN) / PIXEL_STD is the reference's (x / 255 - mean) / std
    # (also in float64)
    norm = manifest["inputs"]["normalization"]
    np.testing.assert_allclose(
        cfg.MODEL.PIXEL_MEAN, np.array(norm["mean"])[order] * 255, rtol=1e-12
    )
    np.testing.assert_allclose(cfg.MODEL.PIXEL_STD, np.array(norm["std"])[order] * 255, rtol=1e-12)
    return batch


@pytest.fixture(scope="module")
def converted(single_thread, tmp_path_factory):
    """name -> (config, converted weights, reference key -> solo_d2 key);
    converted once per module."""
    out = {}
    for name, (source, rules, _) in FIXTURES.items():
        manifest = load_manifest(name)
        tmp = tmp_path_factory.mktemp(name)
        state = scaled_reference_state(manifest)
        weights = tmp / "converted.pth"
        proc = run_converter(source, save_reference(tmp, state), weights)
        assert proc.returncode == 0, proc.stderr
        config = proc.stdout.strip().splitlines()[-1]
        assert (
            config
            == f"configs/Converted/CoinCheung_BiSeNetV{name.split('_')[1][-1]}_cityscapes.yaml"
        )
        ours_to_ref = rename_keys({k: k for k in state}, rules(), source=source)
        out[name] = (config, weights, {ref: ours for ours, ref in ours_to_ref.items()})
    return out


@pytest.fixture(scope="module")
def step(converted):
    """``step(name, case, dtype)``: one training step of a freshly loaded model (cached)."""
    cache = {}

    def run(name, case, dtype=torch.float32):
        if (name, case, dtype) in cache:
            return cache[name, case, dtype]
        config, weights, ref2ours = converted[name]
        cfg, model = build_converted(config, weights)  # build_model + DetectionCheckpointer, strict
        model.train()  # as detectron2's SimpleTrainer
        if case != DROPOUT_CASE:  # the fixture's mode: every nn.Dropout in eval mode
            for m in model.modules():
                if isinstance(m, nn.Dropout):
                    m.eval()
        model.to(dtype)
        if dtype == torch.float64:
            # detectron2 makes PIXEL_MEAN / PIXEL_STD float32 buffers (torch.tensor of the config's
            # floats), which model.double() only widens (83.0535 -> 83.05349731...: 3e-8 off in the
            # losses, 1e-5 in the pooled-BN gradients): refill them from the config in float64, so
            # the input is normalized in float64 as in the reference's float64 rerun
            for buf in ("pixel_mean", "pixel_std"):
                getattr(model, buf).copy_(
                    torch.tensor(cfg.MODEL[buf.upper()], dtype=dtype).view(-1, 1, 1)
                )
        batch = load_inputs(name, case, cfg)
        head_module = sys.modules[type(model.sem_seg_head).__module__]
        real_loss, calls = head_module.seg_loss, []

        def recording_loss(logits, targets, **kw):  # what the head gives its loss, passed through
            calls.append((logits.detach(), targets, kw))
            return real_loss(logits, targets, **kw)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(head_module, "seg_loss", recording_loss)
            if case == DROPOUT_CASE:
                torch.manual_seed(0)  # as the reference, right before the forward
            loss_dict = model(batch)
        total = sum(loss_dict.values())
        total.backward()
        assert len(calls) == len(
            loss_dict
        )  # the heads fill their loss dicts in the order of the calls
        params = dict(model.named_parameters())
        ours2ref = {v: k for k, v in ref2ours.items()}
        result = {
            "losses": {k: float(v.detach()) for k, v in loss_dict.items()},
            "total": float(total.detach()),
            "loss_dtypes": {v.dtype for v in loss_dict.values()},
            "calls": dict(zip(loss_dict, calls)),
            "grads": {
                ours2ref[k]: p.grad.detach().double()
                for k, p in params.items()
                if p.grad is not None
            },
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "n_params": len(params),
        }
        cache[name, case, dtype] = result
        return result

    return run


def _check_losses_and_ohem(name, case, res):
    manifest = load_manifest(name)
    names = FIXTURES[name][2]
    expected = np.load(f"{DATA_DIR}/{name}/expected.npz")
    tol = manifest["suggested_tolerance"]
    assert set(res["losses"]) == set(names.values()), (
        "every solo_d2 loss term maps to a reference output"
    )
    assert list(names) == manifest["output_order"]
    errors = {}
    for out, ours in names.items():
        errors[out] = rel_err(res["losses"][ours], expected[f"{case}__loss_{out}"])
        ref = manifest["cases"][case]["reference_result"]["loss_terms"][out]
        assert np.float32(ref) == expected[f"{case}__loss_{out}"]
    errors["total"] = rel_err(res["total"], expected[f"{case}__loss_total"])
    print(f"\n{name} {case}: loss max rel err {max(errors.values()):.2e}", errors)
    assert max(errors.values()) <= tol["losses_rtol"], errors

    for out, ours in names.items():
        logits, targets, kw = res["calls"][ours]
        assert kw["loss_type"] == "ohem"
        assert tuple(logits.shape[-2:]) == tuple(targets.shape[-2:]), "logits at input resolution"
        loss, valid = pixel_losses(logits, targets, kw["ignore_value"])
        kept, counts = ohem_selection(loss, valid, kw["thresh"], kw["min_kept_divisor"])
        actual = [counts[k] for k in ("n_valid", "n_min", "n_hard", "n_kept")]
        ref_counts = expected[f"{case}__ohem_counts_{out}"].tolist()
        assert actual == ref_counts, (out, actual, ref_counts)
        ref_kept = np.unpackbits(expected[f"{case}__ohem_kept_packed_{out}"])[
            : kept.numel()
        ].astype(bool)
        mismatched = int((kept.numpy() != ref_kept).sum())
        assert mismatched == 0, f"{out}: {mismatched} pixels kept differently"
        # and the loss is the mean of exactly those pixels' CE
        mean = loss[kept].double().mean()
        assert rel_err(mean, res["losses"][ours]) <= 1e-6


def _check_bn_stats(name, case, res, converted):
    manifest = load_manifest(name)
    expected = np.load(f"{DATA_DIR}/{name}/expected.npz")
    atol = manifest["suggested_tolerance"]["bn_running_stats_atol"]
    ref2ours = converted[name][2]
    tracked = manifest["cases"][case]["reference_result"]["bn_num_batches_tracked_after"]
    errors = {}
    for layer in manifest["bn_stats_layers"]:
        for stat in ("mean", "var"):
            actual = res["state"][ref2ours[f"{layer}.running_{stat}"]].double().numpy()
            ref = expected[f"{case}__bn_running_{stat}__{layer}"]
            errors[f"{layer}.{stat}"] = float(np.abs(actual - ref).max())
        assert int(res["state"][ref2ours[f"{layer}.num_batches_tracked"]]) == tracked[layer]
    print(f"\n{name} {case}: BN running stats max abs err {max(errors.values()):.2e}", errors)
    assert max(errors.values()) <= atol, errors


def _check_final_conv_grads(name, case, res):
    manifest = load_manifest(name)
    expected = np.load(f"{DATA_DIR}/{name}/expected.npz")
    tol = manifest["suggested_tolerance"]
    keys = manifest["grad_norm_keys"]
    ref_norms = dict(zip(keys, expected[f"{case}__grad_norms"].tolist()))
    assert ref_norms == pytest.approx(
        manifest["cases"][case]["reference_result"]["grad_norms"], rel=1e-12
    )
    n_with_grad = manifest["cases"][case]["reference_result"]["n_parameters_with_grad"]
    assert len(res["grads"]) == n_with_grad == res["n_params"], "every parameter gets a gradient"
    norm_err, array_err = {}, {}
    for array, key in manifest["grad_arrays"].items():
        grad = res["grads"][key].numpy()
        ref = expected[f"{case}__{array}"]
        assert grad.shape == ref.shape, key
        norm_err[key] = rel_err(np.linalg.norm(grad.ravel()), ref_norms[key])
        array_err[key] = float(np.abs(grad - ref).max() / np.abs(ref).max())
    print(
        f"\n{name} {case}: final-conv grad norm max rel err {max(norm_err.values()):.2e}", norm_err
    )
    print(
        f"{name} {case}: final-conv grad max abs err / max|grad| {max(array_err.values()):.2e}",
        array_err,
    )
    diagnostics = {
        k: rel_err(res["grads"][k].norm(), v)
        for k, v in ref_norms.items()
        if k not in manifest["grad_arrays"].values()
    }
    print(f"{name} {case}: other float32 grad norms (diagnostic only, not a verdict)", diagnostics)
    assert max(norm_err.values()) <= 1e-4, norm_err
    assert max(array_err.values()) <= tol["grads_atol_rel_to_max"], array_err


@pytest.mark.parametrize("name,case", CASES)
def test_losses_and_ohem_selection(name, case, step):
    _check_losses_and_ohem(name, case, step(name, case))


@pytest.mark.parametrize("name,case", CASES)
def test_bn_running_stats_after_step(name, case, step, converted):
    _check_bn_stats(name, case, step(name, case), converted)


@pytest.mark.parametrize("name,case", CASES)
def test_final_conv_gradients(name, case, step):
    _check_final_conv_grads(name, case, step(name, case))


@pytest.mark.parametrize("name,case", CASES)
def test_float64_step_matches_float64_rerun(name, case, step):
    manifest = load_manifest(name)
    names = FIXTURES[name][2]
    rerun = manifest["cases"][case]["float64_rerun"]
    rtol = 1e-6  # suggested_tolerance["grad_norms_rtol"]: float64 against float64_rerun
    assert "float64_rerun, rtol 1e-6" in manifest["suggested_tolerance"]["grad_norms_rtol"]
    res = step(name, case, torch.float64)
    assert all(g.dtype == torch.float64 for g, _, _ in res["calls"].values()), "float64 logits"
    assert res["loss_dtypes"] == {torch.float64}, "the losses are computed in float64 too"
    loss_err = {
        out: rel_err(res["losses"][ours], rerun["loss_terms"][out]) for out, ours in names.items()
    }
    loss_err["total"] = rel_err(res["total"], rerun["loss_total"])
    grads = res["grads"]
    norm_err = {k: rel_err(grads[k].norm(), v) for k, v in rerun["grad_norms"].items()}
    assert set(norm_err) == set(manifest["grad_norm_keys"])
    all_norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
    norm_err["all_parameters"] = rel_err(all_norm, rerun["grad_norm_all_parameters"])
    print(f"\n{name} {case} float64: loss max rel err {max(loss_err.values()):.2e}", loss_err)
    print(f"{name} {case} float64: grad norm max rel err {max(norm_err.values()):.2e}", norm_err)
    assert max(loss_err.values()) <= rtol, loss_err
    assert max(norm_err.values()) <= rtol, norm_err


def test_v2_dropout_active_same_masks(step, converted):
    """Dropout in train mode after ``torch.manual_seed(0)``: solo_d2 draws the reference's masks
    (same modules, shapes and order), so the whole float32 check applies to this case too."""
    name = "coincheung_bisenetv2_train"
    assert DROPOUT_CASE in load_manifest(name)["cases"]
    res = step(name, DROPOUT_CASE)
    _check_losses_and_ohem(name, DROPOUT_CASE, res)
    _check_bn_stats(name, DROPOUT_CASE, res, converted)
    _check_final_conv_grads(name, DROPOUT_CASE, res)
