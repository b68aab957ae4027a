"""`make demo` gives the same result twice: the demo configs fix ``SEED``, and two trainings
with one seed through ``tools/train_net.py``'s set-up (detectron2's ``default_setup`` seeds
torch, numpy and random with ``SEED``; the sampler, the data-loader workers' augmentation
RNGs and the weight initialization follow from it) give bit-identical losses and weights.

Each run is a few iterations of the demo config at a small input size, with the demo's
random augmentations (scale, crop, flip, colour jitter) and two data-loader workers (the
SOLOv2 run with aspect-ratio grouping). A run with another seed must differ, so the
comparison would see a seed that is not applied."""

import importlib.util

import pytest
import torch

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.usefixtures("single_thread")

DEMOS = {
    "bisenet": (
        "configs/Synthetic/BiSeNetV1_demo.yaml",
        [
            "INPUT.MIN_SIZE_TRAIN",
            "(128,)",
            "INPUT.MAX_SIZE_TRAIN",
            "256",
            "INPUT.CROP.SIZE",
            "(128, 128)",
        ],
    ),
    "solov2": (
        "configs/Synthetic/SOLOv2_demo.yaml",
        [
            "INPUT.MIN_SIZE_TRAIN",
            "(128, 144)",
            "INPUT.MAX_SIZE_TRAIN",
            "192",
            "DATALOADER.ASPECT_RATIO_GROUPING",
            "True",
            "SOLVER.STEPS",
            "(2,)",
        ],
    ),
}
SHORT = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "3",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "DATALOADER.NUM_WORKERS",
    "2",
    "DATASETS.TEST",
    "()",
]


def _train_net():
    """``tools/train_net.py`` as a module (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(
        "solo_d2_tools_train_net_seed", REPO_ROOT / "tools" / "train_net.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(train_net, config, opts, out_dir):
    """Train as ``tools/train_net.py --num-gpus 0`` does (``setup`` then ``Trainer``); return
    every iteration's losses and the final weights."""
    args = train_net.get_parser().parse_args(
        [
            "--config-file",
            str(REPO_ROOT / config),
            "--num-gpus",
            "0",
            *opts,
            "OUTPUT_DIR",
            str(out_dir),
        ]
    )
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = {
        k: [v for v, _ in h.values()]
        for k, h in trainer.storage.histories().items()
        if k.startswith(("loss", "total_loss"))
    }
    assert losses and all(len(v) == 3 for v in losses.values()), losses
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_demo_configs_fix_the_seed():
    from solo_d2.engine import setup_cfg

    for config, _ in DEMOS.values():
        assert setup_cfg(str(REPO_ROOT / config)).SEED >= 0, (
            f"{config} sets no SEED: `make demo` would differ run to run"
        )


@pytest.mark.parametrize("demo", sorted(DEMOS))
def test_demo_with_one_seed_trains_bit_identically(
    tmp_path, demo, synthetic_coco, synthetic_cityscapes
):
    config, opts = DEMOS[demo]
    train_net = _train_net()
    seed = ["SEED", "5"]
    first, w_first = _train(train_net, config, opts + SHORT + seed, tmp_path / "a")
    second, w_second = _train(train_net, config, opts + SHORT + seed, tmp_path / "b")
    assert first == second, "two runs with one SEED gave different losses"
    assert w_first.keys() == w_second.keys()
    for k in w_first:
        assert torch.equal(w_first[k], w_second[k]), f"two runs with one SEED gave different {k}"

    other, _ = _train(train_net, config, opts + SHORT + ["SEED", "6"], tmp_path / "c")
    assert other != first, "another SEED gave the same losses: the comparison cannot see the seed"
