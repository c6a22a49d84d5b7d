"""The backend on real transformers VLM classes built from tiny configs (random weights, no
downloads; recipes from the toolchain notes, Appendix A): Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision and
LLaVA-NeXT-Video, 2 decoder layers each, with and without ``attention_mask``.

Most tests use ``debug_uncompiled=True`` (the rewritten graph runs in Python: no C++ compile);
``test_backend_options.py::test_chains_to_inductor`` is the one real Inductor chain.
"""

import pytest
import torch
import torch._dynamo.testing
import transformers as tf

import mmcompile.patterns.launch
from mmcompile.passes import SkipKind
from mmcompile.runtime import DenseReason
from mmcompile import report as mm_report
from mmcompile.kernels import sparse_attention_reference

LAYERS = 2
TEXT = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
QWEN_IDS = dict(image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)
NON_CAUSAL = "non-causal (is_causal=False, no mask): bidirectional, e.g. a vision tower"


def _ids(middle, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(0, 200, (6,), generator=g), middle, torch.randint(0, 200, (4,), generator=g)])[None]


def _qwen_inputs(frames, hw, seed):
    t = frames // 2
    ids = _ids(torch.cat([torch.tensor([252]), torch.full((t * hw * hw // 4,), 251), torch.tensor([253])]), seed)
    return dict(input_ids=ids, pixel_values_videos=torch.randn(t * hw * hw, 3 * 2 * 14 * 14),
                video_grid_thw=torch.tensor([[t, hw, hw]]), mm_token_type_ids=(ids == 251).int() * 2)


def qwen2_vl(frames=4, hw=8, seed=0):
    cfg = tf.Qwen2VLConfig(
        text_config=dict(TEXT, rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6])),
        vision_config=dict(depth=2, embed_dim=64, hidden_size=128, num_heads=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        attn_implementation="sdpa", **QWEN_IDS)
    return tf.Qwen2VLForConditionalGeneration(cfg).eval(), _qwen_inputs(frames, hw, seed)


def qwen2_5_vl(frames=4, hw=8, seed=0):
    cfg = tf.Qwen2_5_VLConfig(
        text_config=dict(TEXT, rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6])),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                           window_size=56, fullatt_block_indexes=[1], tokens_per_second=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        attn_implementation="sdpa", **QWEN_IDS)
    inputs = _qwen_inputs(frames, hw, seed)
    return tf.Qwen2_5_VLForConditionalGeneration(cfg).eval(), dict(inputs, second_per_grid_ts=torch.tensor([1.0]))


def llava_onevision(frames=8, image_size=56, seed=0):
    cfg = tf.LlavaOnevisionConfig(
        text_config=dict(TEXT, model_type="qwen2"),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, image_size=image_size, patch_size=14),
        image_token_index=250, video_token_index=251, vision_feature_layer=-1,
        vision_feature_select_strategy="full", attn_implementation="sdpa")
    side = image_size // 14
    ids = _ids(torch.full((frames * ((side + 1) // 2) ** 2 + 1,), 251), seed)
    return (tf.LlavaOnevisionForConditionalGeneration(cfg).eval(),
            dict(input_ids=ids, pixel_values_videos=torch.randn(1, frames, 3, image_size, image_size)))


def llava_next_video(frames=4, image_size=56, seed=0):
    cfg = tf.LlavaNextVideoConfig(
        text_config=dict(TEXT, model_type="llama"),
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, image_size=image_size, patch_size=14, projection_dim=64),
        image_token_index=250, video_token_index=251, vision_feature_layer=-2,
        vision_feature_select_strategy="default", spatial_pool_stride=2, attn_implementation="sdpa")
    ids = _ids(torch.full((frames * (image_size // 14 // 2) ** 2,), 251), seed)
    return (tf.LlavaNextVideoForConditionalGeneration(cfg).eval(),
            dict(input_ids=ids, pixel_values_videos=torch.randn(1, frames, 3, image_size, image_size)))


MODELS = {"qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl, "llava_onevision": llava_onevision,
          "llava_next_video": llava_next_video}
DEBUG_DENSE = {"debug_uncompiled": True, "force_dense": True}


def build(name, **kw):
    torch.manual_seed(0)
    return MODELS[name](**kw)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def report():
    return mm_report.reset_report()


@pytest.mark.parametrize("name", list(MODELS))
def test_decoder_attention_rewritten_vision_untouched_dense_equals_eager(name, report):
    """Without and then with ``attention_mask`` (all ones), one compile: the masked forward
    recompiles the graphs that read the mask, the vision tower's stay (checked on the first)."""
    model, no_mask = build(name)
    ones_mask = dict(no_mask, attention_mask=torch.ones_like(no_mask["input_ids"]))
    # Eager first: an eager forward between the compiled ones would change module state the
    # compiled frames guard on (Qwen2-VL's rope_deltas) and recompile the vision tower too.
    expected = [logits(model, inputs) for inputs in (no_mask, ones_mask)]
    compiled = torch.compile(model, backend="mminference", options=DEBUG_DENSE)
    for with_mask, inputs, want in zip((False, True), (no_mask, ones_mask), expected):
        if with_mask:
            report = mm_report.reset_report()
        torch.testing.assert_close(logits(compiled, inputs), want, atol=1e-5, rtol=1e-5)

        rewritten = report.rewritten
        assert len(rewritten) == LAYERS and sorted(e.layer for e in rewritten) == list(range(LAYERS)), with_mask
        forms = {(e.causal_form, e.gqa_form, e.modality_source, e.heads) for e in rewritten}
        assert forms == ({("hf_bool_mask", "repeat_kv undone", "at run time (annotation or published inputs; else text-only)", "4/2")} if with_mask
                         else {("is_causal", "enable_gqa", "at run time (annotation or published inputs; else text-only)", "4/2")})
        if not with_mask:  # every vision-tower attention call is left alone, with the reason recorded
            assert report.skipped and set(report.skipped_reasons()) == {NON_CAUSAL}
            assert set(report.skipped_kinds()) == {SkipKind.NON_CAUSAL}
        else:  # the [B,1,S,S] mask subgraph and the repeat_kv copies were erased
            (graph,) = [g for g in report.graphs if g.rewritten]
            (rewrite,) = [p for p in graph.passes if p.name == "rewrite_attention"]
            assert rewrite.counts["erased_nodes"] >= 20
            assert set(report.skipped_reasons()) <= {NON_CAUSAL}  # a recompiled vision graph is left alone too
        runtime = report.runtime()
        assert runtime["dense_calls"] == LAYERS and runtime["reasons"] == {DenseReason.FORCE_DENSE: LAYERS}
        assert not report.fallbacks


def test_sparse_prefill_equals_the_reference_of_the_same_index(report, monkeypatch):
    model, inputs = build("qwen2_vl", frames=6, hw=24)  # 444 language-model tokens
    options = {"debug_uncompiled": True, "min_sparse_len": 16, "sink": 64, "local": 64, "policy": "a-shape"}
    compiled = torch.compile(model, backend="mminference", options=options)
    out = logits(compiled, inputs)
    runtime = report.runtime()
    assert runtime["sparse_calls"] == LAYERS and runtime["dense_calls"] == 0
    assert [(r.n_q, r.layer) for r in runtime["records"]] == [(444, 0), (444, 1)]
    assert 0.4 < runtime["mean_sparse_density"] < 1.0

    def reference(q, k, v, index, scale, head_ids, out, lse):  # the same A-shape index, PyTorch reference
        assert torch.equal(head_ids, torch.arange(q.shape[1], dtype=torch.int32))  # one group: all heads
        out[:], lse[:] = sparse_attention_reference(q, k, v, index, scale)
        return out, lse

    monkeypatch.setattr(mmcompile.patterns.launch, "sparse_attention_forward", reference)
    torch.testing.assert_close(logits(compiled, inputs), out, atol=1e-4, rtol=1e-4)
    assert report.runtime()["sparse_calls"] == 2 * LAYERS  # the same graph: no recompile


@pytest.mark.parametrize("name", ["qwen2_vl", "llava_onevision"])
def test_layout_reaches_the_op_from_input_ids_placeholders(name, report):
    """No annotation, no model change: the graph that reads input_ids publishes the visual tokens,
    and the language model's rewritten calls (a later graph) estimate per modality from them."""
    model, inputs = build(name)
    options = {"debug_uncompiled": True, "min_sparse_len": 16, "policy": "online", "density": 0.5}
    out = logits(torch.compile(model, backend="mminference", options=options), inputs)
    assert torch.isfinite(out).all()
    records = report.runtime()["records"]
    assert len(records) == LAYERS
    assert {(r.detail, r.layout.source) for r in records} == {("online", "input_ids placeholders")}
    assert records[0].layout.tokens["video"] == int((inputs["input_ids"] == 251).sum())  # 251: the video token
    text = {"input_ids": inputs["input_ids"][:, :40]}  # a text-only prefill right after: no stale layout
    torch._dynamo.reset()
    logits(torch.compile(model, backend="mminference", options=options), text)
    assert report.runtime()["records"][-1].layout.source == "none (text-only)"


def test_text_only_input(report):
    model, inputs = build("qwen2_vl")
    text = {"input_ids": inputs["input_ids"][:, :10]}
    out = logits(torch.compile(model, backend="mminference", options=DEBUG_DENSE), text)
    torch.testing.assert_close(out, logits(model, text), atol=1e-5, rtol=1e-5)
    assert len(report.rewritten) == LAYERS and not report.skipped
    assert {e.modality_source for e in report.rewritten} == {"at run time (annotation or published inputs; else text-only)"}


def test_generate_prefill_and_decode_force_dense_gives_eager_tokens(report):
    model, inputs = build("qwen2_vl", seed=3)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    model.forward = torch.compile(model.forward, backend="mminference", options=DEBUG_DENSE)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, expected)
    forms = {e.causal_form for e in report.rewritten}
    assert forms == {"is_causal", "single_query"}  # the prefill graph and the decode-step graphs
    reasons = report.runtime()["reasons"]
    assert reasons[DenseReason.FORCE_DENSE] == LAYERS and reasons[DenseReason.DECODE_OR_CHUNK] == 3 * LAYERS


def test_backend_adds_no_graph_break(report):
    model, inputs = build("llava_onevision")
    # transformers installs its output-capturing hooks on a model's first forward, under a
    # threading.Lock that Dynamo breaks on: warm up eagerly so both compiles see the same code.
    logits(model, inputs)
    counter = torch._dynamo.testing.CompileCounter()
    logits(torch.compile(model, backend=counter), inputs)
    torch._dynamo.reset()
    logits(torch.compile(model, backend="mminference", options=DEBUG_DENSE), inputs)
    assert len(report.graphs) == counter.frame_count == 4  # LLaVA-OneVision's own 3 breaks
    # (fullgraph=True compiles with the backend: test_backend_options.py)


def test_new_video_length_recompiles_the_language_model_at_most_once(report):
    model, _ = build("llava_onevision")
    compiled = torch.compile(model, backend="mminference", options=DEBUG_DENSE)
    for frames in (4, 6, 8):
        _, inputs = llava_onevision(frames=frames)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        torch.testing.assert_close(logits(compiled, inputs), logits(model, inputs), atol=1e-5, rtol=1e-5)
    lm_graphs = [g for g in report.graphs if g.rewritten]
    assert len(lm_graphs) == 2  # static, then one dynamic-length graph that serves every later length
    assert all(len(g.rewritten) == LAYERS and not g.skipped for g in lm_graphs)
    assert report.runtime()["reasons"] == {DenseReason.FORCE_DENSE: 3 * LAYERS}
