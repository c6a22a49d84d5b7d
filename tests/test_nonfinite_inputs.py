"""A NaN or infinite value in q, k or v: the call runs dense (``DenseReason.NON_FINITE``) and equals
SDPA, NaN for NaN. A sparse index that skips a NaN key would give later rows finite numbers that no
dense model produces."""

import logging

import pytest
import torch
import torch.nn.functional as F

import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference.*)
from mmcompile.runtime import DenseReason, prefill, track
from mmcompile.runtime.decision import all_finite


def _qkv(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, h, n, 64, generator=g) for h in (4, 2, 2))


@pytest.mark.interpreter
@pytest.mark.parametrize("where,value", [("k", float("nan")), ("v", float("inf")), ("q", float("nan")),
                                         ("k", float("-inf"))])
def test_a_non_finite_input_runs_dense_and_equals_sdpa(where, value, caplog):
    q, k, v = _qkv()
    {"q": q, "k": k, "v": v}[where][0, 0, 300, 5] = value
    stats = track(f"nonfinite-{where}")
    out = torch.ops.mminference.prefill_attention(q, k, v, None, None, 0, 0.125, min_sparse_len=64, policy="a-shape",
                                                  sink=64, local=64, tag=f"nonfinite-{where}")
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125, enable_gqa=True)
    (record,) = stats.records
    assert (record.path, record.reason) == ("dense", DenseReason.NON_FINITE)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()
    torch.testing.assert_close(out.nan_to_num(0), ref.nan_to_num(0))
    prefill.reset_logged()  # logged once per process: this call logs it again
    with caplog.at_level(logging.WARNING, logger="mmcompile.runtime.prefill"):
        torch.ops.mminference.prefill_attention(q, k, v, None, None, 3, 0.125, min_sparse_len=64)
    assert any("NaN or inf in the q/k/v of layer 3" in r.getMessage() for r in caplog.records)


@pytest.mark.interpreter
def test_finite_inputs_still_run_sparse():
    q, k, v = _qkv()
    stats = track("finite")
    torch.ops.mminference.prefill_attention(q, k, v, None, None, 0, 0.125, min_sparse_len=64, policy="a-shape",
                                            sink=64, local=64, tag="finite")
    assert stats.records[-1].path == "sparse"


def test_all_finite_sees_one_bad_element_and_no_overflow_of_large_finite_values():
    big = torch.full((1, 2, 4096, 64), 3e4, dtype=torch.bfloat16)  # fp32 sum 7.9e9: finite
    assert all_finite(big, torch.zeros(3))
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.randn(1, 2, 333, 64)
        t[0, 1, 17, 3] = bad
        assert not all_finite(torch.zeros(2), t)
