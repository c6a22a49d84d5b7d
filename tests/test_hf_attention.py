"""The transformers AttentionInterface registration: exact where it runs the op, SDPA otherwise."""

import pytest
import torch
import transformers as tf

import mmcompile.hf_attention as hf_attention


def tiny_qwen2(seed=0):
    torch.manual_seed(seed)
    cfg = tf.Qwen2Config(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = tf.Qwen2ForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


@pytest.mark.parametrize("options,path", [({"force_dense": True}, "dense"),
                                          ({"min_sparse_len": 16, "policy": "a-shape", "sink": 64,
                                            "local": 256}, "sparse")])
def test_registered_attention_runs_the_op(options, path):
    model = tiny_qwen2()
    ids = torch.randint(0, 128, (1, 200))
    expected = logits(model, ids)
    stats = hf_attention.register(options)
    model.set_attn_implementation("mminference")
    out = logits(model, ids)
    assert [r.path for r in stats.records] == [path, path]  # both layers went through the op
    if path == "dense":
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    else:  # a local window of 256 covers all 200 tokens: the A-shape is exact here
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_padding_falls_back_to_sdpa_exactly():
    model = tiny_qwen2(1)
    ids = torch.randint(0, 128, (1, 64))
    mask = torch.ones(1, 64, dtype=torch.long)
    mask[0, :5] = 0  # left padding: not plainly causal
    expected = logits(model, ids, attention_mask=mask)
    stats = hf_attention.register({"force_dense": True})
    model.set_attn_implementation("mminference")
    torch.testing.assert_close(logits(model, ids, attention_mask=mask), expected, atol=1e-6, rtol=1e-6)
    assert not stats.records  # the op was not used


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="valid keys"):
        hf_attention.register({"sparsity": 0.9})


def test_two_registrations_keep_their_own_options():
    model = tiny_qwen2(2)
    ids = torch.randint(0, 128, (1, 600))
    dense = hf_attention.register({"force_dense": True}, name="mminference-dense")
    sparse = hf_attention.register({"min_sparse_len": 16, "policy": "a-shape", "sink": 16, "local": 64},
                                   name="mminference-narrow")
    model.set_attn_implementation("mminference-narrow")
    narrow = logits(model, ids)
    model.set_attn_implementation("mminference-dense")
    torch.testing.assert_close(logits(model, ids), logits_sdpa(model, ids), atol=1e-5, rtol=1e-5)
    assert [r.path for r in sparse.records] == ["sparse"] * 2 and [r.path for r in dense.records] == ["dense"] * 2
    assert hf_attention.stats("mminference-narrow") is sparse
    assert (narrow - logits_sdpa(model, ids)).abs().max() > 1e-4  # the narrow window really dropped keys


def logits_sdpa(model, ids):
    model.set_attn_implementation("sdpa")
    try:
        return logits(model, ids)
    finally:
        model.set_attn_implementation("mminference-dense")


def test_gradients_go_through_sdpa_exactly():
    model = tiny_qwen2(3).train()
    ids = torch.randint(0, 128, (1, 64))
    expected = torch.autograd.grad(model(input_ids=ids).logits.square().mean(), list(model.parameters()))
    stats = hf_attention.register({"min_sparse_len": 16, "policy": "a-shape", "sink": 16, "local": 16})
    model.set_attn_implementation("mminference")
    got = torch.autograd.grad(model(input_ids=ids).logits.square().mean(), list(model.parameters()))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert not stats.records  # with grad required the call went to SDPA, not to the sparse op


def test_a_plan_reaches_each_layer_and_one_for_another_model_is_refused(tmp_path):
    from mmcompile.patterns.specs import AShape, HeadPattern
    from mmcompile.plans import ModelShape, Plan, save_plan

    model = tiny_qwen2(4)
    shape = ModelShape.of_config(model.config)
    narrow = HeadPattern("none", (("*", AShape(sink=16, local=64)),))
    path = tmp_path / "plan.json"
    save_plan(Plan(shape, {1: (narrow,) * shape.heads_q}), path)
    stats = hf_attention.register({"plan": str(path), "plan_sizes": "plan", "min_sparse_len": 16,
                                    "recall": 0.0}, name="mminference-plan")
    model.set_attn_implementation("mminference-plan")
    logits(model, torch.randint(0, 128, (1, 600)))
    assert [(r.layer, r.detail) for r in stats.records] == [(0, "online"), (1, "plan")]
    assert stats.records[1].patterns == (narrow,) * shape.heads_q
    save_plan(Plan(ModelShape(shape.model_type, 2, 8, 2, shape.head_dim), {}), path)
    hf_attention.register({"plan": str(path)}, name="mminference-plan")
    with pytest.raises(ValueError, match="8 query / 2 KV heads"):
        logits(model, torch.randint(0, 128, (1, 20)))
