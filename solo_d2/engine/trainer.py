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
  there are several workers;
- before anything is built, :func:`check_num_classes` compares ``MODEL.SOLO.NUM_CLASSES``
  (SOLO family) / ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` (semantic models) with the classes of
  ``DATASETS.TRAIN`` and fails naming the key and both counts;
- the loaders use :class:`solo_d2.data.mapper.FileNamingDatasetMapper` (a truncated or
  missing image fails naming the file);
- checkpoints hold the optimizer state (detectron2 v0.6's ``DefaultTrainer`` drops it);
- resuming (``resume_or_load(resume=True)``) at iteration k:
  ``metrics.json`` is rewritten (atomically) without the records of iterations >= k that
  the resumed run redoes; and the training sampler continues where the interrupted run
  was (its first ``k * IMS_PER_BATCH`` samples are skipped), so with ``SEED >= 0`` (the
  sampler's seed) a resumed run reads the same images in the same order as an
  uninterrupted one (exactly with ``DATALOADER.ASPECT_RATIO_GROUPING: False`` or when all
  images have one orientation; aspect-ratio grouping batches from a buffer that is not
  checkpointed, so with it the order continues only approximately). Random augmentations draw from
  the data-loader workers' own RNGs, which are not checkpointed, so they are not replayed.
- non-finite losses stop training with detectron2's ``FloatingPointError``
  ("Loss became infinite or NaN at iteration=k", with the loss dict), raised by
  ``SimpleTrainer``/``AMPTrainer`` before the optimizer step.
- checkpoints hold the training dataset's class names, colors and id maps (key
  ``dataset_metadata``, :mod:`.model_metadata`), which evaluation, prediction and export read;
- a training set without any (non-crowd) instance is refused for instance and panoptic models
  (:func:`check_training_instances`; ``DATALOADER.ALLOW_NO_INSTANCES True`` allows it);
- the final evaluation runs only when training reached ``SOLVER.MAX_ITER``: Detectron2's
  ``EvalHook`` also evaluates after an exception in the last iteration, printing AP tables of
  a model that never finished (and the crash below them).
"""

import itertools
import json
import logging
import os
from collections import defaultdict
from typing import Any, Dict, List

import torch
from detectron2.config import get_cfg as d2_get_cfg
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from detectron2.utils import comm
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from torch.nn.parallel import DistributedDataParallel

from ..compat import (
    FinishedTrainingEvalHook,
    init_default_trainer,
    inner_trainer,
    json_writers,
    reopen_json_writers,
    restart_data_loader,
    seed_sampler,
    train_loader_from_config,
)
from ..config import get_cfg
from ..data.augmentation import build_augmentation
from ..data.mapper import FileNamingDatasetMapper
from ..data.panoptic import PanopticDatasetMapper
from ..evaluation import build_evaluator as build_solo_evaluator
from ..modeling.solo.panoptic import panoptic_class_counts_checked
from ..utils.io import atomic_write
from .model_metadata import CHECKPOINT_KEY, DatasetMetadataCheckpointable, training_metadata

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
            lr = s.BASE_LR * (
                s.HEAD_LR_MULTIPLIER if prefixes and full.startswith(prefixes) else 1.0
            )
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
                raise ValueError(
                    f"SOLVER.HEAD_PARAM_PREFIXES entry {pre!r} matches no parameter of the model"
                )
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
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
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


def _dataset_class_count(name, attr):
    meta = MetadataCatalog.get(name)
    return len(getattr(meta, attr)) if hasattr(meta, attr) else None


def check_num_classes(cfg) -> None:
    """Fail before training when the model's class count differs from the training data's.

    SOLO family (``MODEL.META_ARCHITECTURE`` containing "SOLO"): ``MODEL.SOLO.NUM_CLASSES``
    must equal ``len(thing_classes)`` of every ``DATASETS.TRAIN`` entry. Semantic models
    (``MODEL.META_ARCHITECTURE`` containing "Segmentor", e.g. ``BiSeNetSegmentor``):
    ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` must equal ``len(stuff_classes)``. A smaller value
    would crash at iteration 0 without naming the key, a larger one would train silently.
    Datasets without that metadata are not checked. Raises ``ValueError`` naming the key,
    the config value, the dataset and its count.
    """
    arch = cfg.MODEL.META_ARCHITECTURE
    if (
        arch == "SOLOPanoptic"
    ):  # thing and stuff counts from the panoptic metadata, names the dataset
        registered = set(DatasetCatalog.list())
        for name in cfg.DATASETS.TRAIN:
            if name in registered:
                panoptic_class_counts_checked(cfg, name)
        return
    if "SOLO" in arch.upper():
        key, value, attr = "MODEL.SOLO.NUM_CLASSES", cfg.MODEL.SOLO.NUM_CLASSES, "thing_classes"
    elif "SEGMENTOR" in arch.upper():
        key, value, attr = (
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "stuff_classes",
        )
    else:
        return
    for name in cfg.DATASETS.TRAIN:
        count = _dataset_class_count(name, attr)
        if count is None:
            logger.warning(
                "Dataset '%s' has no metadata %s; %s=%s is not checked", name, attr, key, value
            )
        elif count != value:
            raise ValueError(
                "{}={} does not match the training dataset '{}', which has {} {} ({}). "
                "Set {} {} (META_ARCHITECTURE {}).".format(
                    key,
                    value,
                    name,
                    count,
                    attr,
                    ", ".join(map(str, getattr(MetadataCatalog.get(name), attr)[:10]))
                    + (", ..." if count > 10 else ""),
                    key,
                    count,
                    arch,
                )
            )


def _instance_count(d, thing_ids) -> int:
    """Non-crowd instances of a dataset dict: COCO ``annotations``, or the thing segments of a
    panoptic dict (``segments_info`` with ``isthing``, or, as Cityscapes panoptic dicts, without
    it: a ``category_id`` among ``thing_ids``)."""
    if "annotations" in d:
        return sum(1 for a in d["annotations"] if not a.get("iscrowd", 0))
    return sum(
        1
        for s in d.get("segments_info", ())
        if s.get("isthing", s.get("category_id") in thing_ids) and not s.get("iscrowd", 0)
    )


def check_training_instances(cfg, dataset_dicts) -> int:
    """Refuse to train an instance or panoptic model (SOLO family) on dataset dicts without any
    non-crowd instance: every loss would say "no object" and the model would learn nothing
    (``loss_mask`` 0, no predictions at evaluation). Raises ``ValueError`` naming
    ``DATASETS.TRAIN`` and the fix, unless ``DATALOADER.ALLOW_NO_INSTANCES``. Semantic models are
    not checked. Returns the number of instances."""
    if "SOLO" not in cfg.MODEL.META_ARCHITECTURE.upper():
        return -1
    thing_ids = set()
    for name in cfg.DATASETS.TRAIN:
        thing_ids.update(
            MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id", {}).values()
        )
    count = sum(_instance_count(d, thing_ids) for d in dataset_dicts)
    if count == 0 and not cfg.DATALOADER.get("ALLOW_NO_INSTANCES", False):
        names = ", ".join("'{}'".format(n) for n in cfg.DATASETS.TRAIN)
        raise ValueError(
            "The training set {} ({} images) has no instance annotation (no non-crowd object "
            "in any image): {} would learn nothing but 'no object'. Check the dataset's "
            "annotations (json 'annotations' with 'segmentation', their image_id and "
            "category_id; see docs/CUSTOM_DATA.md), or set DATALOADER.ALLOW_NO_INSTANCES "
            "True to train on it anyway.".format(
                names, len(dataset_dicts), cfg.MODEL.META_ARCHITECTURE
            )
        )
    return count


class _SkipSampler(torch.utils.data.Sampler):
    """An infinite training sampler without its first ``skip`` indices (those of the
    iterations a resumed run has already done)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, int(skip)

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)


