"""Where one layer of the online op spends its time, phase by phase, in steady state: for each phase
the host time to issue it and the wall time until the GPU has finished it (a sync after each phase),
with the estimate and choice replayed from a CUDA graph (``choice_graph``) and eagerly.

Usage: python benchmarks/op_phases.py [--tokens 131072] [--layout video|mixed] [--reps 10] [--kernels 15]

Phases, as ``layer.layer_attention`` runs them: choose (estimate + the policy's tables, read in the
layer's host sync), index (``build_layer_indexes``), attend (the kernel launches), check (the
held-out recall and its sync; heads that miss are counted, not retried). A phase whose wall time
is close to its host time is bound by the host issuing ops; one whose wall time is well above it
is bound by the GPU. The syncs remove the overlap between phases, so the sum is above the op's
time; ``whole`` is ``layer_attention`` itself, without them. Medians of ``--reps`` after two warm
calls. ``--kernels K``: then the K GPU kernels of most total time in one eager layer (profiler);
``--stacks S``: the K ops of most GPU time instead, each with the S Python frames that issued it.
``--lines K``: then, for the eager choose and index phases apart, their GPU total and the K places of
most GPU time with their kernel counts: the two innermost mmcompile Python frames a launch ran
under where the profiler recorded them (torch 2.13 on a CPU does), else the kernel's name ("no
frame": torch 2.11 on the H100 recorded none; "unlinked": no launch event, Triton's launcher).
``--host K``: then the K functions of most host time in the index phase (cProfile over ``--reps``
calls, own time and cumulative; cProfile slows Python, so read the shares, not the ms).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import time

import torch

from mmcompile.patterns import choice_graph, forward_context, launch, layer, layer_index, policy, verify
from mmcompile.patterns.planted import planted_qkv, standard_layout

PHASES = ("choose", "index", "attend", "check")


def estimate_and_choose(q, k, ctx, scale):
    """The choose phase up to its host sync, as ``layer.choose_layer`` runs it (density 0.1)."""
    choose = functools.partial(policy.choice_tables, ctx=ctx, density=0.1, target=policy.TARGET, families=None)
    key = (tuple(q.shape), tuple(k.shape), q.dtype, q.device, scale, 0.1, None)
    return choice_graph.estimate_and_choose(q, k, ctx, scale, choose, key)


def read_patterns(tables, ctx):
    """The choose phase's host sync: the head patterns from the tables."""
    return policy.patterns_from_tables(policy.read_tables(tables, ctx), ctx, policy.MIN_RECALL, 0.1)[0]


def one_layer(q, k, v, ctx, scale):
    """{phase: (host ms, wall ms)} of one layer, plus the heads that missed the target."""
    times, clock = {}, time.perf_counter
    torch.cuda.synchronize()
    start = clock()
    estimates, tables = estimate_and_choose(q, k, ctx, scale)
    issued = clock()
    patterns = read_patterns(tables, ctx)
    times["choose"] = (issued - start, clock() - start)
    start = clock()
    indexes = layer_index.build_layer_indexes(q, k, patterns, ctx, scale, estimates)
    issued = clock()
    torch.cuda.synchronize()
    times["index"] = (issued - start, clock() - start)
    start = clock()
    _, lse = launch.attend(q, k, v, indexes, scale, return_lse=True)
    issued = clock()
    torch.cuda.synchronize()
    times["attend"] = (issued - start, clock() - start)
    start = clock()
    recall = verify.held_out_recall(lse, estimates, ctx, launch.dense_heads(indexes))
    issued = clock()
    missed = len((recall < 0.95).nonzero().flatten().tolist())
    times["check"] = (issued - start, clock() - start)
    return {name: (host * 1e3, wall * 1e3) for name, (host, wall) in times.items()}, missed


def whole_ms(q, k, v, ctx, scale) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    layer.layer_attention(q, k, v, ctx, scale=scale, recall=0.95)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--layout", default="video", choices=("video", "mixed"))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--kernels", type=int, default=0)
    parser.add_argument("--host", type=int, default=0)
    parser.add_argument("--lines", type=int, default=0, help="GPU time of the choose and index phases by source line")
    parser.add_argument("--stacks", type=int, default=0, help="with --kernels: group them by this many Python frames")
    parser.add_argument("--labels", action="store_true", help="with --lines: place kernels by labelled function")
    args = parser.parse_args()
    layout = standard_layout(args.layout, args.tokens)
    q, k, v, _ = planted_qkv(layout, 28, 4, 128, "cuda", torch.bfloat16, seed=0)
    scale = 128 ** -0.5
    rows = []
    for graphs in ("1", "0", "1", "0"):  # alternating, twice
        os.environ["MMINFERENCE_CUDA_GRAPHS"] = graphs
        ctx = forward_context(layout, args.tokens, 1, "cuda", 128, 64)  # a forward of its own: captures anew
        for _ in range(2):
            one_layer(q, k, v, ctx, scale)
        samples = [one_layer(q, k, v, ctx, scale) for _ in range(args.reps)]
        wholes = [whole_ms(q, k, v, ctx, scale) for _ in range(args.reps)]
        med = {p: tuple(statistics.median(s[0][p][i] for s in samples) for i in range(2)) for p in PHASES}
        rows.append((graphs, med, statistics.median(wholes), samples[-1][1]))
    print(f"{args.layout} {args.tokens} tokens, 28/4 heads: host ms / wall ms per phase (sync after each)")
    print("graphs | " + " | ".join(f"{p:>15}" for p in PHASES) + " | sum wall | whole (no syncs) | heads missed")
    for graphs, med, whole, missed in rows:
        cells = " | ".join(f"{med[p][0]:6.2f} / {med[p][1]:6.2f}" for p in PHASES)
        print(f"{graphs:>6} | {cells} | {sum(m[1] for m in med.values()):8.2f} | {whole:16.2f} | {missed}")
    if args.kernels:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if args.stacks else [])
        with profile(activities=activities, with_stack=bool(args.stacks)) as prof:
            one_layer(q, k, v, ctx, scale)  # the last context: eager
        if args.stacks:  # the ATen op that launched each kernel, with the frames that called it
            print(prof.key_averages(group_by_stack_n=args.stacks).table(
                sort_by="self_cuda_time_total", row_limit=args.kernels, max_name_column_width=40,
                max_src_column_width=90))
        else:
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.kernels,
                                            max_name_column_width=60))
    if args.lines:
        with labelled_functions() if args.labels else contextlib.nullcontext():
            gpu_time_by_line(q, k, ctx, scale, args.lines)
    if args.host:
        index_host_profile(q, k, ctx, scale, args.reps, args.host)


