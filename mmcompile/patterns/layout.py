"""ModalityLayout: which modality every token is, and the frame geometry of each visual segment.

Built once per forward (not per layer) from what the processor produced (input_ids with
image/video placeholder ids, ``mm_token_type_ids``, ``*_grid_thw``) or from an explicit segment
list. Everything is a tensor, so per-layer code reads it without host syncs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

TEXT, IMAGE, VIDEO, AUDIO = 0, 1, 2, 3
MODALITY_NAMES = {TEXT: "text", IMAGE: "image", VIDEO: "video", AUDIO: "audio"}
PAD = -1  # modality id of padding tokens (attention_mask == 0)


@dataclasses.dataclass(frozen=True)
class ModalityLayout:
    """Per token modality ids plus per visual segment geometry.

    modality:      int32 [B, N], values in MODALITY_NAMES or PAD.
    seg_start:     int32 [B, S]: first token of each visual segment (S = most segments in a sample;
                   unused slots have seg_len 0).
    seg_len:       int32 [B, S]: tokens in the segment.
    frame_tokens:  int32 [B, S]: tokens per frame (frame_h * frame_w).
    frame_h, frame_w: int32 [B, S]: frame height and width in tokens (after spatial merging).
    """

    modality: torch.Tensor
    seg_start: torch.Tensor
    seg_len: torch.Tensor
    frame_tokens: torch.Tensor
    frame_h: torch.Tensor
    frame_w: torch.Tensor

    @property
    def batch(self) -> int:
        return self.modality.shape[0]

    @property
    def length(self) -> int:
        return self.modality.shape[1]

    def frame_stride(self) -> torch.Tensor:
        """int32 [B]: tokens per frame of each sample's longest visual segment (0 if none)."""
        longest = self.seg_len.argmax(dim=1, keepdim=True) if self.seg_len.shape[1] else None
        if longest is None:
            return torch.zeros(self.batch, dtype=torch.int32, device=self.modality.device)
        return self.frame_tokens.gather(1, longest)[:, 0]

    def has(self, modality: int) -> torch.Tensor:
        """bool [B]: whether each sample has tokens of ``modality``."""
        return (self.modality == modality).any(dim=1)

    def to(self, device) -> "ModalityLayout":
        return ModalityLayout(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def check_layout(layout: ModalityLayout, seq_len: int | None = None) -> None:
    """Raise ValueError if the layout is inconsistent (or does not match ``seq_len``)."""
    m = layout.modality
    if m.dim() != 2:
        raise ValueError(f"modality must be [batch, tokens], got shape {tuple(m.shape)}")
    if seq_len is not None and m.shape[1] != seq_len:
        raise ValueError(f"layout has {m.shape[1]} tokens but attention sees {seq_len}")
    known = torch.tensor(sorted(MODALITY_NAMES) + [PAD], device=m.device)
    bad = ~torch.isin(m, known)
    if bool(bad.any()):
        raise ValueError(f"unknown modality ids {sorted(set(m[bad].tolist()))}; known: {MODALITY_NAMES}, pad {PAD}")
    ends = layout.seg_start + layout.seg_len
    if bool(((layout.seg_len > 0) & ((layout.seg_start < 0) | (ends > m.shape[1]))).any()):
        raise ValueError("a visual segment lies outside the sequence")
    if bool(((layout.seg_len > 0) & (layout.frame_tokens <= 0)).any()):
        raise ValueError("a visual segment has no frame size")


def from_segments(segments: Sequence[Sequence[tuple]], device=None) -> ModalityLayout:
    """Build a layout from explicit segments, per sample: ``(modality, length)`` for text/audio or
    ``(modality, length, frame_h, frame_w)`` for image/video. Samples may differ; shorter samples
    are padded with PAD to the longest."""
    lengths = [sum(seg[1] for seg in sample) for sample in segments]
    n = max(lengths) if lengths else 0
    n_seg = max([sum(1 for seg in s if len(seg) == 4) for s in segments] + [0])
    shape = (len(segments), max(n_seg, 1))
    ints = dict(dtype=torch.int32)
    modality = torch.full((len(segments), n), PAD, **ints)
    geo = {name: torch.zeros(shape, **ints) for name in ("seg_start", "seg_len", "frame_tokens", "frame_h", "frame_w")}
    for b, sample in enumerate(segments):
        pos, s = 0, 0
        for seg in sample:
            kind, length = int(seg[0]), int(seg[1])
            if kind not in MODALITY_NAMES:
                raise ValueError(f"unknown modality id {kind}; known: {MODALITY_NAMES}")
            modality[b, pos:pos + length] = kind
            if len(seg) == 4:
                fh, fw = int(seg[2]), int(seg[3])
                if fh * fw <= 0 or length % (fh * fw):
                    raise ValueError(f"segment of {length} tokens is not whole frames of {fh}x{fw}")
                for name, value in (("seg_start", pos), ("seg_len", length), ("frame_tokens", fh * fw),
                                    ("frame_h", fh), ("frame_w", fw)):
                    geo[name][b, s] = value
                s += 1
            elif kind in (IMAGE, VIDEO):
                raise ValueError("image/video segments need (modality, length, frame_h, frame_w)")
            pos += length
    layout = ModalityLayout(modality, **geo)
    return layout.to(device) if device is not None else layout


def from_hf_inputs(input_ids: torch.Tensor | None = None, *, mm_token_type_ids: torch.Tensor | None = None,
                   image_token_id: int | None = None, video_token_id: int | None = None,
                   image_grid_thw: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
                   spatial_merge_size: int = 1, attention_mask: torch.Tensor | None = None,
                   frame_hw: tuple[int, int] | dict | None = None) -> ModalityLayout:
    """Build a layout from processor-style inputs.

    Modality per token comes from ``mm_token_type_ids`` if given, else from placeholder ids in
    ``input_ids``. Frame geometry comes from ``*_grid_thw`` rows (t, h, w in patches; h/merge x
    w/merge tokens per frame), assigned in order to the contiguous runs of image/video tokens, sample
    after sample (one row per run, like HF's ``get_rope_index``), or from ``frame_hw`` for models
    without grids (LLaVA-style): one (h, w) for every visual run, or ``{modality: (h, w)}``. A run
    with neither is one frame of the whole run. Padding (``attention_mask == 0``) becomes PAD.
    """
    if mm_token_type_ids is not None:
        modality = mm_token_type_ids.to(torch.int32).clone()
    elif input_ids is not None:
        modality = torch.zeros_like(input_ids, dtype=torch.int32)
        if image_token_id is not None:
            modality[input_ids == image_token_id] = IMAGE
        if video_token_id is not None:
            modality[input_ids == video_token_id] = VIDEO
    else:
        raise ValueError("need input_ids or mm_token_type_ids to build a modality layout")
    if attention_mask is not None:
        if attention_mask.shape != modality.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} vs tokens {tuple(modality.shape)}")
        modality = torch.where(attention_mask.bool(), modality, PAD)
    grids = {IMAGE: _frame_sizes(image_grid_thw, spatial_merge_size),
             VIDEO: _frame_sizes(video_grid_thw, spatial_merge_size)}
    consumed = {IMAGE: 0, VIDEO: 0}  # grid rows continue across samples
    segments = [_runs_with_geometry(_runs(modality[b]), grids, consumed, frame_hw) for b in range(modality.shape[0])]
    layout = from_segments(segments, device=modality.device)
    # Keep PAD placement exactly as given (from_segments pads at the end only).
    return dataclasses.replace(layout, modality=modality)


