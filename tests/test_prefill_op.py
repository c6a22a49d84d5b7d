"""torch.ops.mminference.prefill_attention: options as arguments, dense/sparse choice and its kinds,
decode alignment, key padding, the run-time fallback, gradients, inference mode, bad inputs; the
sparse path equals the reference of the indexes it built."""

import logging

import pytest
import torch
import torch.nn.functional as F

import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference.*)
from mmcompile.kernels import sparse_attention_reference
from mmcompile.kernels.index_factories import a_shape_index
from mmcompile.runtime import DenseReason, ForwardState, RuntimeOptions, forward_scope, track

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


def call(q, k, v, tag, layer=0, modality_ids=None, pad=None, **options):
    return op(q, k, v, modality_ids, pad, layer, 0.125, tag=tag, **options)


@pytest.mark.interpreter
def test_fixed_a_shape_equals_reference_of_the_pattern_library_index():
    """policy="a-shape" runs the pattern library's A-shape at the tuned 128 x 64 tiles."""
    stats = track("test-sparse")
    q, k, v = qkv(n=300)  # not a block multiple
    out = call(q, k, v, "test-sparse", layer=3, min_sparse_len=16, sink=64, local=64, policy="a-shape")
    index = a_shape_index(1, 4, 300, 64, 64, block_m=128, block_n=64)
    ref, _ = sparse_attention_reference(q, k, v, index, 0.125)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    assert out.is_contiguous()
    (rec,) = stats.records
    assert (rec.layer, rec.path, rec.reason, rec.detail, rec.n_q) == (3, "sparse", None, "a-shape", 300)
    assert rec.density == pytest.approx(float(index.density(300).mean()))  # one definition of density
    assert rec.density < 1.0 and (out - sdpa_causal(q, k, v, 0.125)).abs().max() > 1e-3  # keys really dropped


def _reference_of_indexes(q, k, v, indexes, scale):
    from mmcompile.kernels import groups_to_mask
    from mmcompile.kernels.reference import masked_attention

    n, group = q.shape[2], q.shape[1] // k.shape[1]
    mask = groups_to_mask(indexes, q.shape[1], n, n)
    ref, _ = masked_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), mask, scale)
    return ref


def _layer(q, k, v, layout, density, scale):
    """What the online path must compute: the one composition, on the same forward context."""
    from mmcompile.patterns import forward_context, layer_attention

    return layer_attention(q, k, v, forward_context(layout, q.shape[2], 1, "cpu"), density=density, scale=scale,
                           recall=RuntimeOptions().recall)


@pytest.mark.interpreter
def test_online_policy_equals_reference_of_its_indexes():
    from mmcompile.patterns import TEXT, from_segments
    from mmcompile.patterns.planted import planted_qkv

    stats = track("test-online")
    q, k, v, _ = planted_qkv(from_segments([[(TEXT, 700)]]), 4, 2, 64, kinds=["a-shape", "random"] * 2)
    out = call(q, k, v, "test-online", layer=1, min_sparse_len=16, density=0.3)
    result = _layer(q, k, v, None, 0.3, 0.125)
    torch.testing.assert_close(out, _reference_of_indexes(q, k, v, result.indexes, 0.125), atol=2e-5, rtol=2e-5)
    (rec,) = stats.records
    assert rec.path == "sparse" and rec.detail == "online" and rec.layout.source == "none (text-only)"
    assert rec.patterns == result.patterns and 0 < rec.density < 1  # some heads sparse
    assert torch.equal(rec.head_recall, result.head_recall) and rec.predicted_recall >= 0.95


@pytest.mark.interpreter
def test_annotated_layout_reaches_the_op():
    """mmcompile.annotate.modality: the op estimates per modality (Q-boundary heads) from it."""
    from mmcompile.annotate import modality
    from mmcompile.patterns import TEXT, VIDEO, from_segments
    from mmcompile.patterns.planted import planted_qkv

    layout = from_segments([[(TEXT, 128), (VIDEO, 512, 8, 8), (TEXT, 128)]])
    stats = track("test-annotated")
    options = dict(min_sparse_len=16, density=0.3)
    q, k, v, _ = planted_qkv(layout, 4, 2, 64, kinds=["boundary", "a-shape", "grid", "random"])
    with modality(layout=layout):
        out = call(q, k, v, "test-annotated", **options)
    result = _layer(q, k, v, layout, 0.3, 0.125)
    assert any(h.inter == "q-boundary" for h in result.patterns)
    torch.testing.assert_close(out, _reference_of_indexes(q, k, v, result.indexes, 0.125), atol=2e-5, rtol=2e-5)
    seen = stats.records[-1].layout
    assert seen.source == "annotation"
    # The annotated layout reaches the op whole: its frame geometry (8x8 frames) is kept.
    assert (seen.geometry, seen.frame_stride) == ("given", (64,))
    assert seen.tokens == {"text": 256, "video": 512}
    assert seen.segments == ((("video", 128, 512, 8, 8),),)
    with modality(mm_token_type_ids=layout.modality):  # ids alone: labels, no geometry (one frame)
        call(q, k, v, "test-annotated", **options)
    assert (stats.records[-1].layout.geometry, stats.records[-1].layout.frame_stride) == ("none", (512,))
    with modality(mm_token_type_ids=torch.zeros(1, 10, dtype=torch.int32)):  # another input's ids: ignored
        call(q, k, v, "test-annotated", **options)
    assert stats.records[-1].layout.source == "none (annotation shape mismatch)"
    with pytest.raises(ValueError, match="exactly one"):
        with modality():
            pass


@pytest.mark.parametrize("n_q", [232, 1, 5])  # prefill, decode step, chunk: queries are the LAST positions
def test_dense_paths_equal_sdpa(n_q):
    stats = track("test-dense")
    q, k, v = qkv(n_q=n_q, seed=1)
    out = call(q, k, v, "test-dense", force_dense=True)
    torch.testing.assert_close(out, sdpa_causal(q, k, v, 0.125), atol=2e-5, rtol=2e-5)
    assert stats.records[-1].reason is (DenseReason.FORCE_DENSE if n_q == 232 else DenseReason.DECODE_OR_CHUNK)


def test_short_prefill_is_dense_and_key_padding_uses_the_mask():
    stats = track("test-pad")
    q, k, v = qkv(n=40, seed=2)
    out = call(q, k, v, "test-pad", pad=torch.ones(1, 40, dtype=torch.long), min_sparse_len=64)
    torch.testing.assert_close(out, sdpa_causal(q, k, v, 0.125), atol=2e-5, rtol=2e-5)
    pad = torch.ones(1, 44, dtype=torch.long)  # longer than Nk: only the first Nk columns count
    pad[0, :3] = 0
    out = call(q, k, v, "test-pad", pad=pad, min_sparse_len=64)
    torch.testing.assert_close(out, sdpa_causal(q, k, v, 0.125, pad[:, :40]), atol=1e-6, rtol=1e-6)
    assert [r.reason for r in stats.records] == [DenseReason.SHORT, DenseReason.KEY_PADDING]


def test_padding_check_sees_a_new_tensor_and_an_in_place_edit_and_works_in_inference_mode():
    state = ForwardState()
    pad = torch.ones(1, 8)
    assert state.padding_all_ones(pad)
    pad[0, 0] = 0  # in-place edit bumps the version counter: the cache must not answer
    assert not state.padding_all_ones(pad)
    with torch.inference_mode():
        made_inside = torch.ones(1, 8)  # an inference tensor: no version counter
        assert state.padding_all_ones(made_inside)
        assert not state.padding_all_ones(torch.zeros(1, 8))


def test_options_travel_in_the_arguments_and_the_schema_checks():
    q, k, v = qkv(n=40, seed=3)
    torch.library.opcheck(op.default, (q, k, v, None, None, 0, 0.125), {"force_dense": True, "tag": "t"},
                          test_utils=("test_schema", "test_faketensor"))
    schema = str(op.default._schema)
    for arg in ("Tensor? modality_ids", "Tensor? key_padding_mask", "min_sparse_len=32768", 'policy="online"',
                "bool force_dense=False", "bool strict=False", 'str plan=""', 'str tag=""'):
        assert arg in schema
    out = call(q, k, v, "never-tracked")  # defaults: 40 < 32768 -> dense; no stats, no error
    torch.testing.assert_close(out, sdpa_causal(q, k, v, 0.125), atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="policy must be one of"):
        call(q, k, v, "t", policy="fancy")
    with pytest.raises(ValueError, match="plan argument is not JSON"):
        call(q, k, v, "t", plan="plan.json")


@pytest.mark.interpreter
def test_a_failure_in_index_building_runs_that_call_dense_with_one_log_line(monkeypatch, caplog):
    import mmcompile.patterns.layer_index as layer_index

    class IndexBuildingBroke(RuntimeError):
        pass

    def broken(*args, **kwargs):
        raise IndexBuildingBroke("injected")

    monkeypatch.setattr(layer_index, "launch_groups", broken)  # build_layer_indexes reads it too
    stats = track("test-fallback")
    q, k, v = qkv(n=300, seed=4)
    with caplog.at_level(logging.WARNING, logger="mmcompile.runtime.prefill"):
        outs = [call(q, k, v, "test-fallback", layer=i, min_sparse_len=16) for i in range(2)]
    for out in outs:
        torch.testing.assert_close(out, sdpa_causal(q, k, v, 0.125), atol=2e-5, rtol=2e-5)
    assert [r.reason for r in stats.records] == [DenseReason.SPARSE_FAILED] * 2
    assert "IndexBuildingBroke: injected" in stats.records[0].detail
    assert caplog.text.count("sparse attention of layer") == 1  # once, not per layer
    with pytest.raises(IndexBuildingBroke):
        call(q, k, v, "test-fallback", min_sparse_len=16, strict=True)


@pytest.mark.interpreter
def test_inference_mode_runs_sparse_and_equals_no_grad_with_a_published_layout():
    from mmcompile import annotate
    from mmcompile.patterns import VIDEO

    stats = track("test-inference")
    q, k, v = qkv(n=300, seed=5)
    ids = torch.full((1, 300), 5)
    ids[0, 40:260] = 9  # video placeholders
    outs = []
    for mode in (torch.no_grad, torch.inference_mode):
        with mode(), forward_scope(ForwardState()):
            annotate.publish_input_ids(ids.clone(), {9: VIDEO})  # made inside the mode, as a model does
            pad = torch.ones(1, 300, dtype=torch.long)
            outs.append([call(q, k, v, "test-inference", layer=i, pad=pad, min_sparse_len=16, density=0.3)
                         for i in range(2)])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert [r.path for r in stats.records] == ["sparse"] * 4
    assert {r.layout.source for r in stats.records} == {"input_ids placeholders"}
    assert {r.layout.tokens["video"] for r in stats.records} == {220}


def test_gradients_flow_as_sdpa_and_such_calls_run_dense():
    stats = track("test-grad")
    q, k, v = (t.requires_grad_() for t in qkv(n=300, seed=6))
    out = call(q, k, v, "test-grad", min_sparse_len=16)
    assert stats.records[-1].reason is DenseReason.REQUIRES_GRAD
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected = torch.autograd.grad(sdpa_causal(q, k, v, 0.125).square().sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_meta_and_mixed_device_inputs_raise_like_sdpa():
    q, k, v = qkv(n=40)
    with pytest.raises((ValueError, RuntimeError)):
        call(q, k.to("meta"), v, "t")
    with pytest.raises(ValueError, match="dtypes differ"):
        call(q, k.half(), v, "t")
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        call(q[:, :3], k, v, "t")
    meta = op(*(t.to("meta") for t in (q, k, v)), None, None, 0, 0.125)  # all meta: shapes only, as SDPA
    assert meta.device.type == "meta" and meta.shape == q.shape


@pytest.mark.interpreter
def test_published_layout_of_another_length_is_ignored_with_one_warning(caplog):
    """What the backend published for another input (here 10 tokens) never reaches a call of 232."""
    from mmcompile import annotate
    from mmcompile.patterns import VIDEO

    stats = track("test-published")
    q, k, v = qkv()
    annotate.publish_input_ids(torch.tensor([[1, 9, 9, 9, 9, 2, 3, 4, 5, 6]]), {9: VIDEO})
    with caplog.at_level("WARNING", logger="mmcompile.runtime.forward_state"):
        for layer in range(2):
            call(q, k, v, "test-published", layer=layer, min_sparse_len=16, density=0.3)
    assert [r.layout.source for r in stats.records] == ["none (input_ids placeholders shape mismatch)"] * 2
    assert caplog.text.count("does not match this call") == 1  # once per layout, not per layer


def test_log_once_logs_a_key_once_and_forgets_on_reset(caplog):
    from mmcompile._once import Once

    once, logger = Once(), logging.getLogger("test-once")
    with caplog.at_level(logging.WARNING, logger="test-once"):
        for _ in range(3):
            once.log(logger, logging.WARNING, "a", "first %s", "a")
        once.log(logger, logging.WARNING, "b", "first %s", "b")
        once.reset()
        once.log(logger, logging.WARNING, "a", "again %s", "a")
    assert caplog.text.count("first a") == 1 and "first b" in caplog.text and "again a" in caplog.text
