"""AOT export on a GPU (issue 13): an AOTInductor package of the standard-shape language model with
a video layout input, loaded in a fresh process, against ``torch.compile(backend="mminference")``.

Usage: python benchmarks/export_aoti.py --out DIR [--smoke] [--layers 4] [--export-only]
                                         [--lengths 32768,131072,262144] [--policy a-shape|online]
       python benchmarks/export_aoti.py --out DIR --device cpu --export-only --lengths 1024,4096   # CPU dry run
       TRITON_INTERPRET=1 python benchmarks/export_aoti.py --out DIR --smoke --device cpu   # all of it, tiny

Writes ``DIR/export_aoti.json`` (environment, settings, build and load times, one row per length)
and ``DIR/export_aoti.txt`` (the same as a short table). The package goes to a temporary directory
(``--package`` to keep it), removed at the end. On an H200 the default run takes about 3-4 minutes:
export ~10 s, AOTInductor build ~1-2 min, then the fresh process (load, two compiles of the
``torch.compile`` path, per length ~8 timed calls of each path, one profiled call).

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
Triton interpreter, fp32, wall-clock timing; its numbers mean nothing). ``--export-only``: the
export step alone (the real shapes, bf16: nothing runs), the check that tracing works on a stack
before a GPU is spent on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import environment, timed  # noqa: E402

KERNEL = "_sparse_attention_fwd"  # kernels/sparse_attention_fwd.py (dense and sparse paths)
PROMPT, QUESTION = 256, 512  # text tokens before and after the video (at most n/8 and n/4)


def settings(args) -> dict:
    runs = args.device == "cpu" and not args.export_only  # the interpreter's CPU kernels take fp32
    device = dict(device=args.device, dtype="float32" if runs else "bfloat16")
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
    from mmcompile.export import export_prefill, package, prefill_ops

    start = time.perf_counter()
    model = model_of(cfg)
    embeds, _, table = inputs(cfg, min(cfg["lengths"]), model.config.hidden_size)
    model_s = time.perf_counter() - start
    start = time.perf_counter()
    exported = export_prefill(model, embeds, table, options=cfg["options"], max_len=max(cfg["lengths"]))
    export_s = time.perf_counter() - start
    print(exported.report.table(), flush=True)
    ranges = [[int(r.lower), int(r.upper)] for r in exported.program.range_constraints.values()]
    out = dict(model_s=model_s, export_s=export_s, rewritten_layers=len(exported.report.rewritten),
               program_ops=len(prefill_ops(exported.program)), length_ranges=ranges)
    if args.export_only:
        return out
    del model  # the program holds the weights; the fresh process builds its own
    start = time.perf_counter()
    package(exported, args.package)
    return dict(out, package_s=time.perf_counter() - start, package_mb=os.path.getsize(args.package) / 2**20)


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
    """The text file: versions, build, one row per length, the busiest kernels of the longest."""
    env, b = results["env"], results.get("build", {})
    lines = [f"{env['gpu']}, driver {env['driver']}, torch {env['torch']}, triton {env['triton']}, {env['date']}",
             f"{results['settings']['preset']} x {results['settings']['layers']} layers, "
             f"{results['settings']['dtype']}, options {results['settings']['options']}"]
    if b:
        lines.append(f"export {b['export_s']:.1f} s ({b['program_ops']} ops of {b['rewritten_layers']} layers, "
                     f"length range {b['length_ranges']})")
    if "package_s" in b:
        lines.append(f"AOTInductor package {b['package_s']:.1f} s, {b['package_mb']:.0f} MiB; "
                     f"load in a fresh process {results.get('load_s', float('nan')):.1f} s")
    lines += [results[key] for key in ("error", "child_error") if key in results]
    runs = results.get("runs", [])
    if runs:
        lines += ["", "| tokens | compiled ms | package ms | package/compiled | rel err | paths | density | "
                  f"{KERNEL} launches (ms) |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        paths = ",".join(sorted(set(r["package_calls"])))
        density = "n/a" if r["package_density"] is None else f"{r['package_density']:.3f}"
        lines.append(f"| {r['tokens']} | {r['compiled_ms']:.1f} | {r['package_ms']:.1f} | "
                     f"{r['package_over_compiled']:.3f} | {r['rel_err']:.2e} | {paths} | {density} | "
                     f"{r['sparse_kernel_launches']} ({r['sparse_kernel_ms']:.1f}) |")
    if runs:
        lines += ["", f"busiest kernels of one package call at {runs[-1]['tokens']} tokens:"]
        lines += [f"  {k['ms']:9.3f} ms  {k['calls']:4d}x  {k['name']}" for k in runs[-1]["top_kernels"]]
    lines.append(f"total {results['wall_s']:.0f} s")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."),
                        help="directory for export_aoti.json and export_aoti.txt (default: $OUT, else .)")
    parser.add_argument("--smoke", action="store_true", help="tiny model and lengths")
    parser.add_argument("--export-only", action="store_true", help="the export step alone: no package, no runs")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", default="32768,131072,262144")
    parser.add_argument("--policy", choices=("a-shape", "online"), default="a-shape")
    parser.add_argument("--local", type=int, default=4096, help="A-shape local window (tokens)")
    parser.add_argument("--min-sparse-len", type=int, default=16384)
    parser.add_argument("--package", default=None, help="where to write the .pt2 (default: a temporary dir, removed)")
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

    start = time.perf_counter()
    results = dict(env=environment(), settings=cfg)
    print(results["env"], flush=True)
    tmp = tempfile.mkdtemp(prefix="mminference_export_")
    args.package = args.package or os.path.join(tmp, "prefill.pt2")
    returncode = 0
    try:
        results["build"] = build(args, cfg)
        print(results["build"], flush=True)
        if not args.export_only:
            child_out = os.path.join(tmp, "child.json")
            argv = sys.argv[1:] + ["--child", args.package, "--child-out", child_out]
            command = [sys.executable, os.path.abspath(__file__)] + argv
            returncode = subprocess.run(command, env=preload_env()).returncode
            if returncode != 0:
                results["child_error"] = f"fresh process exited with {returncode}"
            else:
                with open(child_out) as f:
                    results.update(json.load(f))
    except Exception as e:  # noqa: BLE001 - recorded in the results, then the exit status says so
        traceback.print_exc()
        results["error"], returncode = f"build failed: {type(e).__name__}: {e}"[:4000], 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the package too, unless --package put it elsewhere
    results["wall_s"] = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    paths = [os.path.join(args.out, f"export_aoti.{ext}") for ext in ("json", "txt")]
    with open(paths[0], "w") as f:
        json.dump(results, f, indent=1)
    text = table(results)
    with open(paths[1], "w") as f:
        f.write(text + "\n")
    print(text)
    print("wrote " + " and ".join(paths))
    if returncode != 0:
        raise SystemExit(returncode)


if __name__ == "__main__":
    main()
