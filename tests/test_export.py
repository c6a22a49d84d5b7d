"""AOT export (issue 13) on the CPU: the language model of a real Qwen2-VL class (tiny config) exported
with a dynamic length and its modality layout as an input; the saved program, loaded in a fresh
process, equals the ``torch.compile`` path at two lengths; inputs that do not fit are rejected. The
AOTInductor package is built and loaded in ``test_export_gpu.py``."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mmcompile.annotate
from mmcompile.backend import MMInferenceBackend
from mmcompile.export import (ExportError, PrefillModule, export_prefill, load_program, prefill_ops,
                              save_program)
from mmcompile.patterns import TEXT as TEXT_ID, VIDEO as VIDEO_ID, from_segments
from mmcompile.patterns.specs import AShape, HeadPattern
from mmcompile.patterns.token_table import token_table
from mmcompile.plans import ModelShape, Plan, save_plan
from test_backend_models import TEXT, build

LENGTHS = (300, 236)  # 236: not a multiple of any block
# Video tokens [150, n - 6), frames of 2 x 4 tokens, some in the last 128-row query block.
VIDEO_START, TEXT_AFTER, FRAME = 150, 6, (2, 4)
# Video rows and text rows attend with different windows (a plan, so random weights cannot make
# the heads dense): a layout that did not reach the ops changes the result.
BY_MODALITY = HeadPattern("q-boundary", (("text", AShape(sink=16, local=32)), ("video", AShape(sink=16, local=96))))


def layout(n):
    return from_segments([[(TEXT_ID, VIDEO_START), (VIDEO_ID, n - VIDEO_START - TEXT_AFTER, *FRAME),
                           (TEXT_ID, TEXT_AFTER)]])


def inputs(n, seed=0):
    """(inputs_embeds, attention_mask, the layout as a [1, n, 3] table with frame geometry, positions)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, n, TEXT["hidden_size"], generator=g), torch.ones(1, n, dtype=torch.long),
            token_table(layout(n)), torch.arange(n)[None, None].expand(3, 1, n))  # M-RoPE positions (t, h, w)


@pytest.fixture(scope="module")
def vlm():
    model, _ = build("qwen2_vl")
    return model


