"""The passes on small Dynamo graphs and on an exported (ATen) graph: what is matched, what is left
alone and why, the causal-mask proof, repeat_kv undone, the mask subgraph erased."""

import pytest
import torch
import torch.nn.functional as F
import transformers

from mmcompile.backend import _copy
from mmcompile.config import BackendConfig
import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference.*)
from mmcompile.passes import SkipKind, find_attention, modality_source, rewrite_attention, state

CONFIG = BackendConfig()


def dynamo_graph(fn, *args):
    """The single Dynamo graph of fn(*args)."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=capture, fullgraph=True, dynamic=False)(*args)
    (gm,) = graphs
    return _copy(gm)


def call(gm, **inputs):
    """Run a Dynamo graph with inputs by name (its placeholders follow first use, not the signature)."""
    return gm(*[inputs[n.target[2:-1]] for n in gm.graph.nodes if n.op == "placeholder"])


def sites(fn, *args):
    gm = dynamo_graph(fn, *args)
    find_attention(gm, CONFIG)
    return state(gm)["sites"]


def qkv(n_q=24, n_k=24, hq=4, hkv=4):
    return torch.randn(1, hq, n_q, 16), torch.randn(1, hkv, n_k, 16), torch.randn(1, hkv, n_k, 16)


def hf_like_mask(n, window=None, shift=0):
    """sdpa_mask's non-vmap construction, optionally with a sliding window or a shifted diagonal."""
    q_idx = (torch.arange(n) + 0)[None, None, :, None]
    kv_idx = (torch.arange(n) + 0)[None, None, None, :]
    mask = q_idx.new_ones((), dtype=torch.bool) & (kv_idx <= q_idx + shift)
    if window is not None:
        mask = mask & (kv_idx > q_idx - window)
    return mask.expand(1, -1, n, n)


@pytest.mark.parametrize("call, kind, reason", [
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), SkipKind.NON_CAUSAL,
     "non-causal (is_causal=False, no mask)"),
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, is_causal=True), SkipKind.DROPOUT,
     "dropout_p=0.1 > 0"),
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(24, 24)), SkipKind.FLOAT_MASK,
     "float attention mask"),
    (lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.ones(24, 24, dtype=torch.bool).tril()), SkipKind.MASK_NOT_PROVABLE,
     "not provably causal: mask op"),
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=hf_like_mask(24, window=8)),
     SkipKind.MASK_NOT_PROVABLE, "not provably causal: the index comparison is not the (bottom-right) causal diagonal"),
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=hf_like_mask(24, shift=1)),
     SkipKind.MASK_NOT_PROVABLE, "not provably causal: the index comparison"),
    (lambda q, k, v: F.scaled_dot_product_attention(q[:, :, :8], k, v, is_causal=True), SkipKind.TOP_LEFT_CAUSAL,
     "top-left aligned"),
])
def test_left_alone_with_a_kind_and_a_reason(call, kind, reason):
    (site,) = sites(call, *qkv())
    assert site.status == "skipped" and site.kind is kind and reason in site.reason


def test_causal_forms_are_matched():
    def layer(q, k, v):
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=0.3)
        b = F.scaled_dot_product_attention(q, k, v, attn_mask=hf_like_mask(24), enable_gqa=True)
        c = F.scaled_dot_product_attention(q[:, :, -1:], k, v, enable_gqa=True)  # a decode step
        return a + b + c

    found = sites(layer, *qkv(hkv=2))
    assert [s.causal_form for s in found] == ["is_causal", "hf_bool_mask", "single_query"]
    assert all(s.status == "matched" and s.gqa_form == "enable_gqa" and s.key_padding is None for s in found)
    assert [s.scale for s in found] == [0.3, 0.25, 0.25] and [s.layer for s in found] == [0, 1, 2]


def test_rewrite_undoes_repeat_kv_and_erases_the_mask_and_matches_eager():
    def layer(q, k, v, pad):
        n = q.shape[2]
        b_idx = torch.arange(1)[:, None, None, None]
        q_idx = torch.arange(n)[None, None, :, None]
        kv_idx = torch.arange(n)[None, None, None, :]
        mask = (q_idx.new_ones((), dtype=torch.bool) & (kv_idx < q_idx + 1)) & pad.to(torch.bool)[b_idx, kv_idx]
        k2 = k[:, :, None].expand(1, 2, 2, n, 16).reshape(1, 4, n, 16)
        v2 = v[:, :, None].expand(1, 2, 2, n, 16).reshape(1, 4, n, 16)
        return F.scaled_dot_product_attention(q, k2, v2, attn_mask=mask.expand(1, -1, n, n)) * 2

    q, k, v = qkv(hkv=2)
    pad = torch.ones(1, 24, dtype=torch.long)
    gm = dynamo_graph(layer, q, k, v, pad)
    state(gm)["op_options"] = {"force_dense": True}
    assert find_attention(gm, CONFIG).counts == {"found": 1, "matched": 1, "skipped": 0}
    modality_source(gm, CONFIG)
    result = rewrite_attention(gm, CONFIG)
    (site,) = state(gm)["sites"]
    assert (site.gqa_form, site.heads_kv, site.modality_source) == ("repeat_kv undone", 2, "at run time (annotation or published inputs; else text-only)")
    assert result.counts["rewritten"] == 1 and result.counts["erased_nodes"] >= 12
    targets = [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    assert targets.count(torch.ops.mminference.prefill_attention.default) == 1
    assert not {"expand", "reshape", torch.arange} & set(targets)
    (op_node,) = [n for n in gm.graph.nodes if n.target == torch.ops.mminference.prefill_attention.default]
    assert op_node.meta["example_value"].is_contiguous()  # a fresh fake, not SDPA's strides
    torch.testing.assert_close(call(gm, q=q, k=k, v=v, pad=pad)[0], layer(q, k, v, pad), atol=2e-5, rtol=2e-5)


def test_exported_graph_is_rewritten_at_the_aten_level():
    cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    lm = transformers.Qwen2Model(cfg).eval()

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, embeds, mask):
            return self.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state

    embeds, mask = torch.randn(1, 40, 64), torch.ones(1, 40, dtype=torch.long)
    with torch.no_grad():
        gm = _copy(torch.export.export(LM(), (embeds, mask)).module())
        expected = LM()(embeds, mask)
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    assert sum(n.target == sdpa for n in gm.graph.nodes) == 2
    state(gm)["op_options"] = {"force_dense": True}
    for p in (find_attention, modality_source, rewrite_attention):
        p(gm, CONFIG)
    forms = {(s.status, s.causal_form, s.gqa_form) for s in state(gm)["sites"]}
    assert forms == {("rewritten", "hf_bool_mask", "repeat_kv undone")}
    assert not any(n.target == sdpa or n.target == torch.ops.aten.le.Tensor for n in gm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(gm(embeds, mask), expected, atol=2e-5, rtol=2e-5)
