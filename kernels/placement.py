"""Where the Triton kernels may run: the one rule every caller asks (attention, estimation and
column kernels alike).

* On CUDA every kernel runs.
* Under ``TRITON_INTERPRET=1`` on the CPU the attention kernels run (they are what the CPU tests
  check), and so does any kernel whose caller has no other path. A kernel that only accelerates a
  plain-PyTorch path with the same output (estimation softmax and line sums, column compaction:
  ``has_reference=True``) takes that path instead: the interpreter runs them ~100x slower than
  PyTorch, and their own tests compare kernel and reference in the interpreter.
* On a plain CPU no kernel runs: callers take their PyTorch paths (the prefill op runs dense SDPA).
"""

from __future__ import annotations

import os

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # BLOCK_D of the attention kernel is next_power_of_2(head_dim) <= 256


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(t: torch.Tensor, *, has_reference: bool = False) -> bool:
    """Whether a Triton kernel should take ``t`` (see the module docstring): a CUDA tensor, or a CPU
    tensor under the interpreter unless the caller ``has_reference`` (an equal PyTorch path)."""
    if t.device.type == "cuda":
        return True
    return interpreting() and t.device.type == "cpu" and not has_reference


def attention_kernel_supports(q: torch.Tensor) -> bool:
    """The attention kernels accept queries like ``q`` here (device, dtype, head dim)."""
    return triton_runs_on(q) and q.dtype in KERNEL_DTYPES and q.shape[-1] <= MAX_HEAD_DIM
