"""layer_attention on a GPU in bf16 against a float32 reference of the same indexes."""

import traceback
import warnings

import pytest
import torch

from mmcompile.kernels import groups_to_mask
from mmcompile.kernels.reference import masked_attention
from mmcompile.patterns import TEXT, VIDEO, forward_context, from_segments, layer_attention
from mmcompile.patterns.planted import planted_qkv
from mmcompile.patterns.policy import choose_patterns

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("segments", [[(TEXT, 512), (VIDEO, 4096, 8, 8), (TEXT, 512)], [(TEXT, 5000)]])
def test_policy_layer_matches_reference_bf16(segments):
    layout = from_segments([segments])
    n = layout.length
    q, k, v, _ = planted_qkv(layout, 8, 2, 128, "cuda", torch.bfloat16)
    ctx = forward_context(layout, n, 1, "cuda")
    heads = choose_patterns(q, k, ctx, density=0.2)
    result = layer_attention(q, k, v, ctx, heads)
    out, indexes = result.out, result.indexes
    group = q.shape[1] // k.shape[1]
    mask = groups_to_mask(indexes, q.shape[1], n, n)
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    for h in range(q.shape[1]):
        ref, _ = masked_attention(q[:, [h]].float(), kk[:, [h]].float(), vv[:, [h]].float(), mask[:, [h]])
        err = ((out[:, [h]].float() - ref).norm() / ref.norm()).item()
        assert err < 1e-2, (h, err)


def test_planted_input_is_the_cpu_draw_on_the_gpu():
    """A GPU benchmark of a seed runs the input a CPU probe of that seed analyses."""
    layout = from_segments([[(TEXT, 256), (VIDEO, 2048, 8, 8), (TEXT, 256)]])
    on_gpu = planted_qkv(layout, 4, 1, 64, "cuda", torch.bfloat16, seed=2, periodic_frames=4)[:3]
    on_cpu = planted_qkv(layout, 4, 1, 64, None, torch.bfloat16, seed=2, periodic_frames=4)[:3]
    assert all(a.is_cuda and torch.equal(a.cpu(), b) for a, b in zip(on_gpu, on_cpu))


def test_missing_rows_run_dense_alone_bf16():
    """The check's rows-alone launch (``q_order`` without ``k_order``, a causal span) in bf16:
    unstructured heads whose text rows get a narrow window run those rows dense, their video rows
    keep a window covering every key; the output equals float32 dense attention."""
    from mmcompile.patterns.specs import AShape, HeadPattern

    layout = from_segments([[(TEXT, 512), (VIDEO, 4096, 8, 8), (TEXT, 700)]])
    n = layout.length
    q, k, v, _ = planted_qkv(layout, 4, 2, 128, "cuda", torch.bfloat16, kinds=["random"] * 4)
    ctx = forward_context(layout, n, 1, "cuda")
    split = HeadPattern("q-boundary", (("text", AShape(64, 64)), ("video", AShape(64, n))))
    result = layer_attention(q, k, v, ctx, [split] * 4, recall=0.95)
    assert all(type(head.pattern_for("text")).__name__ == "Dense" for head in result.patterns), result.patterns
    assert result.indexes[-1][1].q_order.shape[-1] == 1212  # the text rows alone
    kk, vv = k.repeat_interleave(2, 1).float(), v.repeat_interleave(2, 1).float()
    ref, _ = masked_attention(q.float(), kk, vv, torch.ones(1, 1, n, n, dtype=torch.bool, device="cuda").tril())
    err = ((result.out.float() - ref).norm() / ref.norm()).item()
    assert err < 1e-2, err

