"""Detectron2 compatibility: every shim for a difference between Detectron2 v0.6 and main, and
every use of Detectron2's private state, in one module.

Each shim below names the versions it is for and why it exists. Where Detectron2 offers a
public hook, solo_d2 overrides that instead (``Trainer.build_*``). Differences that needed a
whole module of solo_d2's own (not a shim) are kept out of Detectron2's code paths entirely:
the Cityscapes loaders and evaluators (:mod:`solo_d2.data.cityscapes`,
:mod:`solo_d2.evaluation.cityscapes`: main's import a module that exists nowhere public) and
the semantic-segmentation evaluator (:mod:`solo_d2.evaluation.sem_seg`: main changed mIoU).
"""

import functools
import logging
import weakref

import torch.distributed as dist
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.build import _train_loader_from_config
from detectron2.engine import AMPTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter
from detectron2.utils.logger import setup_logger

__all__ = [
    "FinishedTrainingEvalHook",
    "create_local_process_group",
    "find_free_port",
    "has_compiled_ops",
    "init_default_trainer",
    "inner_trainer",
    "json_writers",
    "reopen_json_writers",
    "restart_data_loader",
    "seed_sampler",
    "train_loader_from_config",
]

logger = logging.getLogger(__name__)

# v0.6 and main: private helpers with no public equivalent, used as Detectron2 uses them
# (the keyword arguments build_detection_train_loader takes from a config; a free TCP port)
train_loader_from_config = _train_loader_from_config
find_free_port = _find_free_port


@functools.lru_cache(maxsize=None)
def has_compiled_ops() -> bool:
    """True when ``detectron2._C`` is the real compiled extension. The offline install of
    v0.6 (``tools/install_detectron2_offline.py``, no C++ sources) puts a stand-in there."""
    try:
        import detectron2._C as _C  # optional: the compiled extension
    except ImportError:
        return False
    return not getattr(_C, "SOLO_D2_STANDIN", False)


# ---------------------------------------------------------------- trainer


def init_default_trainer(trainer, cfg, *, wrap_model, checkpointables):
    """``DefaultTrainer.__init__`` (v0.6 and main, same steps in the same order) with two
    changes: ``wrap_model(model)`` instead of ``create_ddp_model`` (both versions pass CUDA
    ``device_ids`` unconditionally, which fails for CPU gloo workers), and extra
    ``checkpointables`` for the checkpointer. It writes ``DefaultTrainer``'s ``_trainer``."""
    TrainerBase.__init__(trainer)
    if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
        setup_logger()
    cfg = type(trainer).auto_scale_workers(cfg, comm.get_world_size())
    model = trainer.build_model(cfg)
    optimizer = trainer.build_optimizer(cfg, model)
    data_loader = trainer.build_train_loader(cfg)
    model = wrap_model(model)
    trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
    trainer._trainer = trainer_cls(model, data_loader, optimizer)
    trainer.scheduler = trainer.build_lr_scheduler(cfg, optimizer)
    trainer.checkpointer = DetectionCheckpointer(
        model, cfg.OUTPUT_DIR, trainer=weakref.proxy(trainer), **checkpointables
    )
    trainer.start_iter = 0
    trainer.max_iter = cfg.SOLVER.MAX_ITER
    trainer.cfg = cfg
    trainer.register_hooks(trainer.build_hooks())


def inner_trainer(trainer):
    """The ``SimpleTrainer`` / ``AMPTrainer`` a ``DefaultTrainer`` runs (its private ``_trainer``,
    v0.6 and main)."""
    return trainer._trainer


def restart_data_loader(trainer, data_loader):
    """Make ``trainer``'s inner trainer read ``data_loader`` from its next step. v0.6 creates
    the iterator in ``SimpleTrainer.__init__`` (``_data_loader_iter``); main creates it lazily
    through the ``_data_loader_iter`` property from ``_data_loader_iter_obj``."""
    inner = inner_trainer(trainer)
    inner.data_loader = data_loader
    if isinstance(getattr(type(inner), "_data_loader_iter", None), property):
        inner._data_loader_iter_obj = None  # main
    else:
        inner._data_loader_iter = iter(data_loader)  # v0.6


def seed_sampler(sampler, seed: int) -> bool:
    """Seed a Detectron2 training sampler (``TrainingSampler``, ``RepeatFactorTrainingSampler``:
    ``_seed``, v0.6 and main) built by ``build_detection_train_loader``'s config path, which
    seeds it from ``comm.shared_random_seed()``. False when the sampler has no such seed."""
    if not hasattr(sampler, "_seed"):
        return False
    sampler._seed = int(seed)  # both draw from torch.Generator().manual_seed(_seed)
    return True


def json_writers(trainer_hooks):
    """The ``JSONWriter``s of the ``PeriodicWriter`` hooks (their private ``_writers``)."""
    return [
        w for h in trainer_hooks for w in getattr(h, "_writers", []) if isinstance(w, JSONWriter)
    ]


def reopen_json_writers(writers, flush_only=False):
    """Flush each writer's file; unless ``flush_only``, reopen it for appending (after the file
    was replaced). ``JSONWriter`` keeps its file in ``_file_handle`` (v0.6 and main)."""
    for w in writers:
        w._file_handle.flush()
        if not flush_only:
            name = w._file_handle.name
            w._file_handle.close()
            w._file_handle = open(name, "a")


class FinishedTrainingEvalHook(hooks.EvalHook):
    """Detectron2's ``EvalHook``, whose final evaluation runs only when training finished.

    ``TrainerBase.train`` sets ``iter = max_iter`` after the last step; after an exception it is
    at most ``max_iter - 1``, which ``EvalHook.after_train``'s ``iter + 1 >= max_iter`` accepts
    for a crash in the last iteration. Main adds ``eval_after_train`` (``_eval_after_train``)."""

    @classmethod
    def replacing(cls, hook):
        """This hook with ``hook``'s period, function and (main) final-evaluation switch."""
        new = cls(hook._period, hook._func)
        if hasattr(hook, "_eval_after_train"):
            new._eval_after_train = hook._eval_after_train
        return new

    def after_train(self):
        if getattr(self, "_eval_after_train", True):
            if self.trainer.iter >= self.trainer.max_iter:
                self._do_eval()
            else:
                logger.warning(
                    "Training stopped at iteration %d of %d: no final evaluation",
                    self.trainer.iter,
                    self.trainer.max_iter,
                )
        del self._func  # as EvalHook.after_train: free the evaluation closure (and its data)


# ---------------------------------------------------------------- distributed


def create_local_process_group(workers_per_machine: int, num_machines: int, machine_rank: int):
    """Detectron2's per-machine process group (``comm.get_local_rank`` and friends use it).
    Main: ``comm.create_local_process_group``; v0.6 has no function for it and sets
    ``comm._LOCAL_PROCESS_GROUP`` in its launcher's worker, as done here."""
    if hasattr(comm, "create_local_process_group"):  # main
        comm.create_local_process_group(workers_per_machine)
        return
    for i in range(num_machines):  # v0.6: every rank creates every group, in the same order
        ranks = list(range(i * workers_per_machine, (i + 1) * workers_per_machine))
        pg = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg
