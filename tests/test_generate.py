"""generate() through the backend, in each spelling a user writes: ``model.compile(backend=...)``
runs the sparse prefill and dense decode steps; ``torch.compile(model)``'s wrapper cannot (its
``generate`` is the original module's) and the backend says so once, with the spelling that works."""

import warnings

import pytest
import torch

from mmcompile import report as mm_report
from mmcompile.runtime import DenseReason, ForwardState, forward_scope
from mmcompile.spelling import GENERATE_HINT
from test_backend_models import LAYERS, qwen2_5_vl
from test_backend_options import qwen2_text

NEW_TOKENS = 3
# A-shape whose sink + local window covers the whole prompt: the sparse kernel runs and must give
# the eager tokens (greedy decoding amplifies any error into a different token).
FULL_BUDGET = {"debug_uncompiled": True, "min_sparse_len": 16, "policy": "a-shape", "sink": 64, "local": 64}


def _generate(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)


@pytest.fixture(scope="module")
def compiled_in_place():
    """One tiny Qwen2.5-VL with video (44 language-model tokens, 32 of them video): eager tokens,
    then ``model.compile(...)`` + ``generate()``, and the report of that run."""
    torch.manual_seed(0)
    model, inputs = qwen2_5_vl(frames=4, hw=8)
    expected = _generate(model, inputs)
    torch._dynamo.reset()
    report = mm_report.reset_report()
    with forward_scope(ForwardState()), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(backend="mminference", options=FULL_BUDGET)
        out = _generate(model, inputs)
    torch._dynamo.reset()
    return expected, out, report, [str(w.message) for w in caught if "mminference" in str(w.message)]


def test_model_compile_then_generate_runs_the_sparse_prefill(compiled_in_place):
    expected, out, report, mm_warnings = compiled_in_place
    assert torch.equal(out, expected)
    runtime = report.runtime()
    assert runtime["sparse_calls"] == LAYERS  # the prefill
    assert runtime["reasons"] == {DenseReason.DECODE_OR_CHUNK: (NEW_TOKENS - 1) * LAYERS}  # decode steps
    prefill = [r for r in runtime["records"] if r.path == "sparse"]
    # generate() encodes the video eagerly before the prefill: the grid never reaches a graph, the
    # frame geometry comes from the M-RoPE position_ids the prefill graph takes (4 x 4 tokens a frame).
    assert {(r.n_q, r.layout.source, r.layout.geometry) for r in prefill} == {
        (44, "input_ids placeholders", "position_ids (M-RoPE) for video")}
    assert prefill[0].layout.tokens["video"] == 32 and prefill[0].layout.frame_stride == (16,)
    assert prefill[0].layout.segments == ((("video", 7, 32, 4, 4),),)
    assert {e.causal_form for e in report.rewritten} == {"is_causal", "single_query"}
    assert not report.notes and not mm_warnings and not report.fallbacks


def test_the_summary_line_comes_before_the_table(compiled_in_place):
    _, _, report, _ = compiled_in_place
    rewritten = len(report.rewritten)
    assert rewritten == 3 * LAYERS and not report.skipped  # the prefill graph, two decode graphs
    assert report.summary() == f"{rewritten} attention calls, {rewritten} rewritten, 0 left: 100%"
    assert report.table().startswith(report.summary() + "\n")


def test_the_summary_sets_bidirectional_calls_apart_and_names_why_calls_were_left():
    from mmcompile.passes import SkipKind
    from mmcompile.report import AttentionEntry, GraphReport, Report
    from mmcompile.runtime import RuntimeStats

    def entry(kind=None):
        return AttentionEntry("sdpa", 0, "4/2", "8 x 8 x 16", "skipped" if kind else "rewritten", "", "", "",
                              kind.value if kind else "", kind)

    report = Report()
    report.graphs.append(GraphReport(0, "0/0", "t", RuntimeStats(), entries=[
        entry(), entry(), entry(), entry(SkipKind.FLOAT_MASK), entry(SkipKind.NON_CAUSAL), entry(SkipKind.NON_CAUSAL)]))
    assert report.summary() == ("4 attention calls, 3 rewritten, 1 left: 75% (left: 1 float mask); "
                                "2 bidirectional (vision) calls left as they are")


def test_torch_compile_wrapper_generate_is_named_once_with_the_working_spelling():
    report = mm_report.reset_report()
    model, ids = qwen2_text(seq=24)
    compiled = torch.compile(model, backend="mminference", options={"debug_uncompiled": True})
    with torch.no_grad():
        compiled.generate(input_ids=ids, max_new_tokens=2, do_sample=False)
    assert not report.graphs  # the wrapper's generate is the original module's: nothing compiled
    assert report.summary().startswith("0 graphs reached the mminference backend")
    assert "model.compile(backend='mminference')" in report.summary()
    with pytest.warns(UserWarning, match=r"For generate\(\), compile in place: model.compile\(backend='mminference'"):
        with torch.no_grad():
            compiled(input_ids=ids)  # a compiled call through the wrapper: the backend sees it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            compiled(input_ids=ids[:, :20].contiguous())  # a recompile: the note is not repeated
    assert report.notes == [GENERATE_HINT] and len(report.graphs) == 2
