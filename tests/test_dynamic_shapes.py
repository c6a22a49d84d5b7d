"""``torch.compile(..., dynamic=True)`` rewrites as the static case does: Dynamo makes a module's
float attribute (HF's ``self.scaling``) a graph input read with ``.item()``, and that SymFloat is
the op's ``scale`` argument; under Inductor, its float specialisation restarts Dynamo's analysis,
which the backend lets through (it is control flow, not a failure to fall back from)."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from mmcompile import report as mm_report
from mmcompile.backend import compile_graph
from mmcompile.config import config_from_options
from mmcompile.passes import SkipKind
from mmcompile.runtime import DenseReason
from test_backend_options import LAYERS, qwen2_text
from test_generate import FULL_BUDGET


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_dynamic_true_rewrites_every_layer_and_serves_two_lengths_from_one_graph():
    report = mm_report.reset_report()
    model, ids = qwen2_text(seq=40)
    compiled = torch.compile(model, backend="mminference", options=FULL_BUDGET, dynamic=True)
    for n in (40, 33):
        inputs = {"input_ids": ids[:, :n].clone(memory_format=torch.contiguous_format)}
        torch.testing.assert_close(_logits(compiled, inputs), _logits(model, inputs), atol=1e-4, rtol=1e-4)
    (graph,) = report.graphs  # one graph with a symbolic length serves both
    assert len(graph.rewritten) == LAYERS and not graph.skipped
    assert all(e.shape.startswith("s") for e in graph.rewritten)  # "s27 x s27 x 16": a symbolic length
    assert report.runtime()["sparse_calls"] == 2 * LAYERS  # both lengths ran the sparse kernel


class _Attention(torch.nn.Module):
    """Heads split off the hidden size and the scale a float attribute, as HF attention modules do."""

    def __init__(self):
        super().__init__()
        self.scaling = 0.3

    def forward(self, x, y):
        q = x.view(x.shape[0], x.shape[1], 4, 16).transpose(1, 2)
        k = y.view(y.shape[0], y.shape[1], 2, 16).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, k, is_causal=True, scale=self.scaling, enable_gqa=True)


def test_dynamic_true_through_inductor_restarts_instead_of_falling_back():
    report = mm_report.reset_report()
    module = _Attention()
    compiled = torch.compile(module, backend="mminference", options={"force_dense": True}, dynamic=True)
    g = torch.Generator().manual_seed(0)
    for n in (24, 40):
        x, y = torch.randn(1, n, 64, generator=g), torch.randn(1, n, 32, generator=g)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
            out = compiled(x, y)
        torch.testing.assert_close(out, module(x, y), atol=1e-5, rtol=1e-5)
    (graph,) = report.graphs  # the attempt Dynamo restarted is not reported
    assert len(graph.rewritten) == 1 and graph.fallback is None
    assert report.runtime()["reasons"] == {DenseReason.FORCE_DENSE: 2}


def test_a_graph_valued_is_causal_is_left_alone_with_one_warning():
    report = mm_report.reset_report()

    def attention(q, k, v, causal):  # is_causal computed in the graph from a size
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    q = torch.randn(1, 2, 8, 16)
    gm = torch.fx.symbolic_trace(attention)
    for node in gm.graph.nodes:  # the fake values the passes read (Dynamo sets these)
        if node.op == "placeholder":
            node.meta["example_value"] = q if node.name != "causal" else True
        elif node.op == "call_function":
            node.meta["example_value"] = q
    config = config_from_options({"debug_uncompiled": True})
    with pytest.warns(UserWarning, match="attention left as SDPA: is_causal is a graph value"):
        compile_graph(gm, [q, q, q, True], config, report)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_graph(gm, [q, q, q, True], config, report)  # said once
    assert report.skipped_kinds() == {SkipKind.GRAPH_VALUE: 2} and len(report.notes) == 1
