"""ModalityLayout builders and validation."""

import pytest
import torch

from mmcompile.patterns import IMAGE, PAD, TEXT, VIDEO, check_layout, from_hf_inputs, from_segments


def test_segments_interleaved_text_and_frames():
    layout = from_segments([[(TEXT, 5), (VIDEO, 8, 2, 2), (TEXT, 3), (VIDEO, 4, 2, 2), (TEXT, 2)]])
    assert layout.modality[0].tolist() == [0] * 5 + [2] * 8 + [0] * 3 + [2] * 4 + [0] * 2
    assert layout.seg_start[0].tolist() == [5, 16] and layout.seg_len[0].tolist() == [8, 4]
    assert layout.frame_stride().tolist() == [4]


def test_batch_with_different_layouts_and_padding():
    layout = from_segments([[(TEXT, 4), (IMAGE, 4, 2, 2)], [(TEXT, 2), (VIDEO, 18, 3, 3), (TEXT, 2)]])
    assert layout.modality.shape == (2, 22)
    assert (layout.modality[0, 8:] == PAD).all()
    assert layout.frame_stride().tolist() == [4, 9]
    assert layout.has(VIDEO).tolist() == [False, True]


def test_text_only_and_only_video():
    text = from_segments([[(TEXT, 10)]])
    assert text.frame_stride().tolist() == [0] and not text.has(VIDEO).any()
    video = from_segments([[(VIDEO, 12, 2, 3)]])
    assert (video.modality == VIDEO).all() and video.frame_stride().tolist() == [6]


def test_from_hf_inputs_qwen_style_grids():
    ids = torch.tensor([[1, 2, 9, 9, 9, 9, 9, 9, 9, 9, 3, 8, 8, 8, 8, 4]])
    layout = from_hf_inputs(ids, video_token_id=9, image_token_id=8,
                            video_grid_thw=torch.tensor([[2, 4, 4]]), image_grid_thw=torch.tensor([[1, 4, 4]]),
                            spatial_merge_size=2)
    assert layout.modality[0].tolist() == [0, 0] + [VIDEO] * 8 + [0] + [IMAGE] * 4 + [0]
    assert layout.frame_tokens[0].tolist() == [4, 4] and layout.frame_h[0].tolist() == [2, 2]
    types = torch.tensor([[0, 0] + [2] * 8 + [0] * 6])
    padded = from_hf_inputs(mm_token_type_ids=types, video_grid_thw=torch.tensor([[2, 4, 4]]), spatial_merge_size=2,
                            attention_mask=torch.tensor([[0] + [1] * 15]))
    assert padded.modality[0, 0] == PAD and padded.frame_stride().tolist() == [4]


def test_bad_layouts_raise():
    with pytest.raises(ValueError, match="unknown modality"):
        from_segments([[(7, 4)]])
    with pytest.raises(ValueError, match="whole frames"):
        from_segments([[(VIDEO, 10, 2, 2)]])
    with pytest.raises(ValueError, match="does not match grid"):
        from_hf_inputs(torch.tensor([[9, 9, 9]]), video_token_id=9, video_grid_thw=torch.tensor([[1, 2, 2]]))
    layout = from_segments([[(TEXT, 8)]])
    with pytest.raises(ValueError, match="attention sees 9"):
        check_layout(layout, 9)
    bad = layout.__class__(torch.full((1, 8), 5, dtype=torch.int32), *[getattr(layout, f) for f in
                           ("seg_start", "seg_len", "frame_tokens", "frame_h", "frame_w")])
    with pytest.raises(ValueError, match="unknown modality ids"):
        check_layout(bad)


def test_grid_rows_continue_across_the_batch():
    """One grid row per visual run, sample after sample (HF's get_rope_index), not restarted per sample."""
    ids = torch.tensor([[1, 9, 9, 9, 9, 2, 2, 2, 2, 2],
                        [1, 9, 9, 9, 9, 9, 9, 9, 9, 2]])
    layout = from_hf_inputs(ids, video_token_id=9, video_grid_thw=torch.tensor([[1, 4, 4], [2, 4, 4]]),
                            spatial_merge_size=2)
    assert layout.seg_len.tolist() == [[4], [8]] and layout.frame_tokens.tolist() == [[4], [4]]
    assert layout.frame_stride().tolist() == [4, 4]


def test_frame_hw_per_modality():
    ids = torch.tensor([[1] + [8] * 6 + [2] + [9] * 8 + [3]])
    layout = from_hf_inputs(ids, image_token_id=8, video_token_id=9, frame_hw={VIDEO: (2, 2)})
    assert layout.seg_len[0].tolist() == [6, 8]
    assert layout.frame_tokens[0].tolist() == [6, 4]  # the image run is one frame; video frames are 2x2
    same = from_hf_inputs(ids, image_token_id=8, video_token_id=9, frame_hw=(1, 2))  # a tuple: every visual run
    assert same.frame_tokens[0].tolist() == [2, 2]


def test_runs_equal_a_per_token_scan():
    from mmcompile.patterns.layout import _runs

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 232):
        row = torch.randint(-1, 3, (n,), generator=g).repeat_interleave(torch.randint(1, 5, (n,), generator=g))
        values, expected = row.tolist(), []
        for v in values:
            if expected and expected[-1][0] == v:
                expected[-1][1] += 1
            else:
                expected.append([v, 1])
        assert _runs(row) == [tuple(e) for e in expected]
    assert _runs(torch.zeros(0, dtype=torch.int32)) == []