def gpu_time_by_line(q, k, ctx, scale, top: int) -> None:
    """The eager choose and index phases' GPU time per mmcompile source line (``--lines``)."""
    import collections

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    os.environ["MMINFERENCE_CUDA_GRAPHS"] = "0"
    state = {}

    def choose_phase():
        state["estimates"], tables = estimate_and_choose(q, k, ctx, scale)
        state["patterns"] = read_patterns(tables, ctx)

    def index_phase():
        layer_index.build_layer_indexes(q, k, state["patterns"], ctx, scale, state["estimates"])

    for phase_name, phase in (("choose", choose_phase), ("index", index_phase)):
        phase()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
            phase()
            torch.cuda.synchronize()
        totals, kernels = collections.Counter(), collections.Counter()
        events = list(prof.events())
        frames = sorted((e for e in events if ("mmcompile/" in e.name or e.name.startswith(LABEL))
                         and e.device_type == DeviceType.CPU),
                        key=lambda e: e.time_range.start)
        by_name, launches = collections.Counter(), collections.Counter()
        for event in events:  # every kernel by name; those a launch inside an mmcompile frame at that frame
            if event.device_type == DeviceType.CUDA and not event.name.startswith(LABEL):  # not a label's GPU span
                by_name[event.name[:60]] += event.time_range.end - event.time_range.start
                launches[event.name[:60]] += 1
            for kernel in event.kernels:
                inside = _innermost(frames, event)
                where = inside or f"[no frame: {kernel.name[:50]}]"
                totals[where] += kernel.duration
                kernels[where] += 1
                by_name[kernel.name[:60]] -= kernel.duration
                launches[kernel.name[:60]] -= 1
        for name, spent in by_name.items():  # kernels no launch event was linked to
            if spent > 0:
                totals[f"[unlinked: {name[:50]}]"] += spent
                kernels[f"[unlinked: {name[:50]}]"] += launches[name]
        print(f"--- {phase_name} phase, eager: GPU {sum(totals.values()) / 1e3:.2f} ms in {sum(kernels.values())} kernels")
        for where, spent in totals.most_common(top):
            print(f"{spent / 1e3:8.3f} ms {kernels[where]:5d}  {where}")


def _innermost(frames, event) -> str:
    """"frame < its caller" of the two innermost mmcompile Python frames (profiler events named
    "path(line): function", sorted by start) whose time span holds ``event``'s start, or ""."""
    at = event.time_range.start
    holding = [f for f in frames if f.time_range.start <= at <= f.time_range.end]
    holding.sort(key=lambda f: f.time_range.start, reverse=True)  # the latest-started is the innermost
    return " < ".join(f.name.split("mmcompile/")[-1] for f in holding[:2])


LABEL = "mm:"


@contextlib.contextmanager
def labelled_functions():
    """Every function defined in ``mmcompile.patterns`` wrapped in ``record_function("mm:module.name")``
    wherever a module of the package holds it (its own module and those that imported it by name),
    put back on exit. Only for profiling: a label costs a few microseconds of host time per call."""
    import sys
    import types

    from torch.profiler import record_function

    def wrap(fn, name):
        @functools.wraps(fn)
        def labelled(*args, **kwargs):
            with record_function(name):
                return fn(*args, **kwargs)
        return labelled

    modules = [m for name, m in list(sys.modules.items()) if name.startswith("mmcompile") and m is not None]
    wrappers = {}
    for module in modules:
        for value in vars(module).values():
            if (isinstance(value, types.FunctionType) and value.__module__.startswith("mmcompile.patterns")
                    and value not in wrappers):
                wrappers[value] = wrap(value, f"{LABEL}{value.__module__.rsplit('.', 1)[-1]}.{value.__name__}")
    replaced = []
    for module in modules:
        for attr, value in list(vars(module).items()):
            if isinstance(value, types.FunctionType) and value in wrappers:
                replaced.append((module, attr, value))
                setattr(module, attr, wrappers[value])
    try:
        yield
    finally:
        for module, attr, value in replaced:
            setattr(module, attr, value)


def index_host_profile(q, k, ctx, scale, reps: int, top: int) -> None:
    """cProfile of ``build_layer_indexes`` alone (the choice made once, outside it)."""
    import cProfile
    import pstats

    estimates, patterns, _ = layer.choose_layer(q, k, ctx, scale=scale)
    layer_index.build_layer_indexes(q, k, patterns, ctx, scale, estimates)
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(reps):
        layer_index.build_layer_indexes(q, k, patterns, ctx, scale, estimates)
    torch.cuda.synchronize()
    profiler.disable()
    for key in ("tottime", "cumulative"):
        print(f"--- index phase, host, by {key} ({reps} calls)")
        pstats.Stats(profiler).strip_dirs().sort_stats(key).print_stats(top)


if __name__ == "__main__":
    main()
