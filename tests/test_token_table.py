"""The per-token table form of a ModalityLayout (the export's layout input): a round trip keeps every
field, padding stays in place, and a visual run that is not whole frames is an error."""

import dataclasses

import pytest
import torch

from mmcompile.patterns import IMAGE, PAD, TEXT, VIDEO, from_segments
from mmcompile.patterns.token_table import from_token_table, token_table


def test_round_trip_keeps_segments_geometry_and_padding():
    layout = from_segments([[(TEXT, 10), (VIDEO, 24, 2, 3), (TEXT, 5), (IMAGE, 8, 2, 2)],
                            [(TEXT, 3), (VIDEO, 12, 2, 2)]])  # the second sample ends in PAD
    table = token_table(layout)
    assert table.shape == (2, 47, 3) and table.dtype == torch.int32
    assert table[0, 10].tolist() == [VIDEO, 2, 3] and table[0, 9].tolist() == [TEXT, 0, 0]
    assert table[1, -1].tolist() == [PAD, 0, 0]
    back = from_token_table(table)
    for field in dataclasses.fields(layout):
        assert torch.equal(getattr(back, field.name), getattr(layout, field.name)), field.name


def test_visual_run_without_frame_size_is_one_frame_and_broken_frames_raise():
    table = torch.tensor([[[TEXT, 0, 0]] * 4 + [[VIDEO, 0, 0]] * 6 + [[TEXT, 0, 0]] * 2], dtype=torch.int32)
    layout = from_token_table(table)
    assert layout.seg_len[0, 0].item() == 6 and layout.frame_tokens[0, 0].item() == 6
    table[0, 4:10, 1:] = torch.tensor([2, 2])  # 6 tokens are not whole 2 x 2 frames
    with pytest.raises(ValueError, match="not whole frames"):
        from_token_table(table)
