"""The solo_d2 trainer: detectron2's ``DefaultTrainer`` with the solo_d2 recipes.

Differences from ``DefaultTrainer``:

- evaluators come from :func:`solo_d2.evaluation.build_evaluator` (chosen by the
  dataset's ``evaluator_type``: COCO, Cityscapes instance/semantic, SemSeg);
- the train loader uses :func:`solo_d2.data.augmentation.build_augmentation`
  (random scale, crop, flip, color jitter);
- the optimizer applies ``SOLVER.HEAD_LR_MULTIPLIER`` to parameters named by
  ``SOLVER.HEAD_PARAM_PREFIXES`` and separate weight decay for norm layers and biases;
- ``SOLVER.LR_SCHEDULER_NAME: WarmupPolyLR`` is fvcore's polynomial decay with warmup;
- the model is wrapped in ``DistributedDataParallel`` for CPU (gloo) workers too
  (detectron2 v0.6 passes CUDA ``device_ids`` unconditionally), and converted to
  ``SyncBatchNorm`` (``NaiveSyncBatchNorm`` on CPU workers) when ``MODEL.SYNC_BN`` is set and
  there are several workers.
"""
import logging
import weakref
from collections import defaultdict
from typing import Any, Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from torch.nn.parallel import DistributedDataParallel

from ..data.augmentation import build_augmentation

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)


def _is_norm(module: torch.nn.Module) -> bool:
    # detectron2's FrozenBatchNorm2d / NaiveSyncBatchNorm are not all _BatchNorm subclasses
    return isinstance(module, _NORM_TYPES) or "BatchNorm" in type(module).__name__


def build_optimizer_param_groups(cfg, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups with per-parameter lr and weight decay, merged by identical settings.

    lr = SOLVER.BASE_LR * (SOLVER.HEAD_LR_MULTIPLIER if the name starts with one of
    SOLVER.HEAD_PARAM_PREFIXES) * (SOLVER.BIAS_LR_FACTOR for biases);
    weight decay = SOLVER.WEIGHT_DECAY_NORM for norm layers, SOLVER.WEIGHT_DECAY_BIAS
    (default SOLVER.WEIGHT_DECAY) for biases, SOLVER.WEIGHT_DECAY otherwise.
    """
    s = cfg.SOLVER
    prefixes = tuple(s.HEAD_PARAM_PREFIXES)
    wd_bias = s.WEIGHT_DECAY if s.WEIGHT_DECAY_BIAS is None else s.WEIGHT_DECAY_BIAS
    groups: Dict[tuple, List[torch.nn.Parameter]] = defaultdict(list)
    seen = set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{pname}" if module_name else pname
            lr = s.BASE_LR * (s.HEAD_LR_MULTIPLIER if prefixes and full.startswith(prefixes) else 1.0)
            if _is_norm(module):
                wd = s.WEIGHT_DECAY_NORM
            elif pname == "bias":
                wd, lr = wd_bias, lr * s.BIAS_LR_FACTOR
            else:
                wd = s.WEIGHT_DECAY
            groups[(lr, wd)].append(p)
    if prefixes and s.HEAD_LR_MULTIPLIER != 1.0:
        names = [n for n, _ in model.named_parameters()]
        for pre in prefixes:
            if not any(n.startswith(pre) for n in names):
                raise ValueError(f"SOLVER.HEAD_PARAM_PREFIXES entry {pre!r} matches no parameter of the model")
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def convert_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``MODEL.SYNC_BN``: BatchNorm statistics computed over all workers.

    CUDA models get ``torch.nn.SyncBatchNorm``. torch's SyncBatchNorm refuses CPU tensors,
    so on CPU (gloo) workers each ``nn.BatchNorm2d`` becomes detectron2's
    ``NaiveSyncBatchNorm`` (an all_reduce of the batch mean and mean of squares), with its
    weights and running statistics copied.
    """
    if any(p.is_cuda for p in model.parameters()):
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _to_naive_sync_bn(model)
    return model


def _to_naive_sync_bn(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            sync = NaiveSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            _to_naive_sync_bn(child)


def _create_ddp_model(model: torch.nn.Module) -> torch.nn.Module:
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    return DistributedDataParallel(
        model, device_ids=[comm.get_local_rank()] if on_cuda else None, broadcast_buffers=False
    )


def _maybe_add_gradient_clipping(cfg, optim_cls):
    """detectron2's per-parameter clipping, plus ``CLIP_TYPE: full_model``: one clip on the
    total gradient norm of all parameters (the SOLO recipe's clip at norm 35)."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
        return maybe_add_gradient_clipping(cfg, optim_cls)
    max_norm, norm_type = clip.CLIP_VALUE, clip.NORM_TYPE

    class FullModelGradientClipping(optim_cls):
        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    return FullModelGradientClipping


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        # Same construction order as DefaultTrainer.__init__ (v0.6 and main), with a
        # DDP wrapper that also works on CPU workers.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _create_ddp_model(model)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.MODEL.SYNC_BN and comm.get_world_size() > 1:
            model = convert_sync_batchnorm(model)
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = DatasetMapper(cfg, is_train=True, augmentations=build_augmentation(cfg, True))
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_optimizer(cls, cfg, model):
        groups = build_optimizer_param_groups(cfg, model)
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            opt_cls = _maybe_add_gradient_clipping(cfg, torch.optim.SGD)
            return opt_cls(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
        if name == "ADAMW":
            opt_cls = _maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
            return opt_cls(groups, lr=cfg.SOLVER.BASE_LR)
        raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW', got {cfg.SOLVER.OPTIMIZER!r}")

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
            return d2_build_lr_scheduler(cfg, optimizer)
        s = cfg.SOLVER
        sched = WarmupParamScheduler(
            PolynomialDecayParamScheduler(1.0, s.POLY_LR_POWER),
            s.WARMUP_FACTOR,
            min(s.WARMUP_ITERS / s.MAX_ITER, 1.0),
            s.WARMUP_METHOD,
        )
        return LRMultiplier(optimizer, multiplier=sched, max_iter=s.MAX_ITER)


def setup_cfg(config_file: str, opts=(), *, device=None):
    """Build a frozen solo_d2 config from a YAML file and ``KEY VALUE`` overrides.

    Without CUDA the device becomes ``cpu`` and AMP (CUDA-only in detectron2's
    ``AMPTrainer``) is switched off with a warning.
    """
    from ..config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if device is not None:
        cfg.MODEL.DEVICE = device
    elif not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"
    if not cfg.MODEL.DEVICE.startswith("cuda") and cfg.SOLVER.AMP.ENABLED:
        logger.warning("SOLVER.AMP.ENABLED needs CUDA; training in fp32 on %s", cfg.MODEL.DEVICE)
        cfg.SOLVER.AMP.ENABLED = False
    cfg.freeze()
    return cfg
