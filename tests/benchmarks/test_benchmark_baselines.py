"""The baselines of ``tools/benchmark.py`` (in ``benchmarks/baselines.py``) compute what
solo_d2 computes (so its ratios compare equal work) and, where ``ADELAIDET_ROOT`` names an
AdelaiDet checkout, what the port's own code computes (the re-implementations serve only
``--quick`` runs); the report merges partial runs, and ``--quick`` keeps the tool running. No
test here asserts a time. The module needs no ``tests/conftest.py`` fixture."""

import os
import subprocess
import sys

import pytest
import torch

from benchmarks import adelaidet_port, report
from benchmarks import baselines as bl
from solo_d2.modeling.solo.matrix_nms import mask_iou_matrix, matrix_nms
from solo_d2.modeling.solo.postprocess import paste_masks
from solo_d2.modeling.solo.targets import solo_targets
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = str(REPO_ROOT)
needs_port = pytest.mark.skipif(
    not os.environ.get(adelaidet_port.ENV),
    reason=f"set {adelaidet_port.ENV} to a checkout of aim-uofa/AdelaiDet",
)


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread (as ``tests/conftest.py``'s fixture of that name; defined here so that
    the module runs without it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def port():
    """The AdelaiDet port's SOLOv2 modules and its R50 model, loaded from ``ADELAIDET_ROOT``."""
    mods = adelaidet_port.load_adelaidet_solov2()
    return mods, adelaidet_port.build_port_model(mods)


@pytest.fixture(scope="module")
def small_solov2():
    return bl.build_solov2_model(quick=True)


@pytest.mark.parametrize("output_size", [None, (150, 230)])
def test_adelaidet_postprocess_baseline_matches_solo_d2(small_solov2, output_size):
    cate, mask_out, padded = bl.synthetic_solov2_outputs(
        80, size=(128, 192), num_objects=12, seed=1
    )
    out = output_size or padded
    with torch.no_grad():
        ours = bl.solo_d2_postprocess(small_solov2, cate, mask_out, padded, output_size)
        masks, scores, labels = bl.adelaidet_postprocess(
            cate, mask_out, padded, out, bl.test_cfg_of(small_solov2)
        )
    assert len(ours) > 3 and ours.image_size == tuple(out)
    assert torch.equal(ours.pred_classes, labels)
    torch.testing.assert_close(ours.scores, scores, atol=1e-6, rtol=0)
    assert torch.equal(ours.pred_masks, masks)


def test_adelaidet_postprocess_baseline_with_more_candidates_than_nms_pre(small_solov2):
    cate, mask_out, padded = bl.synthetic_solov2_outputs(
        150, size=(128, 192), num_objects=12, seed=2
    )
    nms_pre = small_solov2.nms_pre
    small_solov2.nms_pre = 40
    try:
        with torch.no_grad():
            ours = bl.solo_d2_postprocess(small_solov2, cate, mask_out, padded)
            masks, scores, labels = bl.adelaidet_postprocess(
                cate, mask_out, padded, padded, bl.test_cfg_of(small_solov2)
            )
    finally:
        small_solov2.nms_pre = nms_pre
    assert torch.equal(ours.pred_classes, labels) and torch.equal(ours.pred_masks, masks)
    torch.testing.assert_close(ours.scores, scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw", [(96, 160), (128, 96)])
def test_adelaidet_target_loops_match_solo_targets(hw):
    h, w = hw
    masks, classes = bl.random_instances(2, 7, h, w, seed=5)
    masks[1][3] = False  # an empty instance
    boxes = bl.boxes_of(masks)
    sizes = [(h // 4, w // 4)] * 5
    ranges = [(1, 24), (12, 48), (24, 96), (48, 192), (96, 2048)]
    out = solo_targets(
        masks,
        classes,
        num_grids=bl.GRIDS,
        scale_ranges=ranges,
        mask_sizes=sizes,
        sigma=0.2,
        num_classes=80,
        gt_boxes=boxes,
    )
    ref = bl.adelaidet_targets(masks, classes, boxes, sizes, ranges=ranges)
    n = 0
    for t, (labels, entries, mask_targets) in zip(out, ref):
        assert torch.equal(t.labels, labels)
        assert (
            list(zip(t.target_img.tolist(), t.instance_ids.tolist(), t.target_cell.tolist()))
            == entries
        )
        assert torch.equal(t.mask_targets, mask_targets)
        n += len(entries)
    assert n > 10


def test_resize_masks_integer_factors_match_interpolation():
    from solo_d2.modeling.solo.targets import resize_masks

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 72, 90, generator=g) > 0.5
    for size in [(18, 30), (24, 45), (72, 90), (36, 10), (8, 18)]:
        ref = torch.nn.functional.interpolate(
            masks.float()[:, None], size=size, mode="bilinear", align_corners=False
        )
        assert torch.equal(resize_masks(masks, size), (ref[:, 0] >= 0.5).float()), size


def test_matrix_nms_and_paste_baselines_match():
    g = torch.Generator().manual_seed(0)
    masks = bl.random_instances(1, 40, 30, 44, seed=4)[0][0]
    labels = torch.randint(0, 6, (40,), generator=g)
    scores = torch.rand(40, generator=g).sort(descending=True).values
    iou = (
        mask_iou_matrix(masks).triu(diagonal=1)
        * (labels[:, None] == labels[None, :]).triu(diagonal=1).float()
    )
    comp = iou.max(dim=0).values[:, None]
    ref = scores * torch.exp(-2.0 * (iou**2 - comp**2)).min(dim=0).values
    assert torch.equal(matrix_nms(masks, labels, scores), ref)
    soft = bl.paste_inputs(9, (70, 101))
    for out in [(70, 101), (97, 203)]:
        assert torch.equal(
            paste_masks(soft, (70, 101), out, 0.5), bl.old_paste(soft, (70, 101), out)
        )


def test_benchmark_quick_runs(tmp_path):
    """``tools/benchmark.py --quick`` (with its training children), also with another top-level
    ``tools`` package first on the path (detectron2 main installs one)."""
    out = tmp_path / "bench.md"
    shadow = tmp_path / "shadow" / "tools"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (shadow / "benchmark_baselines.py").write_text(
        "raise ImportError('the foreign tools package was imported')\n"
    )
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "benchmark.py"),
            "--quick",
            "--write",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for section in ("postprocess", "nms", "paste", "targets", "bisenet", "training", "counts"):
        assert f"## {section}" in text
    assert "DIFFERENT" not in text and "failed" not in text
    assert "torch " in text and "detectron2 " in text


def test_targets_and_dice_baseline_computes_the_same_loss_and_gradient():
    h, w = 96, 160
    masks, classes = bl.random_instances(2, 6, h, w, seed=3)
    boxes = bl.boxes_of(masks)
    sizes = [(h // 4, w // 4)] * 5
    ranges = [(1, 24), (12, 48), (24, 96), (48, 192), (96, 2048)]
    kw = dict(
        num_grids=bl.GRIDS,
        scale_ranges=ranges,
        mask_sizes=sizes,
        sigma=0.2,
        num_classes=80,
        gt_boxes=boxes,
    )
    m = sum(t.num_targets for t in solo_targets(masks, classes, **kw))
    assert m > 10
    logits = torch.randn(m, *sizes[0], generator=torch.Generator().manual_seed(0))
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = bl.targets_and_dice(masks, classes, kw, a)
    ref = bl.adelaidet_targets_and_dice(masks, classes, boxes, sizes, b, ranges=ranges)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)


def test_partial_benchmark_run_replaces_only_its_sections():
    old = report.render(
        "machine: A",
        ["- Goal one: **met** (1x).", "- Goal two: **not met** (2x)."],
        [("alpha", [("a", "1 ms", "", "")]), ("beta", [("b", "2 ms", "", "")])],
        quick=False,
    )
    new = report.render(
        "machine: B",
        ["- Goal two: **met** (30x)."],
        [("beta", [("b", "3 ms", "", "")])],
        quick=False,
    )
    merged = report.merge(old, new, "machine: B")
    assert "| a | 1 ms |" in merged and "| b | 3 ms |" in merged and "| b | 2 ms |" not in merged
    assert "- Goal one: **met** (1x)." in merged and "- Goal two: **met** (30x)." in merged
    assert "Goal two: **not met**" not in merged
    assert merged.count("## alpha") == merged.count("## beta") == merged.count("## Notes") == 1
    assert "machine: A" in merged.split("## ")[0] and "Section beta: machine: B (this run" in merged
    gamma = report.render("machine: D", [], [("gamma", [("g", "4 ms", "", "")])], quick=False)
    with_gamma = report.merge(merged, gamma, "machine: D", order=["alpha", "gamma", "beta"])
    assert with_gamma.index("## alpha") < with_gamma.index("## gamma") < with_gamma.index("## beta")
    assert report.merge(merged, gamma, "machine: D").index("## gamma") < with_gamma.index(
        "## Notes"
    )
    again = report.merge(
        merged, new, "machine: C"
    )  # a later run of the same section replaces that paragraph
    assert "Section beta: machine: C" in again and "Section beta: machine: B" not in again
    assert "machine: A" in again.split("## ")[0] and again.count("## beta") == 1


def test_cudnn_flags_are_restored_after_the_block_even_when_it_raises():
    from benchmarks.cuda import cudnn_flags

    cudnn = torch.backends.cudnn
    before = (cudnn.allow_tf32, cudnn.benchmark)
    with cudnn_flags(allow_tf32=not before[0], benchmark=not before[1]):
        assert (cudnn.allow_tf32, cudnn.benchmark) == (not before[0], not before[1])
    assert (cudnn.allow_tf32, cudnn.benchmark) == before
    with pytest.raises(RuntimeError, match="inside"):
        with cudnn_flags(benchmark=not before[1]):
            raise RuntimeError("inside")
    assert (cudnn.allow_tf32, cudnn.benchmark) == before


# ----------------------------------------------------------------------------- the port itself
@needs_port
def test_adelaidet_postprocess_baseline_equals_the_port(port):
    mods, model = port
    cate, mask_out, padded = bl.synthetic_solov2_outputs(
        120, size=(128, 192), num_objects=12, seed=1
    )
    with torch.no_grad():
        ref = adelaidet_port.postprocess(mods, model, cate, mask_out, padded)
        cfg = {
            "score_thr": model.score_threshold,
            "mask_thr": model.mask_threshold,
            "nms_pre": model.max_before_nms,
            "update_thr": model.update_threshold,
            "max_per_img": model.max_per_img,
            "sigma": model.nms_sigma,
        }
        masks, scores, labels = bl.adelaidet_postprocess(cate, mask_out, padded, padded, cfg)
    assert len(ref) > 10
    assert (
        torch.equal(ref.pred_masks, masks)
        and torch.equal(ref.scores, scores)
        and torch.equal(ref.pred_classes, labels)
    )


@needs_port
def test_adelaidet_target_loops_baseline_equals_the_port(port):
    """Equal where the image sides are multiples of 4 (every benchmark size): there the port's
    cv2 resize of the mask and the baseline's bilinear resize give the same pixels."""
    mods, model = port
    h, w = 96, 160
    masks, classes = bl.random_instances(2, 7, h, w, seed=5)
    masks[1][3] = False  # an empty instance
    boxes = bl.boxes_of(masks)
    ranges = [(1, 24), (12, 48), (24, 96), (48, 192), (96, 2048)]
    size = (h // 4, w // 4)
    ref = bl.adelaidet_targets(masks, classes, boxes, [size] * 5, ranges=ranges)
    scale_ranges, model.scale_ranges = model.scale_ranges, ranges
    try:
        ins, cate, _, order = adelaidet_port.targets(
            model,
            [adelaidet_port.gt_instances(m, c, b) for m, c, b in zip(masks, classes, boxes)],
            size,
        )
    finally:
        model.scale_ranges = scale_ranges
    n = 0
    for level, (labels, entries, mask_targets) in enumerate(ref):
        assert torch.equal(labels, torch.stack([cate[b][level] for b in range(2)]))
        assert [e[2] for e in entries] == [c for b in range(2) for c in order[b][level]]
        assert torch.equal(mask_targets, torch.cat([ins[b][level] for b in range(2)]).float())
        n += len(entries)
    assert n > 10


@needs_port
def test_one_matmul_nms_baseline_equals_the_port(port):
    mods, _ = port
    g = torch.Generator().manual_seed(0)
    masks = bl.random_instances(1, 40, 30, 44, seed=4)[0][0]
    labels = torch.randint(0, 6, (40,), generator=g)
    scores = torch.rand(40, generator=g).sort(descending=True).values
    ref = mods.utils.matrix_nms(
        labels, masks, masks.flatten(1).sum(1).float(), scores, sigma=2.0, kernel="gaussian"
    )
    torch.testing.assert_close(bl.one_matmul_nms(masks, labels, scores), ref, atol=1e-6, rtol=0)


@needs_port
def test_solo_d2_twin_of_the_port_has_the_same_head_outputs(port):
    """The counts section's two models: the port's weights converted into solo_d2's recipe
    config give the same head outputs."""
    _, model = port
    ours = adelaidet_port.solo_d2_twin(model)
    image = torch.randint(
        0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        feats = model.backbone(model.preprocess_image([{"image": image}]).tensor)
        cate, kernels = model.ins_head(
            model.split_feats([feats[f] for f in model.instance_in_features])
        )
        mask = model.mask_head([feats[f] for f in model.mask_in_features])
        cate2, mask_outputs = ours._head_outputs(ours.preprocess_image([{"image": image}]))
    for a, b in zip(cate, cate2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for k, (k2, m2) in zip(kernels, mask_outputs):
        torch.testing.assert_close(k, k2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mask, m2, atol=1e-5, rtol=1e-5)


def test_port_loader_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv(adelaidet_port.ENV, raising=False)
    with pytest.raises(adelaidet_port.PortNotFound, match=adelaidet_port.ENV):
        adelaidet_port.adelaidet_root()
    with pytest.raises(adelaidet_port.PortNotFound, match="not an AdelaiDet checkout"):
        adelaidet_port.adelaidet_root(str(tmp_path))


def test_counts_section_without_a_checkout_says_not_measured(monkeypatch):
    from benchmarks.runner import bench_counts

    monkeypatch.delenv(adelaidet_port.ENV, raising=False)
    rows, results = bench_counts(quick=True)
    assert (
        rows == [("op and sync counts", f"not measured: set {adelaidet_port.ENV}", "", "")]
        and results == {}
    )
