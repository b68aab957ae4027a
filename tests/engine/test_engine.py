import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import solo_d2
from solo_d2.data.augmentation import RandomScale, build_augmentation
from solo_d2.engine import Trainer, build_optimizer_param_groups, launch
from tests.helpers import REPO_ROOT

ROOT = str(REPO_ROOT)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.sem_seg_head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.GroupNorm(1, 2))


def _cfg(**solver):
    cfg = solo_d2.get_cfg()
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WEIGHT_DECAY = 5e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def _settings(groups, model):
    by_param = {}
    for g in groups:
        for p in g["params"]:
            by_param[id(p)] = (g["lr"], g["weight_decay"])
    return {n: by_param[id(p)] for n, p in model.named_parameters()}


def test_param_groups_head_lr_and_no_decay_on_norm_and_bias():
    model = _Toy()
    cfg = _cfg(
        HEAD_LR_MULTIPLIER=10.0, HEAD_PARAM_PREFIXES=["sem_seg_head."], WEIGHT_DECAY_BIAS=0.0
    )
    s = _settings(build_optimizer_param_groups(cfg, model), model)
    assert s["backbone.0.weight"] == (0.01, 5e-4)
    assert s["backbone.0.bias"] == (0.01, 0.0)
    assert s["backbone.1.weight"] == (0.01, 0.0)  # BN
    assert s["sem_seg_head.0.weight"] == (pytest.approx(0.1), 5e-4)
    assert s["sem_seg_head.0.bias"] == (pytest.approx(0.1), 0.0)
    assert s["sem_seg_head.1.weight"] == (pytest.approx(0.1), 0.0)  # GN
    # every trainable parameter is in exactly one group, groups are merged by settings
    groups = build_optimizer_param_groups(cfg, model)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(groups) == len({(g["lr"], g["weight_decay"]) for g in groups})


def test_param_groups_bias_decay_defaults_to_weight_decay_and_bad_prefix_is_named():
    model = _Toy()
    s = _settings(build_optimizer_param_groups(_cfg(), model), model)
    assert s["backbone.0.bias"] == (0.01, 5e-4)
    with pytest.raises(ValueError, match="head_typo"):
        build_optimizer_param_groups(
            _cfg(HEAD_LR_MULTIPLIER=10.0, HEAD_PARAM_PREFIXES=["head_typo."]), model
        )


def test_warmup_poly_lr_follows_the_formula():
    cfg = _cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR",
        MAX_ITER=100,
        WARMUP_ITERS=10,
        WARMUP_FACTOR=0.1,
        WARMUP_METHOD="linear",
        POLY_LR_POWER=0.9,
        HEAD_LR_MULTIPLIER=10.0,
        HEAD_PARAM_PREFIXES=["sem_seg_head."],
    )
    model = _Toy()
    opt = Trainer.build_optimizer(cfg, model)
    sched = Trainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    base = [g["initial_lr"] for g in opt.param_groups]
    assert sorted(set(np.round(base, 6))) == [0.01, 0.1]

    def poly(it):
        return (1 - it / 100) ** 0.9

    for it in (0, 5, 10, 50, 99):
        # detectron2/fvcore warmup: linear from WARMUP_FACTOR * poly(0) to poly(end of warmup)
        a = it / 10
        expected = (0.1 * poly(0) * (1 - a) + poly(10) * a) if it < 10 else poly(it)
        for lr, b in zip(lrs[it], base):
            assert lr == pytest.approx(b * expected, rel=1e-6)


def test_augmentation_train_and_test():
    cfg = solo_d2.get_cfg()
    cfg.INPUT.RANDOM_SCALE = [0.5, 2.0]
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [64, 64]
    cfg.INPUT.COLOR_JITTER = 0.4
    augs = build_augmentation(cfg, True)
    names = [type(a).__name__ for a in augs]
    assert names[0] == "RandomScale" and "RandomCrop" in names and "RandomFlip" in names
    assert {"RandomBrightness", "RandomContrast", "RandomSaturation"} <= set(names)
    img = np.random.RandomState(0).randint(0, 255, (100, 200, 3)).astype(np.uint8)
    np.random.seed(0)
    scale = RandomScale(0.5, 2.0)
    for _ in range(20):
        t = scale.get_transform(img)
        h, w = t.apply_image(img).shape[:2]
        assert 50 <= h <= 200 and abs(w / h - 2.0) < 0.05
    cfg.INPUT.MIN_SIZE_TEST = 0
    assert build_augmentation(cfg, False) == []
    cfg.INPUT.RANDOM_SCALE = [2.0, 1.0]
    with pytest.raises(ValueError, match="RANDOM_SCALE"):
        build_augmentation(cfg, True)


def test_cpu_launch_sets_up_global_and_local_groups(tmp_path):
    from tests.helpers.dist_workers import report_ranks

    launch(report_ranks, 0, num_cpu_workers=2, dist_url="auto", args=(str(tmp_path),))
    rows = sorted((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert rows == ["0 0 2 2 1.0", "1 1 2 2 1.0"]


def test_crashing_worker_fails_the_launch_without_hanging():
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from solo_d2.engine import launch\n"
        "from tests.helpers.dist_workers import crash_on_rank1\n"
        "launch(crash_on_rank1, 0, num_cpu_workers=2, dist_url='auto')\n" % ROOT
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "boom on rank 1" in proc.stderr


def test_num_gpus_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(RuntimeError, match="num-cpu-workers"):
        launch(lambda: None, 2)


def test_full_model_gradient_clipping_bounds_the_total_norm():
    cfg = _cfg(BASE_LR=1.0, MOMENTUM=0.0, WEIGHT_DECAY=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    model = _Toy()
    before = [p.detach().clone() for p in model.parameters()]
    opt = Trainer.build_optimizer(cfg, model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    opt.step()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert step.norm().item() == pytest.approx(
        0.5, rel=1e-4
    )  # lr 1, no momentum: step == clipped grad


def test_optimizer_choice():
    model = _Toy()
    assert isinstance(Trainer.build_optimizer(_cfg(OPTIMIZER="ADAMW"), model), torch.optim.AdamW)
    assert isinstance(Trainer.build_optimizer(_cfg(), model), torch.optim.SGD)
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        Trainer.build_optimizer(_cfg(OPTIMIZER="LION"), model)
