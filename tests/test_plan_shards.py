"""One plan file under tensor parallelism: each rank's attention (1 / world of the heads) runs its
slice of the plan, as ``distributed.head_shard`` splits the heads; other shapes are still refused."""

import os

import pytest
import torch

from mmcompile.patterns.specs import AShape, HeadPattern, VerticalSlash
from mmcompile.plans import ModelShape, Plan, PlanError, load_plan, save_plan, shard_plan
from gloo_ranks import run_ranks

SHAPE = ModelShape("qwen2", 2, 4, 2, 32)
HEADS = tuple(HeadPattern("none", (("*", AShape(sink=16, local=64 * (h + 1))),)) for h in range(3)) + \
    (HeadPattern("none", (("*", VerticalSlash(40, 8)),)),)
PLAN = Plan(SHAPE, {0: HEADS, 1: HEADS[::-1]}, search={"target_recall": 0.95},
            scores={(1, h): {"*": {"ashape:16+64": {"recall": h / 4, "err": 0.0, "cost": 0.1}}} for h in range(4)})


def test_a_shard_holds_its_ranks_heads_and_scores_and_round_trips(tmp_path):
    second = shard_plan(PLAN, 1, 2)
    assert second.model == ModelShape("qwen2", 2, 2, 1, 32)
    assert second.layers == {0: HEADS[2:], 1: HEADS[::-1][2:]}
    assert second.scores == {(1, 0): PLAN.scores[(1, 2)], (1, 1): PLAN.scores[(1, 3)]}
    assert second.search["tensor_parallel"] == {"rank": 1, "world": 2}
    save_plan(second, tmp_path / "rank1.json")
    assert load_plan(tmp_path / "rank1.json").layers == second.layers
    with pytest.raises(PlanError, match="2 KV heads .* do not split over 4"):
        shard_plan(PLAN, 0, 4)
    with pytest.raises(PlanError, match="rank 2 is not in a world of 2"):
        shard_plan(PLAN, 2, 2)


def test_a_call_gets_the_plan_or_its_ranks_slice_else_the_mismatch_error():
    assert PLAN.for_call(1, 4, 2, 32) is PLAN  # no process group: the whole model
    assert PLAN.for_call(1, 2, 1, 32, rank_world=(0, 2)).op_arg(1) == shard_plan(PLAN, 0, 2).op_arg(1)
    with pytest.raises(PlanError, match="4 query / 2 KV heads"):
        PLAN.for_call(1, 2, 1, 32)  # half the heads but one process: another model
    with pytest.raises(PlanError, match="4 query / 2 KV heads"):
        PLAN.for_call(1, 1, 1, 32, rank_world=(0, 2))  # not a 2-way split either


def _rank(rank, world, tmp):
    """A rank of a 2-way tensor-parallel Qwen2: its attention has 2 of the 4 query heads, 1 of 2 KV."""
    import transformers as tf

    import mmcompile.hf_attention as hf_attention

    torch.manual_seed(0)
    cfg = tf.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)
    model = tf.Qwen2ForCausalLM(cfg).eval()
    stats = hf_attention.register({"plan": os.path.join(tmp, "plan.json"), "plan_sizes": "plan",
                                   "min_sparse_len": 16, "recall": 0.0}, name="mminference-tp")
    model.set_attn_implementation("mminference-tp")
    with torch.no_grad():
        model(input_ids=torch.randint(0, 128, (1, 300)))
    torch.save([(r.layer, r.detail, r.patterns) for r in stats.records], os.path.join(tmp, f"rank{rank}.pt"))


@pytest.mark.interpreter
def test_each_tensor_parallel_rank_runs_its_slice_of_one_plan(tmp_path):
    save_plan(PLAN, tmp_path / "plan.json")
    run_ranks(_rank, 2, str(tmp_path))
    for rank in range(2):
        records = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        heads = slice(2 * rank, 2 * rank + 2)
        assert records == [(0, "plan", HEADS[heads]), (1, "plan", HEADS[::-1][heads])]
