"""Host-device synchronizations of SOLO inference and training, counted exactly on the CPU
(``OpCounter``, as a GPU would see them): post-processing reads back the same few values for any
number of candidates, and a training step's read-backs do not grow with the instances."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import ImageList

from benchmarks.baselines import synthetic_solov2_outputs, training_batch
from benchmarks.counting import OpCounter
from solo_d2.checkpoint.core import build_cfg

SMALL = [
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "MODEL.FPN.OUT_CHANNELS",
    "64",
    "MODEL.SOLO.INS_CHANNELS",
    "64",
    "MODEL.SOLO.NUM_CONVS",
    "1",
]


@pytest.fixture(scope="module")
def solov2():
    torch.manual_seed(0)
    cfg = build_cfg("SOLOv2/R50_3x.yaml", SMALL)
    return cfg, build_model(cfg)


def _postprocess_counts(model, num_candidates, size=(256, 384)):
    cate, mask_out, padded = synthetic_solov2_outputs(num_candidates, size=size, num_objects=20)
    images = ImageList(torch.empty(1, 3, *padded), [tuple(padded)])
    inputs = [
        {"height": padded[0] + 37, "width": padded[1] - 51}
    ]  # another output size: two resizes
    model.eval()
    with torch.no_grad(), OpCounter() as c:
        out = model.inference(inputs, images, cate, mask_out)[0]["instances"]
    return c, out


def test_solov2_postprocessing_reads_back_three_values_for_any_number_of_candidates(solov2):
    _, model = solov2
    counts = {}
    for n in (40, 300, 1000):
        c, out = _postprocess_counts(model, n)
        counts[n] = (c.syncs, c.kernel_ops)
        assert len(out) > 0
    # candidate cells, candidates (two nonzero), number of detections (one .item())
    assert {s for s, _ in counts.values()} == {3}, counts
    assert len({k for _, k in counts.values()}) == 1, counts  # the same ops for any candidate count
    model.max_per_img = 5  # fewer kept than candidates: same counts
    assert _postprocess_counts(model, 300)[0].syncs == 3
    model.max_per_img = 100


def test_training_step_syncs_do_not_grow_with_instances(solov2):
    cfg, model = solov2
    model.train()
    syncs = {}
    for n in (3, 12):
        batch = training_batch(cfg, 160, 224, num_instances=n, batch=2)
        images = model.preprocess_image(batch)
        cate, mask_out = model._head_outputs(images)
        with OpCounter() as c:
            losses = model.losses(batch, images, cate, mask_out)
            sum(losses.values()).backward()
        syncs[n] = c.syncs
    assert syncs[3] == syncs[12] <= 20, syncs
