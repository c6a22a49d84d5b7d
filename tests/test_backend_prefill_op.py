"""torch.ops.mminference.prefill_attention: dense/sparse choice, decode alignment, key padding,
counters, schema and fake; the sparse path equals the reference of the same A-shape index."""

import pytest
import torch
import torch.nn.functional as F

from mmcompile import prefill_op
from mmcompile.kernels import sparse_attention_reference
from mmcompile.kernels.index_factories import a_shape_index
from mmcompile.prefill_op import RuntimeConfig, register_runtime_config

op = torch.ops.mminference.prefill_attention


def qkv(n=232, n_q=None, hq=4, hkv=2, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, hq, n_q or n, d, generator=g)
    k = torch.randn(1, hkv, n, d, generator=g)
    v = torch.randn(1, hkv, n, d, generator=g)
    return q, k, v


def sdpa_causal(q, k, v, scale, pad=None):
    n_q, n_k = q.shape[2], k.shape[2]
    mask = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)[None, None]
    if pad is not None:
        mask = mask & pad.bool()[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def config(key, **kw):
    cfg = RuntimeConfig(**kw)
    register_runtime_config(key, cfg)
    return cfg


@pytest.mark.interpreter
def test_sparse_path_equals_reference_of_same_a_shape_index():
    cfg = config("test-sparse", min_sparse_len=16, sink=64, local=64, policy="a-shape")
    q, k, v = qkv()  # 232 tokens: not a block multiple
    out = op(q, k, v, None, 3, 0.125, "test-sparse")
    index = a_shape_index(1, 4, 232, 64, 64, block_m=64, block_n=64)
    ref, _ = sparse_attention_reference(q, k, v, index, 0.125)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    assert out.is_contiguous()
    (rec,) = cfg.stats.records
    assert (rec.layer, rec.path, rec.n_q) == (3, "sparse", 232) and 0.5 < rec.density < 1.0
    dense = sdpa_causal(q, k, v, 0.125)
    assert (out - dense).abs().max() > 1e-3  # the pattern really dropped keys


def _reference_of_policy(q, k, v, layout, density, scale):
    """What the online path must compute: the kernel contract over the pattern library's indexes."""
    from mmcompile.kernels import index_to_mask
    from mmcompile.kernels.reference import masked_attention
    from mmcompile.patterns import forward_context, layer_attention
    from mmcompile.patterns.policy import choose_patterns

    ctx = forward_context(layout, q.shape[2], 1, "cpu")
    heads = choose_patterns(q, k, ctx, density=density, scale=scale)
    _, indexes = layer_attention(q, k, v, heads, ctx, scale, return_index=True)
    ref, n, group = torch.zeros_like(q), q.shape[2], q.shape[1] // k.shape[1]
    for ids, index in indexes:
        mask = index_to_mask(index, n, n) if index is not None else torch.ones(1, len(ids), n, n, dtype=torch.bool).tril()
        ref[:, ids], _ = masked_attention(q[:, ids], k.repeat_interleave(group, 1)[:, ids],
                                          v.repeat_interleave(group, 1)[:, ids], mask, scale)
    return ref, heads


@pytest.mark.interpreter
def test_online_policy_equals_reference_of_its_indexes():
    """policy="online": the op's output is the kernel over the indexes the pattern library builds."""
    from mmcompile.patterns import TEXT, from_segments
    from mmcompile.patterns.planted import planted_qkv

    cfg = config("test-online", min_sparse_len=16, policy="online", density=0.3)
    q, k, v, _ = planted_qkv(from_segments([[(TEXT, 700)]]), 4, 2, 64, kinds=["a-shape", "random"] * 2)
    out = op(q, k, v, None, 1, 0.125, "test-online")
    ref, _ = _reference_of_policy(q, k, v, None, 0.3, 0.125)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    (rec,) = cfg.stats.records
    assert rec.path == "sparse" and rec.reason == "online, layout: none (text-only)"
    assert 0 < rec.density < 1  # some heads sparse


@pytest.mark.interpreter
def test_annotated_layout_reaches_the_op():
    """mmcompile.annotate.modality: the op estimates per modality (Q-boundary heads) from it."""
    from mmcompile.annotate import modality
    from mmcompile.patterns import TEXT, VIDEO, from_segments
    from mmcompile.patterns.planted import planted_qkv

    layout = from_segments([[(TEXT, 128), (VIDEO, 512, 8, 8), (TEXT, 128)]])
    cfg = config("test-annotated", min_sparse_len=16, policy="online", density=0.3)
    q, k, v, _ = planted_qkv(layout, 4, 2, 64, kinds=["boundary", "a-shape", "grid", "random"])
    with modality(layout=layout):
        out = op(q, k, v, None, 0, 0.125, "test-annotated")
        short = torch.zeros(1, 10, dtype=torch.int32)
    ref, heads = _reference_of_policy(q, k, v, layout, 0.3, 0.125)
    assert any(h.inter == "q-boundary" for h in heads)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    seen = cfg.stats.records[-1]
    assert seen.reason == "online, layout: annotation"
    # The annotated layout reaches the op whole: its frame geometry (8x8 frames) is kept.
    assert (seen.layout.geometry, seen.layout.frame_stride) == ("given", (64,))
    assert seen.layout.tokens == {"text": 256, "video": 512}
    assert seen.layout.segments == ((("video", 128, 512, 8, 8),),)
    with modality(mm_token_type_ids=layout.modality):  # ids alone: labels, no geometry (one frame)
        op(q, k, v, None, 0, 0.125, "test-annotated")
    assert (cfg.stats.records[-1].layout.geometry, cfg.stats.records[-1].layout.frame_stride) == ("none", (512,))
    with modality(mm_token_type_ids=short):  # another input's ids: ignored, text-only, still exact
        op(q, k, v, None, 0, 0.125, "test-annotated")
    assert cfg.stats.records[-1].reason == "online, layout: none (annotation shape mismatch)"
    with pytest.raises(ValueError, match="exactly one"):
        with modality():
            pass


@pytest.mark.parametrize("n_q", [232, 1, 5])  # prefill, decode step, chunk: queries are the LAST positions
def test_dense_paths_equal_sdpa(n_q):
    cfg = config("test-dense", force_dense=True)
    q, k, v = qkv(n_q=n_q, seed=1)
    out = op(q, k, v, None, 0, 0.125, "test-dense")
    torch.testing.assert_close(out, sdpa_causal(q, k, v, 0.125), atol=2e-5, rtol=2e-5)
    assert cfg.stats.records[-1].reason == ("force_dense" if n_q == 232 else "decode/chunk")


def test_short_prefill_is_dense_and_key_padding_uses_the_mask():
    cfg = config("test-pad", min_sparse_len=64)
    q, k, v = qkv(n=40, seed=2)
    out = op(q, k, v, None, 0, 0.125, "test-pad", key_padding_mask=torch.ones(1, 40, dtype=torch.long))
    torch.testing.assert_close(out, sdpa_causal(q, k, v, 0.125), atol=2e-5, rtol=2e-5)
    pad = torch.ones(1, 44, dtype=torch.long)  # longer than Nk: only the first Nk columns count
    pad[0, :3] = 0
    out = op(q, k, v, None, 0, 0.125, "test-pad", key_padding_mask=pad)
    torch.testing.assert_close(out, sdpa_causal(q, k, v, 0.125, pad[:, :40]), atol=1e-6, rtol=1e-6)
    assert [r.reason for r in cfg.stats.records] == ["short", "key padding"]


def test_padding_check_is_cached_per_tensor_and_version():
    pad = torch.ones(1, 8)
    assert prefill_op._padding_all_ones(pad)
    pad[0, 0] = 0  # in-place edit bumps the version counter: the cache must not answer
    assert not prefill_op._padding_all_ones(pad)


def test_schema_fake_and_unknown_config_key():
    q, k, v = qkv(n=40, seed=3)
    torch.library.opcheck(op.default, (q, k, v, None, 0, 0.125, "never-registered"),
                          test_utils=("test_schema", "test_faketensor"))
    schema = str(op.default._schema)
    assert "Tensor? modality_ids" in schema and "str config_key" in schema
    out = op(q, k, v, None, 0, 0.125, "never-registered")  # defaults: 40 < 32768 -> dense
    torch.testing.assert_close(out, sdpa_causal(q, k, v, 0.125), atol=2e-5, rtol=2e-5)


@pytest.mark.interpreter
def test_published_layout_of_another_length_is_ignored_with_one_warning(caplog):
    """What the backend published for another input (here 10 tokens) never reaches a call of 232."""
    from mmcompile import annotate
    from mmcompile.patterns import VIDEO

    cfg = config("test-published", min_sparse_len=16, policy="online", density=0.3)
    q, k, v = qkv()
    annotate.publish_input_ids(torch.tensor([[1, 9, 9, 9, 9, 2, 3, 4, 5, 6]]), {9: VIDEO})
    try:
        with caplog.at_level("WARNING", logger="mmcompile.prefill_op"):
            for layer in range(2):
                op(q, k, v, None, layer, 0.125, "test-published")
    finally:
        annotate.publish_input_ids(torch.zeros(1, 1, dtype=torch.long))  # clear for the next tests
    assert [r.reason for r in cfg.stats.records] == ["online, layout: none (published layout shape mismatch)"] * 2
    assert caplog.text.count("does not match this call") == 1  # once per layout, not per layer
