"""The kernel launches of one layer: each launch group's sparse kernel, dense heads through SDPA
(cuDNN on Hopper), optionally on a forked stream, all writing into one output.
"""

from __future__ import annotations

import contextlib

import torch

from mmcompile.kernels import sparse_attention_forward

from .index_builder import device_list
from .specs import Dense, HeadPattern


def runs_dense(head: HeadPattern) -> bool:
    """Whether a head goes to the dense path (SDPA) rather than a sparse launch."""
    return head.inter != "2d-boundary" and all(isinstance(p, Dense) for _, p in head.intra)


def dense_heads(indexes) -> list[int]:
    return [h for ids, index in indexes if index is None for h in ids]


def attend(q, k, v, indexes, scale: float | None = None, return_lse: bool = False, out=None, lse=None,
           dense_stream=None):
    """The kernel launches of one layer, all writing into one output (index None: dense heads,
    queued on ``dense_stream`` if given: ``side_stream``).
    Returns out, or (out, lse [B, Hq, N] float32 natural log; None when SDPA ran every head).
    ``out``/``lse`` given: the launches write into them (their other heads are left as they are)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if out is None and len(indexes) == 1 and indexes[0][1] is None:  # every head dense: SDPA (cuDNN) is faster
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                               enable_gqa=q.shape[1] != k.shape[1])
        return (out, None) if return_lse else out
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    for head_ids, index in indexes:
        ids = device_list(head_ids, q.device, torch.int32)
        if index is None:
            sdpa_heads(q, k, v, head_ids, scale, out, lse, stream=dense_stream)
        else:
            sparse_attention_forward(q, k, v, index, scale, head_ids=ids, out=out, lse=lse)
    return (out, lse) if return_lse else out


def sdpa_heads(q, k, v, head_ids: list[int], scale: float, out, lse, stream=None) -> None:
    """Dense heads of a mixed layer through SDPA (cuDNN on Hopper: faster than the Triton dense
    path; math on a CPU: faster than the interpreter), written into ``out``, on ``stream`` if
    given (its head lists are made on the current one: a cached list must be on the device before
    any stream reads it). Their ``lse`` is not computed (NaN): they are exact, and
    ``verify.held_out_recall`` counts them so."""
    group = q.shape[1] // k.shape[1]
    ids = device_list(head_ids, q.device)
    kv = device_list([h // group for h in head_ids], q.device)
    with on_stream(stream):
        dense = torch.nn.functional.scaled_dot_product_attention(q.index_select(1, ids), k.index_select(1, kv),
                                                                 v.index_select(1, kv), is_causal=True, scale=scale)
        out.index_copy_(1, ids, dense)
        lse.index_fill_(1, ids, float("nan"))


def side_stream(device: torch.device):
    """A stream forked from the current one (None on a CPU or while a CUDA graph is captured). On
    it the layer queues its dense work (dense heads: SDPA saturates the GPU for ~8 ms a head at
    128K; the check's dense log-sum-exp), so the small kernels of index building and the sparse
    launches' tails fill the GPU beside it. The layer joins it before reading those results.
    Eager cross-stream use is safe here: each fork waits for the current stream first, and every
    tensor the side stream reads (q, k, v, ``out``, ``lse``, cached head lists) outlives the join."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return None
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    return side


def on_stream(stream):
    """``torch.cuda.stream(stream)``, or nothing for None."""
    return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)
