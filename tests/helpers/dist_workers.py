"""Worker functions for distributed tests (module-level so spawn can pickle them)."""

import os

import torch
import torch.distributed as dist
from detectron2.utils import comm


def report_ranks(out_dir):
    t = torch.tensor([float(comm.get_rank())])
    dist.all_reduce(t)
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.txt"), "w") as f:
        f.write(
            f"{comm.get_rank()} {comm.get_local_rank()} {comm.get_world_size()} "
            f"{comm.get_local_size()} {t.item()}"
        )


def crash_on_rank1():
    if comm.get_rank() == 1:
        raise RuntimeError("boom on rank 1")
    comm.synchronize()  # rank 0 would wait here forever if the launcher did not stop it
