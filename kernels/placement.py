"""Where the Triton kernels may run: the one rule every caller asks (attention, estimation and
column kernels alike), so that a CPU machine with ``TRITON_INTERPRET=1`` runs the same code paths
as a GPU, and a plain CPU takes the plain-PyTorch references everywhere, never in some places only.
"""

from __future__ import annotations

import os

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # BLOCK_D of the attention kernel is next_power_of_2(head_dim) <= 256


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(t: torch.Tensor) -> bool:
    """A Triton kernel can take ``t``: a CUDA tensor, or any CPU tensor under the interpreter."""
    return t.device.type == "cuda" or (interpreting() and t.device.type == "cpu")


def attention_kernel_supports(q: torch.Tensor) -> bool:
    """The attention kernels accept queries like ``q`` here (device, dtype, head dim)."""
    return triton_runs_on(q) and q.dtype in KERNEL_DTYPES and q.shape[-1] <= MAX_HEAD_DIM
