from .launch import launch
from .trainer import Trainer, build_optimizer_param_groups, setup_cfg

__all__ = ["Trainer", "launch", "setup_cfg", "build_optimizer_param_groups"]
