from .launch import launch
from .output_lock import OutputDirLock, OutputDirLockedError
from .trainer import Trainer, build_optimizer_param_groups, check_num_classes, setup_cfg, trim_metrics

__all__ = [
    "Trainer",
    "launch",
    "setup_cfg",
    "build_optimizer_param_groups",
    "check_num_classes",
    "trim_metrics",
    "OutputDirLock",
    "OutputDirLockedError",
]
