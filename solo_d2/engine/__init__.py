from .launch import launch
from .model_metadata import (
    Predictor,
    WeightsMismatchError,
    check_eval_datasets,
    load_weights_for_inference,
    model_metadata,
    read_checkpoint_metadata,
)
from .output_lock import OutputDirLock, OutputDirLockedError
from .trainer import (
    Trainer,
    build_optimizer_param_groups,
    check_num_classes,
    check_training_instances,
    setup_cfg,
    trim_metrics,
)

__all__ = [
    "Trainer",
    "launch",
    "setup_cfg",
    "build_optimizer_param_groups",
    "check_num_classes",
    "check_training_instances",
    "Predictor",
    "WeightsMismatchError",
    "check_eval_datasets",
    "load_weights_for_inference",
    "model_metadata",
    "read_checkpoint_metadata",
    "trim_metrics",
    "OutputDirLock",
    "OutputDirLockedError",
]
