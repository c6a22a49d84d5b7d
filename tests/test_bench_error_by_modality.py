"""``benchmarks/bench_prefill_op.py`` reports the op's error per modality: a question's rows that
are off show under text even where the pooled error of sampled rows (mostly video) hides them."""

import os
import sys

import torch

from mmcompile.patterns.planted import standard_layout

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from bench_prefill_op import error_by_modality  # noqa: E402


def test_an_off_question_shows_under_text_and_not_under_video():
    layout = standard_layout("video", 2048)  # 256 text, frames, a 512-token question
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, 2048, 16, generator=g), torch.randn(1, 2, 2048, 16, generator=g), \
        torch.randn(1, 2, 2048, 16, generator=g)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                             is_causal=True, scale=0.25)
    clean = error_by_modality(q, k, v, exact, layout.modality[0], 0.25, 64)
    assert set(clean) == {"text", "video"} and max(clean.values()) < 1e-5
    off = exact.clone()
    off[0, :, -512:] += 0.1  # the question
    errors = error_by_modality(q, k, v, off, layout.modality[0], 0.25, 64)
    assert errors["text"] > 0.5 and errors["video"] < 1e-5


def test_the_families_harness_samples_each_modality_apart():
    """``fidelity_families.py --by-modality``: rows of each modality's later half, the question's
    included (a pooled sample of the later half holds few of them)."""
    from common import modality_rows

    layout = standard_layout("video", 2048)
    picks = modality_rows(layout.modality[0], 64)
    modality = layout.modality[0]
    assert len(picks) == 2
    for code, rows in picks.items():
        mine = torch.nonzero(modality == code).flatten()
        assert len(rows) == 64 and (modality[rows] == code).all() and (rows >= mine[len(mine) // 2]).all()
