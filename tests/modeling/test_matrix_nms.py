"""Matrix NMS against a brute-force double loop and a hand-computed case."""

import math

import pytest
import torch

from solo_d2.modeling.solo.matrix_nms import mask_nms, matrix_nms


def brute_iou(a, b):
    inter = (a & b).sum().item()
    union = (a | b).sum().item()
    return inter / union if union else 0.0


def brute_matrix_nms(masks, labels, scores, kernel, sigma):
    """Paper formula with explicit loops:
    decay_j = min(1, min_{i<j, same class} f(iou)/f(comp_i))."""
    n = len(scores)
    f = (lambda x: math.exp(-sigma * x * x)) if kernel == "gaussian" else (lambda x: 1.0 - x)
    iou = [[brute_iou(masks[i], masks[j]) for j in range(n)] for i in range(n)]
    comp = []
    for i in range(n):
        c = 0.0
        for k in range(i):
            if labels[k] == labels[i]:
                c = max(c, iou[k][i])
        comp.append(c)
    out = []
    for j in range(n):
        d = 1.0
        for i in range(j):
            if labels[i] == labels[j]:
                # exact duplicates (comp = 1) make the linear f(comp) 0: guarded like the code
                d = min(d, f(iou[i][j]) / max(f(comp[i]), 1e-6))
        out.append(scores[j] * d)
    return torch.tensor(out)


def random_case(seed, n=40, h=24, w=24, classes=3):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    # overlapping rectangles, some duplicated with jitter so strong suppression occurs
    for k in range(n):
        if k >= 2 and torch.rand(1, generator=g).item() < 0.4:
            src = int(torch.randint(0, k, (1,), generator=g))
            masks[k] = masks[src].roll(int(torch.randint(-2, 3, (1,), generator=g)), dims=1)
            continue
        y0, x0 = torch.randint(0, h - 4, (2,), generator=g).tolist()
        y1 = y0 + int(torch.randint(3, h - y0 + 1, (1,), generator=g))
        x1 = x0 + int(torch.randint(3, w - x0 + 1, (1,), generator=g))
        masks[k, y0:y1, x0:x1] = True
    labels = torch.randint(0, classes, (n,), generator=g)
    scores = torch.rand(n, generator=g).sort(descending=True).values
    return masks, labels, scores


@pytest.mark.parametrize("kernel,sigma", [("gaussian", 2.0), ("gaussian", 0.5), ("linear", 2.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(kernel, sigma, seed):
    masks, labels, scores = random_case(seed)
    got = matrix_nms(masks, labels, scores, kernel=kernel, sigma=sigma)
    ref = brute_matrix_nms(masks, labels.tolist(), scores.tolist(), kernel, sigma)
    assert got.shape == scores.shape
    assert torch.allclose(got, ref.to(got.dtype), atol=1e-6, rtol=0)
    assert (got <= scores + 1e-7).all()
    assert (got < scores - 1e-3).any()  # the case really suppresses something
    # float masks and a precomputed area give the same result
    got2 = matrix_nms(
        masks.float(),
        labels,
        scores,
        kernel=kernel,
        sigma=sigma,
        mask_area=masks.flatten(1).sum(1).float(),
    )
    assert torch.allclose(got, got2, atol=1e-7)


def test_hand_computed_tiny_case():
    a = torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)  # IoU(a, b) = 3/4
    c = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.bool)  # IoU(a, c) = 1/6, IoU(b, c) = 0
    masks = torch.stack([a, b, c]).view(3, 1, 6)
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 0])
    out = matrix_nms(masks, labels, scores, kernel="gaussian", sigma=2.0)
    # b: exp(-2 * 0.75^2); c: exp(-2 * (1/6)^2) (b's compensated row gives exp(+1.125) > 1)
    expected = torch.tensor([0.9, 0.8 * math.exp(-1.125), 0.7 * math.exp(-2 / 36)])
    assert torch.allclose(out, expected, atol=1e-6)
    out = matrix_nms(masks, labels, scores, kernel="linear")
    assert torch.allclose(out, torch.tensor([0.9, 0.8 * 0.25, 0.7 * 5 / 6]), atol=1e-6)
    # different classes never suppress each other
    out = matrix_nms(masks, torch.tensor([0, 1, 2]), scores)
    assert torch.allclose(out, scores)


def test_empty_and_bad_kernel():
    out = matrix_nms(torch.zeros(0, 4, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert out.shape == (0,)
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(
            torch.ones(1, 2, 2), torch.zeros(1, dtype=torch.long), torch.ones(1), kernel="box"
        )


def brute_hard_nms(masks, labels, thr):
    keep = []
    for j in range(len(masks)):
        if all(not (labels[i] == labels[j] and brute_iou(masks[i], masks[j]) > thr) for i in keep):
            keep.append(j)
    return keep


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_mask_nms_matches_greedy(seed, thr):
    masks, labels, scores = random_case(seed)
    got = mask_nms(masks, labels, scores, iou_threshold=thr).tolist()
    ref = brute_hard_nms(masks, labels.tolist(), thr)
    assert got == ref
    assert len(ref) < len(scores)
    assert mask_nms(masks[:0], labels[:0], scores[:0]).shape == (0,)


def test_same_class_iou_matrix_against_pairwise_sums():
    # IoU of every same-class pair from pixel counts, 0 across classes, 0 for empty unions
    from solo_d2.modeling.solo.matrix_nms import same_class_iou_matrix

    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 2])
    masks = torch.rand(7, 12, 10, generator=g) > 0.6
    masks[0] = masks[5] = False  # an empty pair of one class: zero union
    masks[6] = False
    masks[6, 0, 0] = masks[2, 0, 0] = True  # one pixel in common
    iou = same_class_iou_matrix(masks, labels)
    for i in range(7):
        for j in range(7):
            inter, union = (masks[i] & masks[j]).sum().item(), (masks[i] | masks[j]).sum().item()
            expected = inter / union if labels[i] == labels[j] and union else 0.0
            assert iou[i, j].item() == pytest.approx(expected, abs=1e-7), (i, j)
