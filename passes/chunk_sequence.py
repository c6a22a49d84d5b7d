"""Position-wise blocks in sequence chunks: a long prefill's MLPs and RMS norms run ``seq_chunk``
tokens at a time, so their intermediates ([N, 18944] x 3 in the MLP, an fp32 copy of [N, H] in each
norm: ~120 GB and 14 GB at 1M tokens) are bounded by the chunk, not by N (issue 14).

A block is the nodes of one module of a decoder layer (``layers.<i>.mlp``, ``layers.<i>.
input_layernorm``, ``layers.<i>.post_attention_layernorm``) or the final ``norm``, found by the
module paths Dynamo records (``nn_module_stack``). It is chunked when it has one input that is
the sequence ([B, N, ...], N static and at least twice the chunk), its other inputs are
parameters, and one output of the same length: each token's output then depends on that token's
row alone, so running the rows in pieces is exact up to the matmuls' blocking. The block's nodes
move into a submodule (``SequenceChunks``) called once in their place. Dynamic lengths and other
shapes are left alone (a note says why).
"""

from __future__ import annotations

import re

import torch
import torch.fx as fx

from ._types import PassResult

_BLOCK = re.compile(r"(\.layers\.\d+\.(mlp|input_layernorm|post_attention_layernorm)|\.norm)$")


class SequenceChunks(torch.nn.Module):
    """``body(x, *params)`` over pieces of ``chunk`` tokens along dim 1, concatenated."""

    def __init__(self, body: fx.GraphModule, chunk: int):
        super().__init__()
        self.body, self.chunk = body, chunk

    def forward(self, x, *params):
        return torch.cat([self.body(part, *params) for part in x.split(self.chunk, dim=1)], dim=1)


def _value(node):
    return node.meta.get("val", node.meta.get("example_value"))


def _blocks(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """Module path -> its nodes in graph order (the innermost matching path of each node)."""
    found: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        paths = [str(path) for path, _ in stack.values()]
        block = next((p for p in reversed(paths) if _BLOCK.search(p)), None)
        if block is not None:
            found.setdefault(block, []).append(node)
    return found


def _is_parameter(node: fx.Node) -> bool:
    return node.op == "get_attr" or (node.op == "placeholder" and "_parameters_" in node.name)


def _plan_block(nodes: list[fx.Node], chunk: int):
    """(sequence input, other inputs, output) when the block can run in chunks, else a reason."""
    inside = set(nodes)
    inputs = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in inside))
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]
    if len(outputs) != 1:
        return f"{len(outputs)} outputs"
    sequence = [a for a in inputs if not _is_parameter(a)]
    if len(sequence) != 1:
        return f"{len(sequence)} non-parameter inputs"
    x, out = _value(sequence[0]), _value(outputs[0])
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or x.dim() < 3 or out.dim() < 3:
        return "not a [B, N, ...] tensor"
    n = x.shape[1]
    if not isinstance(n, int) or out.shape[1] != n:
        return "dynamic or changing length"
    if n < 2 * chunk:
        return None  # short: nothing to gain
    return sequence[0], [a for a in inputs if a is not sequence[0]], outputs[0]


def _extract(gm: fx.GraphModule, nodes, inputs, output) -> fx.GraphModule:
    graph, env = fx.Graph(), {}
    for a in inputs:
        env[a] = graph.placeholder(a.name)
        env[a].meta = dict(a.meta)
    for n in nodes:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[output])
    return fx.GraphModule(gm, graph)


def chunk_sequence(gm: fx.GraphModule, config) -> PassResult:
    result = PassResult("chunk_sequence")
    chunk = getattr(config, "seq_chunk", 0)
    if not chunk:
        result.notes.append("off (seq_chunk=0)")
        return result
    graph, done = gm.graph, 0
    for path, nodes in _blocks(gm).items():
        planned = _plan_block(nodes, chunk)
        if planned is None:
            continue
        if isinstance(planned, str):
            result.notes.append(f"{path}: left whole ({planned})")
            continue
        x, params, output = planned
        name = f"mminference_chunks_{done}"
        gm.add_submodule(name, SequenceChunks(_extract(gm, nodes, [x] + params, output), chunk))
        with graph.inserting_after(output):
            call = graph.call_module(name, (x, *params))
        value = _value(output)
        for key in ("val", "example_value"):
            if key in output.meta:
                call.meta[key] = value.new_empty(value.shape)  # a fresh value, never the replaced node's
        output.replace_all_uses_with(call)
        for n in reversed(nodes):
            graph.erase_node(n)
        done += 1
    if done:
        graph.lint()
        gm.recompile()
    result.changed = bool(done)
    result.counts["chunked_blocks"] = done
    return result
