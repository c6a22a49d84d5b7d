"""The backend around the passes: options, fallback on a failing pass, strict mode, key padding at
run time, dumps, the report object, and the one chain to real Inductor. A tiny transformers Qwen2
text model (2 layers, GQA 4/2) keeps each compile to one graph."""

import warnings

import pytest
import torch
import transformers

import mmcompile.passes
from mmcompile import report as mm_report
from mmcompile.backend import MMInferenceBackend
from mmcompile.config import BackendConfig, config_from_options, valid_keys
from mmcompile.runtime import DenseReason

LAYERS = 2


def qwen2_text(seq=40, seed=0):
    cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=1024, attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    ids = torch.randint(0, 256, (1, seq), generator=torch.Generator().manual_seed(seed))
    return model, ids


def run(model, **inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def report():
    return mm_report.reset_report()


# --- options ---------------------------------------------------------------------------------

def test_unknown_option_lists_valid_keys():
    with pytest.raises(ValueError, match="valid keys: plan, min_sparse_len") as err:
        config_from_options({"min_sparse_length": 16})
    assert "min_sparse_length" in str(err.value) and all(k in str(err.value) for k in valid_keys())
    compiled = torch.compile(lambda x: x + 1, backend="mminference", options={"bogus": 1})
    with pytest.raises(Exception, match="unknown mminference option.*bogus.*valid keys"):
        compiled(torch.ones(2))


@pytest.mark.parametrize("options, message", [
    ({"min_sparse_len": "long"}, "'min_sparse_len' must be a non-negative int"),
    ({"strict": 1}, "'strict' must be a bool"),
    ({"plan": "no_such_plan.json"}, "cannot read plan no_such_plan.json"),
])
def test_bad_option_values_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        config_from_options(options)


def test_defaults_and_dump_dir_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("MMINFERENCE_DUMP_DIR", raising=False)
    assert config_from_options(None) == BackendConfig()
    assert BackendConfig().min_sparse_len == 32768 and not BackendConfig().strict
    monkeypatch.setenv("MMINFERENCE_DUMP_DIR", str(tmp_path))
    assert config_from_options({}).dump_dir == str(tmp_path)
    assert config_from_options({"dump_dir": "elsewhere"}).dump_dir == "elsewhere"


# --- fallback ----------------------------------------------------------------------------------

def _failing_pass(gm, config):
    raise RuntimeError("injected failure")


def test_failing_pass_warns_names_it_and_compiles_the_unmodified_graph(monkeypatch, report):
    monkeypatch.setattr(mmcompile.passes, "rewrite_attention", _failing_pass)
    model, ids = qwen2_text()
    expected = run(model, input_ids=ids)
    compiled = torch.compile(model, backend="mminference", options={"debug_uncompiled": True})
    with pytest.warns(RuntimeWarning, match="pass 'rewrite_attention' failed.*injected failure"):
        out = run(compiled, input_ids=ids)
    torch.testing.assert_close(out, expected)
    (graph,) = report.graphs
    assert graph.fallback == "pass 'rewrite_attention': RuntimeError: injected failure" and not report.rewritten
    assert report.runtime()["dense_calls"] == 0  # the original SDPA ran, not the op


def test_strict_reraises(monkeypatch, report):
    monkeypatch.setattr(mmcompile.passes, "find_attention", _failing_pass)
    model, ids = qwen2_text()
    compiled = torch.compile(model, backend="mminference", options={"debug_uncompiled": True, "strict": True})
    with pytest.raises(Exception, match="injected failure"):
        run(compiled, input_ids=ids)


# --- key padding, dumps, report object --------------------------------------------------------

def test_left_padding_runs_the_masked_dense_path_and_matches_eager(report):
    model, ids = qwen2_text()
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    expected = run(model, input_ids=ids, attention_mask=mask)
    compiled = torch.compile(model, backend="mminference", options={"debug_uncompiled": True})
    out = run(compiled, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert [e.causal_form for e in report.rewritten] == ["hf_bool_mask"] * LAYERS
    assert report.runtime()["reasons"] == {DenseReason.KEY_PADDING: LAYERS}


def test_dump_dir_writes_code_per_pass_and_the_report_table(tmp_path, report, monkeypatch):
    artifacts = []

    def trace_structured(kind, metadata_fn=dict, **kwargs):
        name = metadata_fn().get("name", "") if kind == "artifact" else ""
        if name.startswith("mminference"):
            artifacts.append(name)

    monkeypatch.setattr(torch._logging, "trace_structured", trace_structured)
    model, ids = qwen2_text()
    compiled = torch.compile(model, backend="mminference",
                             options={"debug_uncompiled": True, "force_dense": True, "dump_dir": str(tmp_path)})
    run(compiled, input_ids=ids, attention_mask=torch.ones_like(ids))
    (graph_dir,) = tmp_path.iterdir()
    names = sorted(p.name for p in graph_dir.iterdir())
    assert names == ["00_original.py", "01_after_find_attention.py", "02_after_modality_source.py",
                     "03_after_rewrite_attention.py", "04_after_chunk_sequence.py", "report.md"]
    def code(name):  # without the "# File: ..., code: ..." source comments
        text = (graph_dir / name).read_text()
        return "\n".join(line for line in text.splitlines() if not line.strip().startswith("#"))

    before, after = code("00_original.py"), code("03_after_rewrite_attention.py")
    assert "scaled_dot_product_attention" in before and "b8[1, 1, 40, 40]" in before
    assert after.count("mminference.prefill_attention") == LAYERS
    # The [B,1,S,S] mask subgraph and the repeat_kv copies are gone: no S x S tensor is ever built.
    assert "scaled_dot_product_attention" not in after and "b8[1, 1, 40, 40]" not in after
    assert ".expand(1, 2, 2, 40, 16)" in before and ".expand(1, 2, 2, 40, 16)" not in after
    table = (graph_dir / "report.md").read_text()
    assert "| rewritten | hf_bool_mask | repeat_kv undone | at run time (annotation or published inputs; else text-only) |" in table
    assert artifacts == ["mminference_original", "mminference_after_find_attention",
                         "mminference_after_modality_source", "mminference_after_rewrite_attention",
                         "mminference_after_chunk_sequence", "mminference_report"]  # the same text goes to the structured trace (tlparse)


def test_backend_object_keeps_its_own_report(report):
    model, ids = qwen2_text()
    backend = MMInferenceBackend({"debug_uncompiled": True, "force_dense": True})
    run(torch.compile(model, backend=backend, fullgraph=True), input_ids=ids)  # the backend adds no break
    assert len(backend.report.rewritten) == LAYERS and not report.graphs
    assert backend.report.runtime()["reasons"] == {DenseReason.FORCE_DENSE: LAYERS}
    assert "| attn_output | 0 | 4/2 | 40 x 40 x 16 | rewritten | is_causal | enable_gqa |" in backend.report.table()


# --- Inductor ---------------------------------------------------------------------------------

def test_chains_to_inductor(report):
    """The only test that runs compile_fx (a cold C++ compile of this model takes ~8 s)."""
    model, ids = qwen2_text()
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    expected = run(model, **inputs)
    compiled = torch.compile(model, backend="mminference", options={"force_dense": True}, fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
        out = run(compiled, **inputs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert len(report.rewritten) == LAYERS and not report.fallbacks
    assert report.runtime()["dense_calls"] == LAYERS


@pytest.mark.parametrize("options,message", [({"policy": "magic"}, "'policy' must be one of"),
                                             ({"density": 0}, "'density' must be a number in"),
                                             ({"density": 1.5}, "'density' must be a number in"),
                                             ({"density": True}, "'density' must be a number in")])
def test_bad_policy_options_are_rejected(options, message):
    from mmcompile.config import config_from_options

    with pytest.raises(ValueError, match=message):
        config_from_options(options)
