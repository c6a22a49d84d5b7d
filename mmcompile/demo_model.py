"""The model part of the demo: a real transformers Qwen2.5-VL (tiny config, random weights, nothing
downloaded) compiled with ``backend="mminference"`` on a synthetic video plus a question.

It prints which attention calls were rewritten and why the others were not, checks the forced-dense
output against eager, then runs the sparse path (the layout reaches the language model from the
``input_ids`` placeholders) and prints what each layer did. On a CPU the rewritten graph runs
uncompiled (``debug_uncompiled``: no C++ compile in a demo); on a GPU it goes through Inductor.
"""

from __future__ import annotations

import torch

VIDEO_TOKEN, VISION_START, VISION_END = 251, 252, 253


def tiny_qwen2_5_vl(frames: int = 8, side: int = 16, seed: int = 0):
    """(model, processor-style inputs): ``frames`` frames of ``side`` x ``side`` patches."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                         bos_token_id=1, eos_token_id=2,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6])),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                           window_size=56, fullatt_block_indexes=[1], tokens_per_second=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=250, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END, attn_implementation="sdpa")
    model = tf.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    t = frames // 2
    video = torch.full((t * side * side // 4,), VIDEO_TOKEN)
    question = torch.randint(3, 200, (64,))
    ids = torch.cat([torch.randint(3, 200, (32,)), torch.tensor([VISION_START]), video,
                     torch.tensor([VISION_END]), question])[None]
    inputs = dict(input_ids=ids, pixel_values_videos=torch.randn(t * side * side, 3 * 2 * 14 * 14),
                  video_grid_thw=torch.tensor([[t, side, side]]), second_per_grid_ts=torch.tensor([1.0]),
                  mm_token_type_ids=(ids == VIDEO_TOKEN).int() * 2)
    return model, inputs


def run() -> None:
    import mmcompile.report as report

    cuda = torch.cuda.is_available()
    model, inputs = tiny_qwen2_5_vl()
    if cuda:
        model = model.cuda()
        inputs = {k: v.cuda() for k, v in inputs.items()}
    n = inputs["input_ids"].shape[1]
    print(f"\nQwen2.5-VL (tiny, random weights): {n} language-model tokens, "
          f"{int((inputs['input_ids'] == VIDEO_TOKEN).sum())} of them video")
    with torch.no_grad():
        eager = model(**inputs).logits
    base = {} if cuda else {"debug_uncompiled": True}
    torch._dynamo.reset()
    report.last_report().graphs.clear()
    dense = torch.compile(model, backend="mminference", options=dict(base, force_dense=True))
    with torch.no_grad():
        out = dense(**inputs).logits
    _summary(report.last_report())
    err = ((out.float() - eager.float()).norm() / eager.float().norm()).item()
    print(f"forced dense vs eager: relative error {err:.2e}")
    # Random weights have no attention structure: the online policy rightly keeps heads dense (no
    # sparse index keeps 95% of their mass). The fixed A-shape budget shows the sparse path itself.
    from mmcompile.patterns import Dense

    for options in (dict(min_sparse_len=256, density=0.3),
                    dict(min_sparse_len=256, policy="a-shape", sink=64, local=64)):
        torch._dynamo.reset()
        report.last_report().graphs.clear()
        sparse = torch.compile(model, backend="mminference", options=dict(base, **options))
        with torch.no_grad():
            sparse(**inputs)
        print(f"options {options}:")
        for record in report.last_report().runtime()["records"]:
            why = record.detail if record.reason is None else record.reason.value
            dense_heads = sum(p.intra[0][1] == Dense() for p in record.patterns)
            predicted = "" if record.predicted_recall is None else \
                f", predicted recall >= {record.predicted_recall:.3f}"
            print(f"  layer {record.layer}: {record.path} ({why}), {record.n_q} tokens, density "
                  f"{record.density:.2f}, {dense_heads}/{len(record.patterns)} heads dense{predicted}")


def _summary(rep) -> None:
    import collections

    rewritten = rep.rewritten
    reasons = collections.Counter(entry.reason for entry in rep.skipped)
    print(f"rewritten: {len(rewritten)} attention calls (layers {sorted({e.layer for e in rewritten})}, "
          f"{', '.join(sorted({e.causal_form for e in rewritten}))}); left alone: "
          + "; ".join(f"{count} x {reason}" for reason, count in reasons.items()))
