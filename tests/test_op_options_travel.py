"""The op carries its own options: an exported rewritten graph runs with them in a fresh process,
two compiled models in one process keep theirs, and a VLM prefill under ``torch.inference_mode()``
runs sparse and equals the ``no_grad`` run (issue 10)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference.*)
from mmcompile.backend import MMInferenceBackend, _copy
from mmcompile.passes import find_attention, modality_source, rewrite_attention, state
from mmcompile.runtime import DenseReason
from test_backend_models import build

SPARSE = {"min_sparse_len": 16, "policy": "a-shape", "sink": 16, "local": 64}


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    return transformers.Qwen2ForCausalLM(cfg).eval()


class LM(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, embeds, mask):
        return self.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits


@pytest.mark.interpreter
def test_exported_rewritten_graph_runs_with_its_options_in_a_fresh_process(tmp_path):
    model, embeds, mask = LM(tiny_lm()), torch.randn(1, 300, 64), torch.ones(1, 300, dtype=torch.long)
    with torch.no_grad():
        gm = _copy(torch.export.export(model, (embeds, mask)).module())
        dense = model(embeds, mask)
    state(gm)["op_options"] = dict(SPARSE, tag="exported")
    for p in (find_attention, modality_source, rewrite_attention):
        p(gm, None)
    path = tmp_path / "rewritten.pt2"
    with torch.no_grad():
        here = gm(embeds, mask)
        torch.export.save(torch.export.export(gm, (embeds, mask)), path)
    torch.save((embeds, mask), tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch, mmcompile.ops
        from mmcompile.runtime import track
        stats = track("exported")
        program = torch.export.load({str(path)!r})
        with torch.no_grad():
            out = program.module()(*torch.load({str(tmp_path / 'inputs.pt')!r}))
        torch.save(out, {str(tmp_path / 'out.pt')!r})
        print([(r.path, r.detail) for r in stats.records])
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TRITON_INTERPRET="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == str([("sparse", "a-shape")] * 2)
    there = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(there, here, atol=1e-5, rtol=1e-5)
    assert (there - dense).abs().max() > 1e-4  # the options of the graph (a narrow window) really applied


@pytest.mark.interpreter
def test_two_compiled_models_keep_their_own_options():
    ids = torch.randint(0, 256, (1, 600))
    narrow_backend = MMInferenceBackend(dict(SPARSE, debug_uncompiled=True))
    dense_backend = MMInferenceBackend({"debug_uncompiled": True, "force_dense": True})
    first, second = tiny_lm(1), tiny_lm(1)
    narrow = torch.compile(first, backend=narrow_backend)
    dense = torch.compile(second, backend=dense_backend)
    with torch.no_grad():
        for _ in range(2):  # interleaved calls: each keeps its own options
            narrow_out, dense_out = narrow(input_ids=ids).logits, dense(input_ids=ids).logits
        eager = first(input_ids=ids).logits
    assert {(r.path, r.detail) for r in narrow_backend.report.runtime()["records"]} == {("sparse", "a-shape")}
    assert dense_backend.report.runtime()["reasons"] == {DenseReason.FORCE_DENSE: 4}
    torch.testing.assert_close(dense_out, eager, atol=1e-5, rtol=1e-5)
    assert (narrow_out - eager).abs().max() > 1e-4


@pytest.mark.interpreter
def test_vlm_video_prefill_under_inference_mode_runs_sparse_and_equals_no_grad():
    model, inputs = build("qwen2_5_vl")  # 44 language-model tokens, 32 of them video
    backend = MMInferenceBackend({"debug_uncompiled": True, "min_sparse_len": 16, "density": 0.5})
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        expected = compiled(**inputs).logits
    with torch.inference_mode():
        got = compiled(**{k: v.clone() for k, v in inputs.items()}).logits  # inputs made in the mode
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    records = backend.report.runtime()["records"]
    assert [r.path for r in records] == ["sparse"] * 4
    assert {r.layout.source for r in records} == {"input_ids placeholders"}
    assert {r.layout.geometry for r in records} == {"video_grid_thw (merge 2)"}
