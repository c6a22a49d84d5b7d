"""Joining the process group a ``torchrun`` launch describes, for the example and the benchmark."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_from_torchrun(backend: str | None = None,
                       timeout: datetime.timedelta | None = None) -> tuple[int, int, torch.device]:
    """Init the default process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT) and return (rank, world, device): NCCL with one GPU per process when CUDA is
    present, else gloo on the CPU (the kernels then need ``TRITON_INTERPRET=1`` set before import).
    ``timeout``: how long a collective may wait (ranks idling while one rank works need more)."""
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group(backend, device_id=device, timeout=timeout)  # binds the communicator to this GPU
    else:
        device = torch.device("cpu")
        dist.init_process_group(backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device
