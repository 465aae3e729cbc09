"""torchrun support: the process group (gloo on CPU, NCCL on CUDA) and the few
collectives training and scoring need. Without torchrun everything is a no-op."""

import os
import sys

import torch
import torch.distributed as dist


def init() -> None:
    """Joins the process group torchrun describes (WORLD_SIZE > 1), once."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def rank_world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def broadcast_object(value):
    """Rank 0's ``value`` on every rank."""
    if rank_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def close() -> None:
    """Leaves the process group. A barrier comes first, so that no rank tears down its
    connections while another still sends on them (rank 0 writes the run's files after
    the last collective, the other ranks have nothing left to do)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """Ends a torchrun worker (WORLD_SIZE > 1) with ``code`` without the interpreter's
    finalisation, where gloo's threads can still release tensors and abort the process
    (SIGABRT) after all its work is done, turning a finished run into a failed one.
    Every file a run writes is closed (records fsynced) before this point, so skipping
    finalisation loses nothing; a single process returns normally. A failed worker
    leaves without the closing barrier: the others may be waiting in another collective,
    and torchrun ends them once one worker fails."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if code == 0:
            close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
