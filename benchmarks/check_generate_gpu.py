"""GPU check of issue 15's paths through real Inductor (the CPU tests run the rewritten graphs
uncompiled): ``model.compile`` + ``generate()`` of the tiny LLaVA checkpoint folder and of a tiny
Qwen2.5-VL with video, and ``dynamic=True`` at two lengths. Prints one line per check and the
versions; exits non-zero when a check fails.

Usage: python benchmarks/check_generate_gpu.py
"""

from __future__ import annotations

import sys
import tempfile
import warnings

import torch
import transformers

from mmcompile import report as mm_report
from mmcompile import tiny_checkpoint as tiny

# A-shape whose window covers the whole prompt: the sparse kernel runs and greedy tokens must be eager's.
FULL = {"min_sparse_len": 16, "policy": "a-shape", "sink": 4096, "local": 4096}


def _generate(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=4, do_sample=False, **kw)


def check(name, model, inputs) -> bool:
    expected = _generate(model, inputs)
    torch._dynamo.reset()
    report = mm_report.reset_report()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(backend="mminference", options=FULL)
        out = _generate(model, inputs)
    rt = report.runtime()
    layout = next((r.layout for r in rt["records"] if r.path == "sparse"), None)
    fallbacks = report.fallbacks + [str(w.message) for w in caught if "failed" in str(w.message)]
    ok = torch.equal(out, expected) and rt["sparse_calls"] > 0 and not fallbacks
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {report.summary()}; sparse calls {rt['sparse_calls']}; "
          f"tokens {'equal' if torch.equal(out, expected) else 'DIFFER'}; "
          f"geometry {layout.geometry if layout else None}; fallbacks {fallbacks}")
    return ok


def check_dynamic() -> bool:
    cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    model = transformers.Qwen2ForCausalLM(cfg).eval().cuda().to(torch.bfloat16)
    torch._dynamo.reset()
    report = mm_report.reset_report()
    compiled = torch.compile(model, backend="mminference", options=FULL, dynamic=True)
    ok = True
    for n in (300, 500):
        ids = torch.randint(0, 256, (1, n), device="cuda")
        with torch.no_grad():
            err = (compiled(input_ids=ids).logits.float() - model(input_ids=ids).logits.float()).abs().max().item()
        ok &= err < 0.1
    ok &= len(report.graphs) == 1 and not report.fallbacks and report.runtime()["sparse_calls"] == 4
    print(f"{'ok  ' if ok else 'FAIL'} dynamic=True: {len(report.graphs)} graph(s), {report.summary()}, "
          f"sparse calls {report.runtime()['sparse_calls']}, max |logit err| {err:.3g}")
    return ok


def main() -> None:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        tiny.save_tiny_llava(folder)
        processor, model = tiny.load(folder)
    inputs = processor(images=tiny.synthetic_frames(16), text=tiny.prompt(16, "what moves"), return_tensors="pt")
    results.append(check("LLaVA folder generate()", model.cuda(), inputs.to("cuda")))
    sys.path.insert(0, "tests")
    from test_backend_models import qwen2_5_vl

    model, inputs = qwen2_5_vl(frames=4, hw=8)
    results.append(check("Qwen2.5-VL video generate()", model.cuda(), {k: v.cuda() for k, v in inputs.items()}))
    results.append(check_dynamic())
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
