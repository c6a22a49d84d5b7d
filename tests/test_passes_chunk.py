"""The sequence-chunking pass (passes/chunk_sequence.py): a long prefill's MLPs and norms run in
pieces, with the same logits as eager; short prefills and seq_chunk=0 are left whole."""

import pytest
import torch
import transformers

from mmcompile.backend import MMInferenceBackend


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    return transformers.Qwen2ForCausalLM(cfg).eval()


def run(model, tokens, options):
    torch._dynamo.reset()
    backend = MMInferenceBackend({"force_dense": True, "debug_uncompiled": True, **options})
    ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(tokens))
    with torch.no_grad():
        out = torch.compile(model, backend=backend)(input_ids=ids).logits
        ref = model(input_ids=ids).logits
    (result,) = [p for p in backend.report.graphs[0].passes if p.name == "chunk_sequence"]
    return out, ref, result


def test_mlps_and_norms_run_in_chunks_with_eager_logits(model):
    out, ref, result = run(model, 2048, {"seq_chunk": 512})
    assert result.counts["chunked_blocks"] == 7  # 2 x (input norm, post-attention norm, MLP) + final norm
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [{"seq_chunk": 0}, {"seq_chunk": 1024}])
def test_off_or_short_prefills_stay_whole(model, options):
    out, ref, result = run(model, 1536, options)
    assert not result.changed
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_a_32k_prefill_in_chunks_through_inductor_equals_eager(model):
    """Issue 14's bar at its length: 32K tokens, pieces of 8K, compiled by Inductor on the GPU."""
    torch._dynamo.reset()
    gpu = model.to("cuda")
    backend = MMInferenceBackend({"force_dense": True, "seq_chunk": 8192})
    ids = torch.randint(0, 256, (1, 32768), generator=torch.Generator().manual_seed(0)).cuda()
    try:
        with torch.no_grad():
            out = torch.compile(gpu, backend=backend)(input_ids=ids, logits_to_keep=64).logits
            ref = gpu(input_ids=ids, logits_to_keep=64).logits
    finally:
        model.to("cpu")
    (result,) = [p for p in backend.report.graphs[0].passes if p.name == "chunk_sequence"]
    assert result.counts["chunked_blocks"] == 7
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