@pytest.mark.parametrize("step", [1, 2, 0], ids=["consecutive", "spread", "irregular"])
def test_line_scores_kernel_matches_pytorch_bf16(step):
    """The Triton estimation passes against the PyTorch path (bf16 scores there) on a GPU."""
    from mmcompile.patterns.estimate import last_queries, line_scores, row_step
    n = 20000
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 2, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    modality = torch.zeros(1, n, dtype=torch.int32, device="cuda")
    modality[0, :100] = -1  # left padding
    if step == 0:
        modality[0, 5000:19000:7] = 2
    pos, valid = last_queries(modality, n, 1, want=2 if step == 0 else None, step=max(step, 1))
    assert row_step(pos, valid) == step
    args = (q, k, pos, valid, 128 ** -0.5, modality == -1, int(pos.min()), step)
    fast, slow = line_scores(*args, use_kernel=True), line_scores(*args, use_kernel=False)
    for name in ("vertical", "slash"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert ((a - b).norm() / b.norm()).item() < 2e-2, name
    torch.testing.assert_close(fast.lse, slow.lse, rtol=1e-2, atol=2e-2)


def test_dense_rows_kernel_matches_pytorch_bf16():
    """The held-out check's dense rows (lse and output) from the Triton pass, against the PyTorch
    path on the same bf16 inputs (fp32 there), over many key splits."""
    from mmcompile.patterns.verify import dense_rows

    torch.manual_seed(0)
    n = 40000
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for h in (8, 2, 2))
    pos = torch.randint(n // 2, n, (1, 96), device="cuda")
    valid = torch.ones_like(pos, dtype=torch.bool)
    valid[0, -3:] = False
    want = dense_rows(q.float(), k.float(), v.float(), pos, valid, 0.09, None, use_kernel=False)
    got = dense_rows(q, k, v, pos, valid, 0.09, None, use_kernel=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=2e-3)
    err = (got[1] - want[1]).norm() / want[1].norm()
    assert err < 1e-2, err


def test_column_compaction_kernel_matches_reference():
    from mmcompile.patterns.columns_kernel import compact_columns
    from mmcompile.patterns.index_builder import _dedup_compact
    from mmcompile.patterns.index_columns import per_block_reference
    g = torch.Generator(device="cuda").manual_seed(0)
    n, block_m, block_n = 65536, 128, 64
    num_m = n // block_m
    values = torch.randint(0, n, (1, 4, 3000), device="cuda", generator=g).sort(-1).values
    values[..., 1:][values[..., 1:] == values[..., :-1]] = -1
    bits = torch.ones_like(values)
    present = torch.ones(1, num_m, dtype=torch.long, device="cuda")
    block_ids, count = _dedup_compact(torch.randint(-1, n // block_n, (1, 4, num_m, 40), device="cuda", generator=g))
    lo = torch.randint(0, n, (1, 4, num_m, 1), device="cuda", generator=g)
    span = torch.cat([lo, lo + 4096], -1)  # spans over the block lists and columns
    ref = per_block_reference(values, bits, present, block_ids, span, 0, block_m, block_n, n, True)
    ids, got = compact_columns(values, bits, present, block_ids, count, span, 0, n, block_m, block_n, True)
    assert torch.equal(got.long(), ref[1]) and torch.equal(ids.long(), ref[0])


def test_plan_driven_layer_makes_no_host_sync():
    """Issue 3: no host-device sync in the per-layer path (all syncs happen in forward_context)."""
    from mmcompile.patterns import AShape, BlockSparse, Dense, Grid, HeadPattern, VerticalSlash
    layout = from_segments([[(TEXT, 512), (VIDEO, 4096, 8, 8), (TEXT, 512)]])
    n = layout.length
    q, k, v, _ = planted_qkv(layout, 8, 2, 128, "cuda", torch.bfloat16)
    ctx = forward_context(layout, n, 1, "cuda")
    heads = [HeadPattern("none", (("*", VerticalSlash(200, 8)),)),
             HeadPattern("none", (("*", AShape(128, 512)),)),
             HeadPattern("none", (("*", Grid(local_frames=64)),)),
             HeadPattern("q-boundary", (("text", VerticalSlash(100, 4)), ("video", AShape(64, 256)))),
             HeadPattern("2d-boundary", (("video>video", AShape(64, 256)), ("text>video", AShape(64, 0)))),
             HeadPattern("none", (("*", BlockSparse(8)),)),
             HeadPattern("none", (("*", Dense()),)),
             HeadPattern("none", (("*", VerticalSlash(50, 16)),))]
    layer_attention(q, k, v, ctx, heads).out  # first call: Triton compiles, caches fill
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:  # every synchronizing call, with its line
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = layer_attention(q, k, v, ctx, heads).out
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # Only the debug mode's own reports count (setting the mode warns too, from torch.cuda).
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "called a synchronizing CUDA operation" in str(w.message)]
    if syncs:  # again, raising at the first one, for the whole Python stack
        torch.cuda.set_sync_debug_mode("error")
        try:
            layer_attention(q, k, v, ctx, heads).out
            stack = ""
        except RuntimeError:
            stack = traceback.format_exc()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        pytest.fail(f"synchronizing calls at {syncs}\n{stack}")
    assert torch.isfinite(out).all()


def test_window_max_kernel_equals_doubling_at_128k():
    """The choice's window maxima (``intra.window_max``: the Triton pass on a GPU) equal the PyTorch
    doubling on the shapes the choice runs: 28 heads at 128K, the estimation rows' span, a query
    block, and rows one step apart."""
    from mmcompile.patterns import intra

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(1, 28, 131072, device="cuda", generator=g)
    x[..., ::7] = 0.0
    for width in (64, 127, 128):
        assert torch.equal(intra.window_max(x, width), intra.window_max_doubling(x, width)), width
