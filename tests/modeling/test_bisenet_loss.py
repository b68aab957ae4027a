"""OHEM / plain cross entropy of BiSeNet on inputs whose per-pixel losses are known."""

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from solo_d2.modeling.bisenet.loss import cross_entropy, ohem_cross_entropy, seg_loss

THRESH_LOSS = -math.log(0.7)


def logits_for(p_true, targets, num_classes=3):
    """Logits [1, K, 1, P] whose softmax gives probability ``p_true`` to each pixel's target.

    The remaining mass is spread evenly, so the CE loss of pixel i is exactly -log(p_true[i]).
    """
    p_true = torch.as_tensor(p_true, dtype=torch.float64)
    probs = ((1 - p_true) / (num_classes - 1)).unsqueeze(0).repeat(num_classes, 1)
    t = targets.clamp(max=num_classes - 1)
    probs[t, torch.arange(len(t))] = p_true
    return probs.log().float().view(1, num_classes, 1, -1)


def test_ohem_keeps_only_hard_pixels_when_enough():
    # 30 hard pixels (p=0.5, loss 0.693 > 0.357) and 70 easy ones (p=0.9); n_min = 100 // 16 = 6
    p = torch.tensor([0.5] * 30 + [0.9] * 70)
    targets = torch.randint(0, 3, (100,))
    loss = ohem_cross_entropy(logits_for(p, targets), targets.view(1, 1, -1))
    assert loss.item() == pytest.approx(-math.log(0.5), rel=1e-5)


def test_ohem_min_kept_topk_when_few_hard():
    # 2 hard pixels and 158 easy ones with distinct losses: n_min = 160 // 16 = 10 must be kept
    easy = torch.linspace(0.99, 0.72, 158)
    p = torch.cat([torch.tensor([0.1, 0.2]), easy])
    assert int((-p.log() > THRESH_LOSS).sum()) == 2
    targets = torch.randint(0, 3, (160,))
    loss = ohem_cross_entropy(logits_for(p, targets), targets.view(1, 1, -1))
    expected = sorted((-p.double().log()).tolist(), reverse=True)[:10]
    assert loss.item() == pytest.approx(sum(expected) / 10, rel=1e-5)


def test_ohem_min_kept_divisor_zero_keeps_every_valid_pixel():
    # a divisor of 0 (or less) is read as 1: n_min = all valid pixels, so no pixel is hard and all
    # are kept (plain mean CE) instead of a division by zero
    p = torch.linspace(0.95, 0.75, 40)
    targets = torch.randint(0, 3, (40,))
    for divisor in (0, 1):
        loss = ohem_cross_entropy(
            logits_for(p, targets), targets.view(1, 1, -1), min_kept_divisor=divisor
        )
        assert loss.item() == pytest.approx((-p.double().log()).mean().item(), rel=1e-5)


def test_ohem_ignore_pixels_never_counted():
    p = torch.cat(
        [torch.tensor([0.3] * 5), torch.linspace(0.99, 0.8, 59)]
    )  # 64 valid: n_min = 4 < 5 hard
    targets = torch.randint(0, 3, (64,))
    base = ohem_cross_entropy(logits_for(p, targets), targets.view(1, 1, -1))
    # append 960 ignored pixels whose logits are terrible:
    # neither their loss nor their count may matter
    p_ign = torch.cat([p, torch.full((960,), 0.001)])
    t_ign = torch.cat([targets, torch.full((960,), 255)])
    logits = logits_for(p_ign, t_ign).requires_grad_(True)
    loss = ohem_cross_entropy(logits, t_ign.view(1, 1, -1))
    assert loss.item() == pytest.approx(base.item(), rel=1e-6)
    assert loss.item() == pytest.approx(-math.log(0.3), rel=1e-5)
    loss.backward()
    grad_per_pixel = logits.grad.abs().sum(dim=1).flatten()
    kept = torch.zeros(1024, dtype=torch.bool)
    kept[:5] = True
    assert torch.all(grad_per_pixel[kept] > 0) and torch.all(grad_per_pixel[~kept] == 0)


def test_ohem_minimum_with_ignored_majority():
    # 32 valid easy pixels among 512 -> n_min = 2 counted on valid pixels only
    p = torch.cat([torch.linspace(0.99, 0.9, 32), torch.full((480,), 0.01)])
    targets = torch.cat([torch.randint(0, 3, (32,)), torch.full((480,), 255)])
    loss = ohem_cross_entropy(logits_for(p, targets), targets.view(1, 1, -1))
    expected = sorted((-p[:32].double().log()).tolist(), reverse=True)[:2]
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_all_ignored_is_zero_with_grad():
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    targets = torch.full((2, 8, 8), 255)
    for fn in (ohem_cross_entropy, cross_entropy):
        loss = fn(logits, targets)
        loss.backward()
        assert loss.item() == 0.0


def test_plain_ce_matches_torch_and_upsamples():
    logits = torch.randn(2, 5, 4, 6)
    targets = torch.randint(0, 5, (2, 16, 24))
    targets[:, :3] = 255
    up = F.interpolate(logits, size=(16, 24), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, targets, ignore_index=255)
    assert seg_loss(logits, targets, loss_type="ce").item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_bad_options_raise():
    logits, targets = torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="LOSS_TYPE"):
        seg_loss(logits, targets, loss_type="focal")
    with pytest.raises(ValueError, match="OHEM_THRESH"):
        ohem_cross_entropy(logits, targets, thresh=1.5)


def _worker(rank, world, init_file, logits, targets, loss_type, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    half = logits.shape[0] // world
    x = logits[rank * half : (rank + 1) * half].clone().requires_grad_(True)
    loss = seg_loss(x, targets[rank * half : (rank + 1) * half], loss_type=loss_type)
    loss.backward()
    # DDP averages parameter gradients over workers, i.e. it optimizes mean_w(loss_w):
    # the gradient of that objective w.r.t. this worker's logits is grad / world.
    out[rank * half : (rank + 1) * half] = x.grad / world
    dist.destroy_process_group()


@pytest.mark.parametrize("loss_type", ["ce", "ohem"])
def test_distributed_normalizer_matches_combined_batch(loss_type):
    """2 gloo workers, each half of the batch, averaged grads == one process on the whole batch.

    The halves have very different numbers of valid (and hard) pixels, so a per-worker
    normalizer would give a different gradient. For OHEM, both halves have more hard
    pixels than their minimum, so the selection is identical too.
    """
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 16) * 3
    targets = torch.randint(0, 4, (2, 16, 16))
    targets[1, :12] = 255  # worker 1 has 64 valid pixels, worker 0 has 256
    full = logits.clone().requires_grad_(True)
    seg_loss(full, targets, loss_type=loss_type).backward()
    out = torch.zeros_like(logits).share_memory_()
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(
            _worker, args=(2, os.path.join(d, "init"), logits, targets, loss_type, out), nprocs=2
        )
    assert torch.allclose(out, full.grad, atol=1e-6)