def _frame_sizes(grid_thw, merge):
    if grid_thw is None:
        return []
    return [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grid_thw.tolist()]


def _runs(row: torch.Tensor) -> list:
    """[(modality, length)] of the contiguous runs of ``row``, found on its device (one transfer of
    the run starts, not of the row)."""
    n = row.numel()
    if n == 0:
        return []
    starts = torch.cat([row.new_zeros(1, dtype=torch.long), torch.nonzero(row[1:] != row[:-1]).flatten() + 1])
    lengths = torch.diff(starts, append=starts.new_tensor([n]))
    return list(zip(row[starts].tolist(), lengths.tolist()))


def _runs_with_geometry(runs, grids: dict, consumed: dict, frame_hw):
    """Runs as segments; visual runs get frame geometry."""
    segments = []
    for kind, length in runs:
        if kind in (IMAGE, VIDEO):
            segments.append((kind, length, *_geometry_for_run(kind, length, grids, consumed, frame_hw)))
        else:
            segments.append((TEXT if kind == PAD else kind, length))
    return segments


def _geometry_for_run(kind, length, grids, consumed, frame_hw):
    queue = grids[kind]
    if queue and consumed[kind] < len(queue):
        t, h, w = queue[consumed[kind]]
        consumed[kind] += 1
        if t * h * w != length:
            raise ValueError(f"{MODALITY_NAMES[kind]} run of {length} tokens does not match grid "
                             f"t={t} h={h} w={w} ({t * h * w} tokens after merging)")
        return h, w
    hw = frame_hw.get(kind) if isinstance(frame_hw, dict) else frame_hw
    if hw is not None and length % (hw[0] * hw[1]) == 0:
        return hw
    # No geometry known: one frame of the whole run (treated as a single image).
    return 1, length
