"""AOT export on a GPU (issue 13): an AOTInductor package of a bf16 language model with a video
layout input, built here, loaded in a fresh process, run at three lengths (one of them not a
block multiple); it equals the ``torch.compile(backend="mminference")`` path and the profiler sees
the sparse Triton kernel run inside it."""

import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

import mmcompile.annotate
from mmcompile.export import PrefillModule, export_prefill, package, preload_env
from mmcompile.patterns import TEXT, VIDEO, from_segments
from mmcompile.patterns.token_table import token_table

pytestmark = pytest.mark.gpu

OPTIONS = {"min_sparse_len": 512, "policy": "a-shape", "sink": 128, "local": 512}
LENGTHS = (1000, 2500, 4096)
KERNEL = "_sparse_attention_fwd"  # kernels/sparse_attention_fwd.py


def decoder():
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, attn_implementation="sdpa")
    with torch.device("cuda"):
        return transformers.Qwen2Model(cfg).to(torch.bfloat16).eval()


def layout(n):
    """A video of 2 x 2-token frames between a prompt and a question."""
    return from_segments([[(TEXT, 64), (VIDEO, n - 128, 2, 2), (TEXT, 64)]], device="cuda")


def inputs(n, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    embeds = torch.randn(1, n, 512, device="cuda", dtype=torch.bfloat16, generator=g)
    return embeds, torch.ones(1, n, dtype=torch.long, device="cuda"), token_table(layout(n))


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_aoti_package_in_a_fresh_process_equals_the_compiled_path(tmp_path):
    model = decoder()
    embeds, _, table = inputs(LENGTHS[0])
    exported = export_prefill(model, embeds, table, options=OPTIONS, max_len=8192)
    package(exported, tmp_path / "prefill.pt2")
    for n in LENGTHS:
        torch.save(inputs(n), tmp_path / f"inputs_{n}.pt")
    script = textwrap.dedent(f"""
        import torch
        from mmcompile.export import load_package
        prefill = load_package({str(tmp_path / 'prefill.pt2')!r})
        outs = []
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for n in {LENGTHS!r}:
                outs.append(prefill(*torch.load({str(tmp_path)!r} + f"/inputs_{{n}}.pt")))
            torch.cuda.synchronize()
        torch.save(outs, {str(tmp_path / 'outs.pt')!r})
        print([(r.path, r.layout.source, r.layout.geometry) for r in prefill.stats.records])
        print(sum(1 for e in prof.events() if {KERNEL!r} in e.name))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         env=preload_env())
    assert run.returncode == 0, run.stderr[-3000:]
    records, launches = run.stdout.strip().splitlines()[-2:]
    assert records == str([("sparse", "op argument", "given")] * 2 * len(LENGTHS))
    assert int(launches) >= 2 * len(LENGTHS)
    there = torch.load(tmp_path / "outs.pt")
    compiled = torch.compile(PrefillModule(model), backend="mminference", options=OPTIONS)
    for n, got in zip(LENGTHS, there):
        embeds, mask, table = inputs(n)
        with torch.no_grad(), mmcompile.annotate.modality(layout=layout(n)):
            want = compiled(embeds, mask, table)
        assert got.shape == want.shape
        assert rel_err(got, want) < 1e-2, (n, rel_err(got, want))
