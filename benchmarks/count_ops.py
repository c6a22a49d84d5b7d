"""How many PyTorch ops one layer's estimate + policy + index issue, by the function that issues
them: the op is host-bound on Hopper (H100, 128K video: ~2600 kernel launches for the index, the
policy and the online op together, ~7 us of launch each; BENCHMARKS.md 2026-12-06), so the op count is what
to cut, and it can be counted on any machine.

Usage: python benchmarks/count_ops.py [--tokens 16384] [--layout video|mixed] [--top 25]

Counts ATen ops (view ops apart: they launch no kernel) under a ``TorchDispatchMode`` during one
``layer.prepare_layer`` on the planted input, after a warm call, and the host syncs among them
(``.item()``, ``nonzero``, copies to the host; on a CPU a ``.tolist()`` issues no op: run it on a
GPU to count those). On a CPU the estimation and column
compaction take their PyTorch paths (``kernels.placement``), which issue more ops than the GPU's
Triton kernels; the policy and index builders are the same code on both.
"""

from __future__ import annotations

import argparse
import collections
import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VIEWS = {"view", "unsqueeze", "slice", "expand", "select", "_unsafe_view", "squeeze", "permute", "t", "transpose",
         "as_strided", "alias", "detach", "split", "unbind", "reshape"}


class OpCounter(TorchDispatchMode):
    """Non-view ATen ops, per issuing function of mmcompile (the innermost frame in the package)."""

    def __init__(self):
        super().__init__()
        self.by_function = collections.Counter()
        self.syncs = collections.Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in VIEWS:
            self.views += 1
        else:
            frame = next((f for f in reversed(traceback.extract_stack()[:-1])
                          if f"{os.sep}mmcompile{os.sep}" in f.filename), None)
            where = f"{os.path.basename(frame.filename)}:{frame.name}" if frame else "?"
            self.by_function[where] += 1
            if _syncs(func, args, kwargs or {}):
                self.syncs[where] += 1
        return func(*args, **(kwargs or {}))


def _syncs(func, args, kwargs) -> bool:
    """Whether an op makes the host wait for the device: a scalar read, a data-dependent shape,
    or a copy from a device tensor to the host."""
    name = func.overloadpacket.__name__
    if name in ("_local_scalar_dense", "nonzero", "equal", "is_nonzero"):
        return True
    if name == "_to_copy":
        return args[0].device.type != "cpu" and str(kwargs.get("device")) == "cpu"
    return name == "copy_" and args[0].device.type == "cpu" and args[1].device.type != "cpu"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--layout", default="video", choices=("video", "mixed"))
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    from mmcompile.patterns import forward_context, layer
    from mmcompile.patterns.planted import planted_qkv, standard_layout

    device = "cuda" if torch.cuda.is_available() else "cpu"
    layout = standard_layout(args.layout, args.tokens)
    q, k, _, _ = planted_qkv(layout, 28, 4, 128, device, torch.float32, seed=0)
    ctx = forward_context(layout, args.tokens, 1, device, 128, 64)
    layer.prepare_layer(q, k, ctx)  # warm: caches built once per shape are not counted
    with OpCounter() as counter:
        layer.prepare_layer(q, k, ctx)
    total = sum(counter.by_function.values())
    print(f"prepare_layer ({args.layout}, {args.tokens} tokens, 28/4 heads, {device}): {total} ops, "
          f"{counter.views} view ops, {sum(counter.syncs.values())} host syncs {dict(counter.syncs)}")
    for name, count in counter.by_function.most_common(args.top):
        print(f"{count:6d}  {name}")


if __name__ == "__main__":
    main()
