"""Distributed helpers shared by the losses."""

import torch
from detectron2.utils import comm

__all__ = ["reduce_mean"]


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the distributed workers (``value`` itself in one process),
    detached, as float: the normalizers of the SOLO, stuff and BiSeNet losses, so that N workers
    compute the loss of one process on the whole batch.

    Args:
        value: a float tensor (any shape) of this worker's counts.

    Returns:
        The same shape, ``sum over workers / world size``.
    """
    value = value.detach().float()
    world = comm.get_world_size()
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
        value = value / world
    return value
