"""Plan files (mmcompile/plans): versioned, hashed, checked when loaded and against the model; a
layer's patterns travel as the op's ``plan`` argument and run as the plan says."""

import json

import pytest
import torch
import transformers

import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference.*)
from mmcompile.backend import MMInferenceBackend
from mmcompile.patterns.specs import AShape, Dense, HeadPattern, VerticalSlash
from mmcompile.plans import ModelShape, Plan, PlanError, layer_arg, load_plan, patterns_from_arg, save_plan
from mmcompile.runtime import track

SHAPE = ModelShape("qwen2", layers=2, heads_q=4, heads_kv=2, head_dim=16)
NARROW = HeadPattern("none", (("*", AShape(sink=16, local=64)),))
MIXED = HeadPattern("q-boundary", (("text", AShape(64, 128)), ("video", VerticalSlash(vertical=64, slash_blocks=4))),
                    interchangeable=("text",))


def plan(layers=None) -> Plan:
    return Plan(SHAPE, layers if layers is not None else {0: (NARROW,) * 4, 1: (NARROW, MIXED, Dense_head(), NARROW)},
                search={"target": 0.95}, scores={(0, 0): {"ashape": [[64, 0.97, 0.01]]}})


def Dense_head():
    return HeadPattern("none", (("*", Dense()),))


def test_round_trip_keeps_patterns_scores_and_settings(tmp_path):
    path = tmp_path / "plan.json"
    save_plan(plan(), path)
    loaded = load_plan(path, expect=SHAPE)
    assert loaded.layers == plan().layers and loaded.model == SHAPE
    assert loaded.search == {"target": 0.95} and loaded.scores[(0, 0)] == {"ashape": [[64, 0.97, 0.01]]}
    assert patterns_from_arg(loaded.op_arg(1)) == plan().layers[1]
    assert json.load(open(path))["version"] == 1
    assert "interchangeable" not in layer_arg([NARROW])  # absent when empty: older arguments read the same


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["layers"][0]["heads"][0]["intra"][0][1].update(local=4096), "content hash does not match"),
    (lambda d: d.update(version=99), "plan version 99; this mmcompile reads up to 1"),
    (lambda d: d.pop("version"), "not a plan file"),
])
def test_tampered_or_newer_files_are_refused(tmp_path, edit, message):
    path = tmp_path / "plan.json"
    save_plan(plan(), path)
    data = json.load(open(path))
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=message):
        load_plan(path)


def _rehashed(tmp_path, edit):
    """A file with a consistent hash but a bad entry (what a buggy writer could produce)."""
    from mmcompile.plans.schema import _hash

    data = plan().to_json()
    edit(data)
    body = {k: v for k, v in data.items() if k != "content_hash"}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(dict(body, content_hash=_hash(body))))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["layers"][0]["heads"][0]["intra"][0][1].update(type="spiral"), "unknown pattern type 'spiral'"),
    (lambda d: d["layers"][0]["heads"][0]["intra"][0][1].update(width=3), r"has no parameter\(s\) \['width'\]"),
    (lambda d: d["layers"][0]["heads"][0]["intra"][0][1].update(local=-5), "expected a non-negative int"),
    (lambda d: d["layers"][0]["heads"][0].update(inter="sideways"), "unknown inter-modality type"),
    (lambda d: d["layers"][0]["heads"][0].update(interchangeable="text"), "'interchangeable' must be a list"),
    (lambda d: d["layers"][0]["heads"].pop(), "layer 0 has 3 heads, its model 4 query heads"),
    (lambda d: d["model"].update(layers=1), "fingerprint"),
])
def test_malformed_entries_name_what_is_wrong(tmp_path, edit, message):
    with pytest.raises(PlanError, match=message):
        load_plan(_rehashed(tmp_path, edit))


def test_a_plan_for_another_model_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    save_plan(plan(), path)
    with pytest.raises(PlanError, match="was made for"):
        load_plan(path, expect=ModelShape("llama", 2, 4, 2, 16))
    with pytest.raises(PlanError, match="28 / 4 heads"):
        plan().check_fits(0, 28, 4, 16)
    with pytest.raises(PlanError, match="outside the plan's 2 layers"):
        plan().check_fits(5, 4, 2, 16)


def tiny_lm():
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    return transformers.Qwen2ForCausalLM(cfg).eval()


@pytest.mark.interpreter
def test_the_backend_runs_the_plan_and_refuses_one_for_another_model(tmp_path):
    model, ids = tiny_lm(), torch.randint(0, 256, (1, 600))
    assert ModelShape.of_config(model.config) == SHAPE
    path = tmp_path / "plan.json"
    save_plan(plan({0: (NARROW,) * 4}), path)  # layer 1 left to the online policy
    backend = MMInferenceBackend({"plan": str(path), "plan_sizes": "plan", "min_sparse_len": 16, "recall": 0.0,
                                  "debug_uncompiled": True})  # the plan's budgets as searched
    with torch.no_grad():
        out = torch.compile(model, backend=backend)(input_ids=ids).logits
        eager = model(input_ids=ids).logits
    records = backend.report.runtime()["records"]
    assert [(r.layer, r.detail) for r in records] == [(0, "plan"), (1, "online")]
    assert records[0].patterns == (NARROW,) * 4 and (out - eager).abs().max() > 1e-4  # the window dropped keys
    for other, message in ((ModelShape("qwen2", 2, 8, 2, 16), "8 query / 2 KV heads"),
                           (ModelShape("qwen2", 28, 4, 2, 16), "made for qwen2 with 28 decoder layers; the model has 2")):
        save_plan(Plan(other, {}), path)
        torch._dynamo.reset()
        with pytest.raises(Exception, match=message):  # Dynamo wraps the backend's PlanError
            with torch.no_grad():
                torch.compile(model, backend=MMInferenceBackend({"plan": str(path), "debug_uncompiled": True}))(input_ids=ids)


def test_a_plan_for_a_deeper_model_is_refused_by_the_hf_attention(tmp_path):
    import mmcompile.hf_attention as hf

    model, path = tiny_lm(), tmp_path / "deep.json"
    save_plan(Plan(ModelShape("qwen2", 28, 4, 2, 16), {}), path)
    hf.register({"plan": str(path), "min_sparse_len": 16}, name="mminference-test-deep")
    model.set_attn_implementation("mminference-test-deep")
    with pytest.raises(PlanError, match="made for qwen2 with 28 decoder layers; the model has 2"):
        with torch.no_grad():
            model(input_ids=torch.randint(0, 256, (1, 40)))


@pytest.mark.interpreter
def test_the_op_runs_the_patterns_of_its_plan_argument():
    from mmcompile.patterns import forward_context, layer_attention

    stats = track("test-plan-arg")
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, 600, 16, generator=g), torch.randn(1, 2, 600, 16, generator=g), \
        torch.randn(1, 2, 600, 16, generator=g)
    out = torch.ops.mminference.prefill_attention(q, k, v, None, None, 0, 0.25, min_sparse_len=16, recall=0.0,
                                                  plan=layer_arg((NARROW,) * 4), plan_sizes="plan", tag="test-plan-arg")
    expected = layer_attention(q, k, v, forward_context(None, 600, 1, "cpu"), (NARROW,) * 4, scale=0.25).out
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert stats.records[-1].patterns == (NARROW,) * 4 and stats.records[-1].detail == "plan"
