"""Head-parallel prefill on gloo: 2 ranks (this process and a spawned one) give the single-process
op's output and per-head patterns (Ulysses and tensor-parallel heads, with a plan and with the online
policy), and bad inputs fail with a message before any collective."""

import os

import pytest
import torch
import torch.distributed as dist

from mmcompile.distributed import (gather_patterns, head_shard, sequence_shard, slice_plan,
                                   tensor_parallel_attention, ulysses_attention)
from mmcompile.patterns import (TEXT, VIDEO, AShape, Dense, Grid, HeadPattern, VerticalSlash, forward_context,
                                from_segments, layer_attention)
from mmcompile.patterns.planted import planted_qkv
from mmcompile.patterns.policy import choose_patterns
from gloo_ranks import run_ranks

pytestmark = pytest.mark.interpreter

HQ, HKV, D = 8, 4, 32
SEGMENTS = [[(TEXT, 72), (VIDEO, 384, 8, 8), (TEXT, 64)]]  # 520 tokens: not a block multiple, 4 | 520
DENSITY = 0.2
PLAN = [HeadPattern("none", (("*", AShape(64, 128)),)),
        HeadPattern("none", (("*", VerticalSlash(40, 60)),)),
        HeadPattern("none", (("*", Grid(local_frames=2)),)),
        HeadPattern("q-boundary", (("text", VerticalSlash(30, 50)), ("video", AShape(64, 64)))),
        HeadPattern("none", (("*", Dense()),)),
        HeadPattern("none", (("*", Grid(local_frames=1)),)),
        HeadPattern("q-boundary", (("text", AShape(64, 64)), ("video", VerticalSlash(20, 40)))),
        HeadPattern("none", (("*", AShape(128, 64)),))]


def _inputs():
    layout = from_segments(SEGMENTS)
    q, k, v, _ = planted_qkv(layout, HQ, HKV, D, seed=1)  # seed 1: its online choice mixes A-shape sizes and Grid
    return q, k, v, forward_context(layout, layout.length, 1, "cpu", 64, 64)


def _worker(rank, world, tmp):
    q, k, v, ctx = _inputs()
    shard = head_shard(HQ, HKV, world, rank)
    seq = [sequence_shard(t, world, rank) for t in (q, k, v)]
    heads = (q[:, shard.q], k[:, shard.kv], v[:, shard.kv])
    results = {}
    for name, plan in (("plan", PLAN), ("online", None)):
        results["ulysses", name] = ulysses_attention(*seq, ctx, plan, density=DENSITY, return_patterns=True)
        results["tp", name] = tensor_parallel_attention(*heads, ctx, plan, density=DENSITY, return_patterns=True)
    op_like = dict(density=DENSITY, recall=0.95, plan_sizes="online", return_patterns=True)  # the op's defaults
    results["ulysses", "sized"] = ulysses_attention(*seq, ctx, PLAN, **op_like)
    results["tp", "sized"] = tensor_parallel_attention(*heads, ctx, PLAN, **op_like)
    results["gathered"] = gather_patterns(results["ulysses", "online"][1])
    results["errors"] = _collective_errors(q, k, v, ctx, seq)
    torch.save(results, os.path.join(tmp, f"rank{rank}.pt"))


def _collective_errors(q, k, v, ctx, seq):
    """Messages of bad calls under a real process group; each must raise before communicating
    (otherwise the next collective, gather_patterns here, would hang or mismatch)."""
    messages = {}
    calls = {
        "kv heads": lambda: ulysses_attention(seq[0][:, :6], seq[1][:, :3], seq[2][:, :3], ctx),
        "short context": lambda: ulysses_attention(*(t[:, :, :-8] for t in seq), ctx),
        "plan length": lambda: tensor_parallel_attention(q[:, :1], k[:, :1], v[:, :1], ctx, PLAN),
        "tp context": lambda: tensor_parallel_attention(*(t[:, :1] for t in seq), ctx),
    }
    for name, call in calls.items():
        try:
            call()
        except ValueError as e:
            messages[name] = str(e)
    messages["still in step"] = gather_patterns([dist.get_rank()])
    return messages


@pytest.mark.parametrize("world", [2])  # 4 ranks (27 s of spawned processes) ran the same paths; CI has 6 minutes
def test_head_parallel_equals_single_process(world, tmp_path):
    q, k, v, ctx = _inputs()
    online = choose_patterns(q, k, ctx, density=DENSITY)
    assert len({str(p) for p in online}) >= 3, "the online case must mix patterns to test the per-rank choice"
    sized = layer_attention(q, k, v, ctx, density=DENSITY, recall=0.95, families=PLAN)
    expected = {"plan": (layer_attention(q, k, v, ctx, PLAN).out, PLAN),
                "online": (layer_attention(q, k, v, ctx, online).out, online),
                "sized": (sized.out, list(sized.patterns))}
    assert expected["sized"][1] != PLAN  # the plan's types, sized for this input and checked
    run_ranks(_worker, world, str(tmp_path))
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        shard = head_shard(HQ, HKV, world, rank)
        for name, (ref, patterns) in expected.items():
            out, used = got["ulysses", name]
            torch.testing.assert_close(out, sequence_shard(ref, world, rank), atol=1e-5, rtol=1e-5)
            assert used == patterns[shard.q]
            out, used = got["tp", name]
            torch.testing.assert_close(out, ref[:, shard.q], atol=1e-5, rtol=1e-5)
            assert used == patterns[shard.q]
        assert got["gathered"] == online
        errors = got["errors"]
        assert "3 KV heads do not split over" in errors["kv heads"]
        assert "N % world == 0" in errors["short context"]
        assert "plan has 8 head patterns for a layer of" in errors["plan length"]
        assert "keeps the whole sequence per rank" in errors["tp context"]
        assert errors["still in step"] == list(range(world))


def test_bad_shards_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="4 KV heads do not split over 8 ranks"):
        head_shard(28, 4, 8, 0)
    with pytest.raises(ValueError, match="not a multiple of 4 KV heads"):
        head_shard(30, 4, 2, 0)
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        head_shard(8, 4, 2, 2)
    with pytest.raises(ValueError, match="520 tokens does not split into 3 equal shards"):
        sequence_shard(torch.zeros(1, 2, 520, 4), 3, 0)
    with pytest.raises(ValueError, match="plan has 7 head patterns for a layer of 8"):
        slice_plan(PLAN[:7], head_shard(8, 4, 2, 1))
    assert slice_plan(PLAN, head_shard(8, 4, 4, 3)) == PLAN[6:]
    shard = head_shard(28, 4, 4, 1)  # GQA: rank 1 owns query heads 7..13, which read KV head 1
    assert (shard.q, shard.kv) == (slice(7, 14), slice(1, 2))
    assert {h // 7 for h in range(28)[shard.q]} == set(range(4)[shard.kv])


def test_without_a_process_group_it_is_the_single_device_op():
    q, k, v, ctx = _inputs()
    ref = layer_attention(q, k, v, ctx, PLAN).out
    torch.testing.assert_close(ulysses_attention(q, k, v, ctx, PLAN), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="covers batch 1 x 520 tokens"):
        ulysses_attention(q[:, :, :512], k[:, :, :512], v[:, :, :512], ctx, PLAN)
    with pytest.raises(ValueError, match="expected q"):
        tensor_parallel_attention(q, k, v[:, :, :8], ctx)
