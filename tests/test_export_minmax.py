"""The torch 2.11 export failure of a GQA model (issue 13): HF's ``repeat_kv`` reshape left the guard
``min(D*seq, g*D*seq) == D*seq`` that failed the length's Dim (``mmcompile/export/_sym_minmax.py``).

The first test fails without the fix on torch 2.11 only (the GPU job's stack): torch 2.13 folds that
Min itself, and there the fix is a no-op. The others run the folding on either torch."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from mmcompile.export import _sym_minmax, export_prefill, prefill_ops
from mmcompile.export._sym_minmax import provable_minmax_folded
from mmcompile.export.presets import language_model


def test_a_gqa_language_model_exports_with_its_length_range():
    model = language_model("tiny", layers=2)  # 4 query heads, 2 KV heads: repeat_kv in every layer
    n = 232
    exported = export_prefill(model, torch.randn(1, n, 128), torch.zeros(1, n, dtype=torch.long),
                              options={"min_sparse_len": 16}, min_len=16, max_len=4096)
    assert len(prefill_ops(exported.program)) == 2
    ranges = [(int(r.lower), int(r.upper)) for r in exported.program.range_constraints.values()]
    assert ranges == [(16, 4096)]  # one dynamic length, neither specialized nor narrowed


@pytest.fixture
def seq():
    """A backed SymInt size (range [2, inf)), as torch.export makes for a dynamic dimension."""
    mode = FakeTensorMode(shape_env=ShapeEnv())
    context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC])
    return mode.from_tensor(torch.empty(300), symbolic_context=context).shape[0]


@pytest.fixture
def forced(monkeypatch):
    """The folding on, whatever this torch's Min does."""
    monkeypatch.setattr(_sym_minmax, "symbolic_minmax_folds", lambda: False)


def test_provable_min_and_max_fold_to_an_argument(seq, forced):
    with provable_minmax_folded():
        assert str(torch.sym_min(64 * seq, 256 * seq)) == str(64 * seq)  # the GPU test's guard
        assert str(torch.sym_max(64 * seq, 256 * seq)) == str(256 * seq)
        assert str(torch.sym_min(seq, 1)) == "1"  # a size is at least 2 here


def test_what_is_not_provable_stays_symbolic(seq, forced):
    with provable_minmax_folded():
        folded = str(torch.sym_min(seq, 4096))  # seq may be longer: Min stays
    assert folded == str(torch.sym_min(seq, 4096)) and "Min" in folded


def test_the_fold_is_undone_on_exit(forced):
    before = torch.sym_min, torch.sym_max
    with pytest.raises(RuntimeError), provable_minmax_folded():
        assert torch.sym_min is not before[0]
        raise RuntimeError("the export failed")
    assert (torch.sym_min, torch.sym_max) == before