@pytest.fixture(scope="module")
def options(vlm, tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    heads = (BY_MODALITY,) * TEXT["num_attention_heads"]
    layers = {layer: heads for layer in range(TEXT["num_hidden_layers"])}
    save_plan(Plan(ModelShape.of_config(vlm.config), layers), path)
    return {"min_sparse_len": 16, "recall": 0.0, "plan": str(path), "plan_sizes": "plan"}  # as written


@pytest.fixture(scope="module")
def exported(vlm, options):
    embeds, _, table, positions = inputs(LENGTHS[0])
    return export_prefill(vlm, embeds, table, position_ids=positions, options=options, max_len=4096)


def op_arguments(node) -> dict:
    names = [a.name for a in node.target._schema.arguments]
    return dict(zip(names, node.args), **node.kwargs)


def compiled_path(vlm, options, lengths):
    backend = MMInferenceBackend(dict(options, debug_uncompiled=True))
    compiled = torch.compile(PrefillModule(vlm.get_decoder()), backend=backend)
    outs = []
    for n in lengths:
        embeds, mask, table, positions = inputs(n)
        with torch.no_grad(), mmcompile.annotate.modality(layout=layout(n)):
            outs.append(compiled(embeds, mask, table, positions))
    return outs, backend.report


def test_program_keeps_the_ops_with_the_layout_input(exported):
    ops = prefill_ops(exported.program)
    assert len(ops) == TEXT["num_hidden_layers"] == len(exported.report.rewritten)
    args = [op_arguments(op) for op in ops]
    assert {a["modality_ids"].name for a in args} == {"mm_token_type_ids"}
    assert {(a["min_sparse_len"], a["recall"], a["tag"]) for a in args} == {(16, 0.0, exported.tag)}
    assert all(a["plan"] for a in args)  # each layer's patterns, from the plan file
    decomposed = exported.program.run_decompositions()  # what AOTInductor lowers: the ops stay whole
    targets = {str(n.target) for n in decomposed.graph.nodes if n.op == "call_function"}
    assert "mminference.prefill_attention.default" in targets
    assert not {t for t in targets if "softmax" in t or "scaled_dot_product" in t}


@pytest.mark.interpreter
def test_the_layout_input_changes_the_result(exported):
    embeds, mask, table, positions = inputs(LENGTHS[0])
    prefill = exported.program.module()
    with torch.no_grad():
        video = prefill(embeds, mask, table, positions)
        text = prefill(embeds, mask, torch.zeros_like(table), positions)
    assert (video - text).abs().max() > 1e-4


def test_a_layout_that_does_not_match_the_length_is_rejected(exported, tmp_path):
    embeds, mask, table, positions = inputs(LENGTHS[0])
    save_program(exported, tmp_path / "prefill.pt2")
    prefill = load_program(tmp_path / "prefill.pt2")
    with pytest.raises(ValueError, match=r"mm_token_type_ids must be \[batch, tokens, 3\].* = \[1, 300, 3\]"):
        prefill(embeds, mask, table[:, :-1], positions)
    with pytest.raises(ValueError, match=r"must be \[batch, tokens, 3\]"):
        prefill(embeds, mask, table[..., 0], positions)  # ids without the geometry it was exported with
    with pytest.raises(ValueError, match="unknown modality ids"):
        prefill(embeds, mask, table + torch.tensor([7, 0, 0], dtype=table.dtype), positions)
    with pytest.raises(Exception, match="mm_token_type_ids"):  # the program itself guards the length too
        exported.program.module()(embeds, mask, table[:, :-1], positions)


def test_a_model_without_sdpa_is_not_exported_dense():
    model, _ = build("qwen2_vl")
    model.set_attn_implementation("eager")
    embeds, _, table, positions = inputs(LENGTHS[1])
    with pytest.raises(ExportError, match="no attention was rewritten"):
        export_prefill(model, embeds, table, position_ids=positions, max_len=4096)



@pytest.mark.interpreter
def test_program_in_a_fresh_process_equals_the_compiled_path(vlm, options, exported, tmp_path):
    """The saved program in a fresh process. AOTInductor's package (a C++ build: ~40 s on CPU, too
    long for the suite) is built and loaded by the GPU test (tests/test_export_gpu.py)."""
    save_program(exported, tmp_path / "program.pt2")
    for n in LENGTHS:
        torch.save(inputs(n), tmp_path / f"inputs_{n}.pt")
    script = textwrap.dedent(f"""
        import torch
        from mmcompile.export import load_program
        outs = {{}}
        for name, load in (("program", load_program),):
            prefill = load({str(tmp_path)!r} + f"/{{name}}.pt2")
            with torch.no_grad():
                outs[name] = [prefill(*torch.load({str(tmp_path)!r} + f"/inputs_{{n}}.pt")) for n in {LENGTHS!r}]
            print(name, [(r.path, r.detail, r.layout.source, r.layout.geometry, r.layout.tokens, r.layout.frame_stride)
                         for r in prefill.stats.records])
        torch.save(outs, {str(tmp_path / 'outs.pt')!r})
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TRITON_INTERPRET="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    records = [("sparse", "plan", "op argument", "given",
                {"text": VIDEO_START + TEXT_AFTER, "video": n - VIDEO_START - TEXT_AFTER}, (FRAME[0] * FRAME[1],))
               for n in LENGTHS for _ in range(TEXT["num_hidden_layers"])]
    assert lines[-1:] == [f"program {records}"]
    there = torch.load(tmp_path / "outs.pt")
    compiled, report = compiled_path(vlm, options, LENGTHS)
    assert [r.path for r in report.runtime()["records"]] == ["sparse"] * len(records)
    for name in ("program",):
        for got, want in zip(there[name], compiled):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.interpreter
def test_the_cli_writes_a_program_that_loads_and_runs(tmp_path):
    from mmcompile.export import cli

    out = tmp_path / "tiny.pt2"
    cli.main(["--out", str(out), "--program", "--layers", "1", "--example-len", "64",
              "--option", "min_sparse_len=16", "--option", "policy=a-shape", "--option", "sink=16",
              "--option", "local=32"])
    prefill = load_program(out)
    embeds, mask, table, _ = inputs(LENGTHS[1])
    with torch.no_grad():
        hidden = prefill(embeds, mask, table[..., 0])  # exported with [B, N] ids
    assert hidden.shape == embeds.shape
    assert [(r.path, r.detail) for r in prefill.stats.records] == [("sparse", "a-shape")]


def test_inputs_are_checked_against_the_export_and_made_contiguous(exported):
    embeds, mask, table, positions = inputs(LENGTHS[0])
    arrange = exported.signature.arrange
    with pytest.raises(ValueError, match="position_ids is torch.int32, the prefill was exported for torch.int64"):
        arrange(embeds, mask, table, positions.int())
    with pytest.raises(ValueError, match="exported with position_ids"):
        arrange(embeds, mask, table)
    assert positions.stride(0) == 0  # a package reads its inputs with the example's strides
    assert all(t.is_contiguous() for t in arrange(embeds, mask, table, positions))
