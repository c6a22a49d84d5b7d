"""Triton attention kernels over a SparseIndex, with plain-PyTorch references of the same contract.

Installed as ``mmcompile.kernels``; imports only torch and triton.
"""

from .reference import dense_attention_reference, groups_to_mask, index_to_mask, sparse_attention_reference
from .placement import attention_kernel_supports, interpreting, triton_runs_on
from .sparse_attention_fwd import dense_attention_forward, sparse_attention_forward
from .sparse_index import SparseIndex, check_index, check_inputs, block_columns, span_stretches

__all__ = [
    "SparseIndex", "check_index", "check_inputs", "block_columns", "span_stretches",
    "sparse_attention_forward", "dense_attention_forward",
    "interpreting", "triton_runs_on", "attention_kernel_supports",
    "sparse_attention_reference", "dense_attention_reference", "index_to_mask", "groups_to_mask",
]
