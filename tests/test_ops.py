"""torch.ops.mminference.*: schema, fake tensors, compile without graph breaks, export, CPU fallback."""

import importlib.metadata

import pytest
import torch

import mmcompile.ops  # noqa: F401  (registers the ops)
from mmcompile.kernels import sparse_attention_reference
from mmcompile.kernels.index_factories import random_index
from mmcompile.ops import sparse_attention_op


def case(n=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, n, 64, generator=g)
    k = torch.randn(1, 2, n, 64, generator=g)
    v = torch.randn(1, 2, n, 64, generator=g)
    return q, k, v, random_index(1, 4, n, n, 0.4, max_columns=8, unaligned=True, generator=g)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.interpreter
def test_op_matches_reference_and_passes_opcheck():
    q, k, v, index = case()
    out, lse = sparse_attention_op(q, k, v, index)
    ref, ref_lse = sparse_attention_reference(q, k, v, index)
    assert rel_err(out, ref) < 2e-5
    args = (q, k, v, *index.tensors(), 0.125, 0, 0)
    torch.library.opcheck(torch.ops.mminference.sparse_attention.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.mminference.dense_attention.default, (q, k, v, 0.125, 0, 0),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.interpreter
def test_op_compiles_without_graph_break():
    q, k, v, index = case(seed=1)

    def layer(q, k, v, *idx):
        out, _ = torch.ops.mminference.sparse_attention(q * 2, k, v, *idx, 0.125, 0, 0)
        return out + 1

    explanation = torch._dynamo.explain(layer)(q, k, v, *index.tensors())
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, *index.tensors()), layer(q, k, v, *index.tensors()))


def test_op_survives_torch_export():
    q, k, v, index = case(seed=2)

    class Layer(torch.nn.Module):
        def forward(self, q, k, v, bc, bo, cc, ci):
            return torch.ops.mminference.sparse_attention_reference(q, k, v, bc, bo, cc, ci, None, None, None, None,
                                                                    64, 64, 0.125, 0, 0)[0]

    idx = index.tensors()[:4]
    ep = torch.export.export(Layer(), (q, k, v, *idx))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "mminference.sparse_attention_reference.default" in targets
    torch.testing.assert_close(ep.module()(q, k, v, *idx), Layer()(q, k, v, *idx))


def test_cpu_without_interpreter_falls_back_to_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, index = case(seed=3)
    out, _ = sparse_attention_op(q, k, v, index)
    ref, _ = sparse_attention_reference(q, k, v, index)
    assert rel_err(out, ref) < 1e-6


def test_backend_is_registered_by_entry_point():
    names = {ep.name for ep in importlib.metadata.entry_points(group="torch_dynamo_backends")}
    assert "mminference" in names
    assert "mminference" in torch._dynamo.list_backends(exclude_tags=())
