"""A ModalityLayout as one int32 tensor [B, N, 3] of (modality id, frame height, frame width) per
token: the form an exported program takes as its layout input (one tensor with a sequence
dimension, so it shares the dynamic length with the other inputs), frame geometry included.

Tokens outside visual segments carry frame size (0, 0). Reading a table back, each run of equal
rows is one segment; a visual run with frame size (0, 0) is one frame of the whole run (as
``from_hf_inputs`` treats a run without a grid), and one whose length is not whole frames is an error.
"""

from __future__ import annotations

import dataclasses

import torch

from .layout import IMAGE, PAD, TEXT, VIDEO, ModalityLayout, from_segments


def token_table(layout: ModalityLayout) -> torch.Tensor:
    """int32 [B, N, 3]: per token its modality id and the frame height/width of its segment."""
    pos = torch.arange(layout.length, device=layout.modality.device)
    start, length = layout.seg_start[..., None], layout.seg_len[..., None]
    inside = (pos >= start) & (pos < start + length) & (length > 0)  # [B, S, N]
    h = (inside * layout.frame_h[..., None]).sum(1)
    w = (inside * layout.frame_w[..., None]).sum(1)
    return torch.stack([layout.modality, h, w], -1).to(torch.int32)


def from_token_table(table: torch.Tensor) -> ModalityLayout:
    """The ModalityLayout of a [B, N, 3] table (host syncs: once per forward)."""
    if table.dim() != 3 or table.shape[-1] != 3:
        raise ValueError(f"a layout table is [batch, tokens, 3], got shape {tuple(table.shape)}")
    segments = []
    for row in table.to(torch.int64):
        if row.shape[0] == 0:
            segments.append([])
            continue
        change = (row[1:] != row[:-1]).any(-1)
        starts = torch.cat([change.new_zeros(1, dtype=torch.long), torch.nonzero(change).flatten() + 1])
        lengths = torch.diff(starts, append=starts.new_tensor([row.shape[0]])).tolist()
        segments.append([_segment(int(k), n, int(h), int(w)) for (k, h, w), n in zip(row[starts].tolist(), lengths)])
    layout = from_segments(segments, device=table.device)
    return dataclasses.replace(layout, modality=table[..., 0].to(torch.int32).contiguous())  # PAD kept in place


def _segment(kind: int, length: int, h: int, w: int) -> tuple:
    if kind in (IMAGE, VIDEO):
        return (kind, length, h, w) if h * w > 0 else (kind, length, 1, length)
    return (TEXT if kind == PAD else kind, length)
