"""layer_attention on a GPU in bf16 against a float32 reference of the same indexes."""

import pytest
import torch

from mmcompile.kernels import index_to_mask
from mmcompile.kernels.reference import masked_attention
from mmcompile.patterns import TEXT, VIDEO, forward_context, from_segments, layer_attention
from mmcompile.patterns.planted import planted_qkv
from mmcompile.patterns.policy import choose_patterns

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("segments", [[(TEXT, 512), (VIDEO, 4096, 8, 8), (TEXT, 512)], [(TEXT, 5000)]])
def test_policy_layer_matches_reference_bf16(segments):
    layout = from_segments([segments])
    n = layout.length
    q, k, v, _ = planted_qkv(layout, 8, 2, 128, "cuda", torch.bfloat16)
    ctx = forward_context(layout, n, 1, "cuda")
    heads = choose_patterns(q, k, ctx, density=0.2)
    out, indexes = layer_attention(q, k, v, heads, ctx, return_index=True)
    group = q.shape[1] // k.shape[1]
    for ids, index in indexes:
        mask = (index_to_mask(index, n, n) if index is not None
                else torch.ones(1, len(ids), n, n, dtype=torch.bool, device="cuda").tril())
        kk, vv = k.repeat_interleave(group, 1)[:, ids], v.repeat_interleave(group, 1)[:, ids]
        ref, _ = masked_attention(q[:, ids].float(), kk.float(), vv.float(), mask)
        err = ((out[:, ids].float() - ref).norm() / ref.norm()).item()
        assert err < 1e-2, (ids, err)
