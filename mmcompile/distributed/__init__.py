"""Head-parallel prefill on ``torch.distributed``: every rank runs the single-device sparse op on its
own heads over the whole sequence.

Why heads: MMInference patterns are chosen and applied per head, so a head never needs another
head's keys and the per-head choice is the same on any rank (the result equals one device's).

* ``ulysses_attention``: ranks hold sequence shards [B, H, N/world, D]; one all-to-all turns them
  into head shards [B, H/world, N, D], the op runs, another all-to-all turns the output back.
* ``tensor_parallel_attention``: ranks already hold all tokens of their heads (Megatron-style head
  split); no communication.

Heads are split in contiguous ranges of query and KV heads (``head_shard``), so the query heads of
a rank are exactly those reading its KV heads (GQA: query head h reads KV head h // (Hq / Hkv)).
A searched plan is sliced per rank; without one each rank chooses patterns for its heads online.
The modality layout is the whole sequence's, identical on every rank (``forward_context``).
"""

from .attention import rank_attention, tensor_parallel_attention, ulysses_attention
from .comm import gather_patterns, heads_to_seq, rank_world, seq_to_heads
from .launch import init_from_torchrun
from .shards import HeadShard, head_shard, sequence_shard, slice_plan

__all__ = [
    "ulysses_attention", "tensor_parallel_attention", "rank_attention",
    "seq_to_heads", "heads_to_seq", "gather_patterns", "rank_world",
    "HeadShard", "head_shard", "sequence_shard", "slice_plan", "init_from_torchrun",
]