def trim_metrics(path: str, start_iter: int) -> int:
    """Rewrite the ``metrics.json`` at ``path`` without records of ``iteration >= start_iter``.

    Lines that are not JSON objects with an integer ``iteration`` are kept. The file is
    replaced atomically (written to a temporary file, then renamed). Returns the number of
    records dropped (0: the file is left as it is).
    """
    if not os.path.isfile(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if (
                isinstance(rec, dict)
                and isinstance(rec.get("iteration"), int)
                and rec["iteration"] >= start_iter
            ):
                dropped += 1
            elif line.strip():
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        with atomic_write(path, "w") as f:
            f.writelines(kept)
    return dropped


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        check_num_classes(cfg)  # before anything is built
        # DefaultTrainer.__init__ with a DDP wrapper that also works on CPU workers (compat)
        init_default_trainer(
            self,
            cfg,
            wrap_model=_create_ddp_model,
            checkpointables={CHECKPOINT_KEY: DatasetMetadataCheckpointable(training_metadata(cfg))},
        )

    def state_dict(self):
        """The trainer state saved in checkpoints: iteration, hook states (LR scheduler) and the
        optimizer (and AMP grad scaler) state. detectron2 v0.6's ``DefaultTrainer`` saves no
        optimizer state (its checkpoints hold only ``iteration`` and ``hooks``), so a resumed
        run restarted with empty momentum and the initial learning rate for one iteration;
        this is what detectron2 main does. Both methods build on ``TrainerBase``'s, not on
        ``DefaultTrainer``'s: on detectron2 main those already handle ``_trainer`` (the
        optimizer state would be loaded twice, and a checkpoint without it would raise a
        ``KeyError`` instead of the warning below)."""
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = inner_trainer(self).state_dict()
        return ret

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            inner_trainer(self).load_state_dict(state_dict["_trainer"])
        else:
            logger.warning(
                "The checkpoint has no optimizer state (written by detectron2 v0.6's trainer?); "
                "resuming with a fresh optimizer"
            )

    def resume_or_load(self, resume=True):
        """detectron2's ``resume_or_load``; when resuming at iteration k > 0, also drop
        ``metrics.json`` records of iterations >= k and continue the sampler after the
        samples of iterations 0..k-1 (see the module docstring)."""
        super().resume_or_load(resume=resume)
        if not (resume and self.start_iter > 0):
            return
        if comm.is_main_process():
            self._trim_metrics(self.start_iter)
        restart_data_loader(self, self.build_train_loader(self.cfg, start_iter=self.start_iter))

    def _trim_metrics(self, start_iter):
        writers = json_writers(self._hooks)
        reopen_json_writers(writers, flush_only=True)
        path = os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")
        dropped = trim_metrics(path, start_iter)
        if dropped:
            logger.info(
                "Resuming at iteration %d: dropped %d records of later iterations from %s",
                start_iter,
                dropped,
                path,
            )
            reopen_json_writers(writers)  # their files were replaced

    def build_hooks(self):
        """Detectron2's hooks, with an ``EvalHook`` that skips the final evaluation
        after a crash."""
        return [
            FinishedTrainingEvalHook.replacing(h) if type(h) is hooks.EvalHook else h
            for h in super().build_hooks()
        ]

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.MODEL.SYNC_BN and comm.get_world_size() > 1:
            model = convert_sync_batchnorm(model)
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_solo_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """detectron2's train loader with solo_d2's augmentation and mapper. With
        ``SEED >= 0`` the sampler is seeded with it; ``start_iter`` skips the samples of
        iterations ``0 .. start_iter - 1`` (resume)."""
        mapper_cls = (
            PanopticDatasetMapper
            if cfg.MODEL.META_ARCHITECTURE == "SOLOPanoptic"
            else FileNamingDatasetMapper
        )
        mapper = mapper_cls(cfg, is_train=True, augmentations=build_augmentation(cfg, True))
        kwargs = train_loader_from_config(cfg, mapper=mapper)
        check_training_instances(cfg, kwargs["dataset"])
        sampler = kwargs["sampler"]
        if cfg.SEED >= 0:
            seed_sampler(sampler, cfg.SEED)
        if start_iter > 0:
            per_worker = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            kwargs["sampler"] = _SkipSampler(sampler, start_iter * per_worker)
        return build_detection_train_loader(**kwargs)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=FileNamingDatasetMapper(cfg, False)
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        groups = build_optimizer_param_groups(cfg, model)
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            opt_cls = _maybe_add_gradient_clipping(cfg, torch.optim.SGD)
            return opt_cls(
                groups,
                lr=cfg.SOLVER.BASE_LR,
                momentum=cfg.SOLVER.MOMENTUM,
                nesterov=cfg.SOLVER.NESTEROV,
            )
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
    warn_unused_score_threshold(cfg)
    cfg.freeze()
    return cfg


def warn_unused_score_threshold(cfg) -> bool:
    """Warn when ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` (Detectron2's detection score threshold)
    is changed for a SOLO-family model, which does not read it. Returns whether it warned."""
    if "SOLO" not in cfg.MODEL.META_ARCHITECTURE.upper():
        return False
    default = d2_get_cfg().MODEL.ROI_HEADS.SCORE_THRESH_TEST
    value = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    if value == default:
        return False
    logger.warning(
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST=%s has no effect on %s models. Their score thresholds "
        "are MODEL.SOLO.SCORE_THR (category score of a candidate, now %s) and "
        "MODEL.SOLO.UPDATE_THR (score after Matrix NMS, now %s): set both to %s for detections "
        "scoring at least %s (tools/demo.py --confidence-threshold %s does that).",
        value,
        cfg.MODEL.META_ARCHITECTURE,
        cfg.MODEL.SOLO.SCORE_THR,
        cfg.MODEL.SOLO.UPDATE_THR,
        value,
        value,
        value,
    )
    return True
