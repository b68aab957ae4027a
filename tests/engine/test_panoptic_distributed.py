"""SOLOPanoptic on 2 CPU gloo workers: the losses and gradients equal one process on the whole batch
(the SOLO positives and the semantic loss's labelled pixels are averaged over workers)."""

import pytest
import torch
from detectron2.modeling import build_model

from tests.helpers import dist_solo_workers as W


@pytest.mark.parametrize("split", [(0, 1), (1, 2)])  # image 2 has no instances
def test_two_workers_match_one_process(tmp_path, split):
    torch.manual_seed(0)
    state = tmp_path / "panoptic.pth"
    torch.save(build_model(W.tiny_cfg(*W.PANOPTIC_OPTS)).state_dict(), state)
    W.launch_cpu_workers(W.panoptic_grads_worker, str(state), str(tmp_path), split)
    (loss0, grads0), (loss1, grads1) = [
        torch.load(tmp_path / f"panoptic_rank{r}.pt") for r in range(2)
    ]
    model = build_model(W.tiny_cfg(*W.PANOPTIC_OPTS))
    model.load_state_dict(torch.load(state))
    with W.native_conv():
        losses, grads = W.loss_and_grads(model.train(), [W.make_panoptic_input(i) for i in split])
    assert set(losses) == {"loss_cate", "loss_mask", "loss_sem_seg"}
    for name, value in losses.items():
        assert (loss0[name] + loss1[name]) / 2 == pytest.approx(value, rel=1e-5, abs=1e-7), name
    for name, g in grads.items():
        assert torch.equal(grads0[name], grads1[name]), name
        torch.testing.assert_close(grads0[name], g, rtol=0, atol=1e-5, msg=name)
