"""AOT export on a GPU (issue 13): an AOTInductor package of the standard-shape language model with
a video layout input, loaded in a fresh process, against ``torch.compile(backend="mminference")``.

Usage: python benchmarks/export_aoti.py --out $OUT/export.json [--smoke] [--layers 4]
                                         [--lengths 32768,131072,262144] [--policy a-shape|online]
       TRITON_INTERPRET=1 python benchmarks/export_aoti.py --smoke --device cpu   # a dry run, no GPU

The parent process builds the model (Qwen2-style, 28 query / 4 KV heads, head dim 128, hidden 3584,
intermediate 18944, random weights, bf16), exports it with ``mmcompile.export.export_prefill``
(dynamic length; the layout, frame geometry included, as an input), packages it with AOTInductor
and records the build times. A fresh process (``--child``; ``LD_PRELOAD`` of the system libstdc++, the
``aoti_load_package`` trap) loads the package, rebuilds the same weights from the seed for the
compiled path, and per length: runs both on the same inputs (text prompt, video, question), compares
the outputs, times both (CUDA events after warmup; ``common.timed``), and profiles one package call
to show which kernels ran inside it (the sparse Triton kernel ``_sparse_attention_fwd`` among them).
Random weights carry no attention structure, so the default policy is the fixed A-shape budget
(``--policy online`` runs the recall-driven choice, which then keeps most heads dense).
``--smoke``: a tiny model and lengths, to check the pipeline in a minute (``--device cpu``: in the
Triton interpreter, fp32, wall-clock timing; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import environment, timed  # noqa: E402

KERNEL = "_sparse_attention_fwd"  # kernels/sparse_attention_fwd.py (dense and sparse paths)
PROMPT, QUESTION = 256, 512  # text tokens before and after the video (at most n/8 and n/4)


def settings(args) -> dict:
    device = dict(device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32")
    if args.smoke:  # the interpreter is ~1000x slower than a GPU: shorter still on the CPU
        lengths = [1024, 2048, 3000] if args.device == "cuda" else [300, 448, 600]
        return dict(device, preset="tiny", layers=2, lengths=lengths, frame=[4, 4],
                    options=dict(min_sparse_len=256, policy=args.policy, sink=64, local=128))
    lengths = [int(x) for x in args.lengths.split(",")]
    return dict(device, preset="standard", layers=args.layers, lengths=lengths, frame=[16, 16],
                options=dict(min_sparse_len=args.min_sparse_len, policy=args.policy, sink=128, local=args.local))


def layout(cfg, n: int):
    """Prompt, a video of whole frames (``cfg["frame"]`` tokens high and wide), question."""
    from mmcompile.patterns import TEXT, VIDEO, from_segments

    h, w = cfg["frame"]
    prompt = min(PROMPT, n // 8)
    video = (n - prompt - min(QUESTION, n // 4)) // (h * w) * (h * w)
    return from_segments([[(TEXT, prompt), (VIDEO, video, h, w), (TEXT, n - prompt - video)]], device=cfg["device"])


def inputs(cfg, n: int, hidden: int, seed: int = 0):
    """inputs_embeds, attention_mask, the layout as a [1, n, 3] table (id, frame h, frame w)."""
    from mmcompile.patterns.token_table import token_table

    device = cfg["device"]
    g = torch.Generator(device=device).manual_seed(seed + n)
    embeds = torch.randn(1, n, hidden, device=device, dtype=getattr(torch, cfg["dtype"]), generator=g) * 0.02
    return embeds, torch.ones(1, n, dtype=torch.long, device=device), token_table(layout(cfg, n))


def model_of(cfg):
    from mmcompile.export.presets import language_model

    return language_model(cfg["preset"], cfg["layers"], getattr(torch, cfg["dtype"]), cfg["device"])


def sync(cfg):
    if cfg["device"] == "cuda":
        torch.cuda.synchronize()


def time_ms(cfg, fn) -> float:
    if cfg["device"] == "cuda":
        return timed(fn)["ms"]
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[1]


def build(args, cfg) -> dict:
    from mmcompile.export import export_prefill, package

    model = model_of(cfg)
    embeds, _, table = inputs(cfg, min(cfg["lengths"]), model.config.hidden_size)
    start = time.perf_counter()
    exported = export_prefill(model, embeds, table, options=cfg["options"], max_len=max(cfg["lengths"]))
    export_s = time.perf_counter() - start
    print(exported.report.table(), flush=True)
    start = time.perf_counter()
    package(exported, args.package)
    return dict(export_s=export_s, package_s=time.perf_counter() - start,
                package_mb=os.path.getsize(args.package) / 2**20, rewritten_layers=len(exported.report.rewritten))


def kernel_profile(cfg, fn) -> dict:
    """One call under the profiler: launches and time of our kernel, the busiest kernels by name."""
    activity = torch.profiler.ProfilerActivity.CUDA if cfg["device"] == "cuda" else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        fn()
        sync(cfg)
    rows = []
    for e in prof.key_averages():
        device_us = getattr(e, "device_time_total", None)  # cuda_time_total before torch 2.4
        device_us = getattr(e, "cuda_time_total", 0) if device_us is None else device_us
        device_us = device_us or (e.cpu_time_total if cfg["device"] == "cpu" else 0)
        if device_us > 0:
            rows.append((e.key, e.count, device_us / 1e3))
    rows.sort(key=lambda r: -r[2])
    ours = [r for r in rows if KERNEL in r[0]]
    return dict(sparse_kernel_launches=sum(r[1] for r in ours), sparse_kernel_ms=sum(r[2] for r in ours),
                top_kernels=[dict(name=r[0][:80], calls=r[1], ms=round(r[2], 3)) for r in rows[:8]])


def child(args, cfg) -> dict:
    import mmcompile.annotate
    from mmcompile.export import PrefillModule, load_package

    start = time.perf_counter()
    prefill = load_package(args.child)
    load_s = time.perf_counter() - start
    model = model_of(cfg)  # same seed, same weights
    compiled = torch.compile(PrefillModule(model), backend="mminference", options=cfg["options"])
    rows = []
    for n in cfg["lengths"]:
        embeds, mask, table = inputs(cfg, n, model.config.hidden_size)
        annotation = layout(cfg, n)

        def run_compiled():
            with torch.no_grad(), mmcompile.annotate.modality(layout=annotation):
                return compiled(embeds, mask, table)

        def run_package():
            with torch.no_grad():
                return prefill(embeds, mask, table)

        start = time.perf_counter()
        want = run_compiled()  # compiles at the first length and once more for a dynamic length
        sync(cfg)
        compile_s = time.perf_counter() - start
        prefill.stats.reset()
        got = run_package()
        calls = list(prefill.stats.records)
        err = ((got.float() - want.float()).norm() / want.float().norm()).item()
        row = dict(tokens=n, first_compiled_call_s=compile_s, rel_err=err, max_abs_err=(got - want).abs().max().item(),
                   bitwise_equal=bool(torch.equal(got, want)), package_calls=[r.path for r in calls],
                   layout=calls[0].layout.geometry if calls and calls[0].layout else None,
                   package_density=sum(r.density for r in calls) / len(calls) if calls else None)
        del got, want
        row["compiled_ms"] = time_ms(cfg, run_compiled)
        row["package_ms"] = time_ms(cfg, run_package)
        row["package_over_compiled"] = row["package_ms"] / row["compiled_ms"]
        row.update(kernel_profile(cfg, run_package))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if cfg["device"] == "cuda":
            torch.cuda.empty_cache()
    return dict(load_s=load_s, runs=rows)


def table(results: dict) -> str:
    lines = ["| tokens | compiled ms | package ms | package/compiled | rel err | paths | density | "
             f"{KERNEL} launches (ms) |", "|---|---|---|---|---|---|---|---|"]
    for r in results.get("runs", []):
        paths = ",".join(sorted(set(r["package_calls"])))
        density = "n/a" if r["package_density"] is None else f"{r['package_density']:.3f}"
        lines.append(f"| {r['tokens']} | {r['compiled_ms']:.1f} | {r['package_ms']:.1f} | "
                     f"{r['package_over_compiled']:.3f} | {r['rel_err']:.2e} | {paths} | {density} | "
                     f"{r['sparse_kernel_launches']} ({r['sparse_kernel_ms']:.1f}) |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "export.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny model and lengths")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", default="32768,131072,262144")
    parser.add_argument("--policy", choices=("a-shape", "online"), default="a-shape")
    parser.add_argument("--local", type=int, default=4096, help="A-shape local window (tokens)")
    parser.add_argument("--min-sparse-len", type=int, default=16384)
    parser.add_argument("--package", default=None, help="where to write the .pt2 (default: a temporary dir)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run this package
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = settings(args)
    if args.child:
        with open(args.child_out, "w") as f:
            json.dump(child(args, cfg), f)
        return

    from mmcompile.export import preload_env

    results = dict(env=environment(), settings=cfg)
    print(results["env"], flush=True)
    tmp = tempfile.mkdtemp(prefix="mminference_export_")
    args.package = args.package or os.path.join(tmp, "prefill.pt2")
    results["build"] = build(args, cfg)
    print(results["build"], flush=True)
    child_out = os.path.join(tmp, "child.json")
    argv = [a for a in sys.argv[1:]] + ["--child", args.package, "--child-out", child_out]
    run = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv, env=preload_env())
    if run.returncode != 0:
        results["child_error"] = f"fresh process exited with {run.returncode}"
    else:
        with open(child_out) as f:
            results.update(json.load(f))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(table(results))
    print(f"wrote {args.out}")
    if run.returncode != 0:
        raise SystemExit(run.returncode)


if __name__ == "__main__":
    main()
