"""Launch training on detectron2's launcher (CUDA) or on CPU workers with gloo.

detectron2 v0.6's ``launch`` asserts CUDA and uses NCCL; current main supports gloo.
To behave the same on both, CPU training with several workers
(``--num-gpus 0 --num-cpu-workers N``) goes through :func:`_cpu_worker` here, which
sets up the global gloo group and detectron2's per-machine local group exactly as
detectron2's worker does, then runs the same ``main_func``.
"""

import logging
import os
import sys
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from ..compat import create_local_process_group, find_free_port

__all__ = ["launch"]
DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = None,
    args=(),
    num_cpu_workers: int = 0,
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """Run ``main_func(*args)`` on
    ``num_machines * (num_gpus_per_machine or num_cpu_workers)`` workers.

    A worker that raises makes the whole launch raise (``torch.multiprocessing``
    terminates the other workers), so a crash never hangs the job.
    """
    if num_gpus_per_machine > 0 and num_cpu_workers > 0:
        raise ValueError("use either --num-gpus or --num-cpu-workers, not both")
    if num_gpus_per_machine > 0:
        if num_gpus_per_machine * num_machines > 1 and not torch.cuda.is_available():
            raise RuntimeError(
                f"--num-gpus {num_gpus_per_machine} needs CUDA, which is not available; "
                "train on CPU workers with --num-gpus 0 --num-cpu-workers N"
            )
        return d2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args=args
        )
    workers = max(num_cpu_workers, 1)
    world_size = workers * num_machines
    if world_size == 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError("--dist-url auto works on one machine only; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    mp.start_processes(
        _cpu_worker,
        nprocs=workers,
        args=(main_func, world_size, workers, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _cpu_worker(
    local_rank, main_func, world_size, workers_per_machine, machine_rank, dist_url, args, timeout
):
    rank = machine_rank * workers_per_machine + local_rank
    try:
        dist.init_process_group(
            "gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
        )
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    create_local_process_group(workers_per_machine, world_size // workers_per_machine, machine_rank)
    # share the cores instead of oversubscribing them
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers_per_machine))
    comm.synchronize()
    try:
        main_func(*args)
    except BaseException:
        # torch.multiprocessing reports only the first worker it sees fail, often a peer
        # whose collective broke because of this one; print the root cause with its rank.
        sys.stderr.write(f"[solo_d2 launch] worker rank {rank} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        raise
    finally:
        dist.destroy_process_group()
