"""Raw modality inputs of one forward -> a ``ModalityLayout`` (built once per forward) and its summary.

What the backend's graphs publish (``passes/modality_source.py::modality_inputs``): ``input_ids``
with the placeholder token ids it is compared with, ``mm_token_type_ids``, ``*_grid_thw`` with the
spatial merge size, a 5-D ``pixel_values_videos``, Qwen's M-RoPE ``position_ids`` (frame geometry
where no grid is published). Host syncs happen here, once per forward.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

import torch

from .records import LayoutSummary

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PublishedInputs:
    """The modality inputs the graphs of one forward published."""

    input_ids: Optional[torch.Tensor] = None
    tokens: dict = dataclasses.field(default_factory=dict)  # token id -> modality id
    type_ids: Optional[torch.Tensor] = None
    grids: dict = dataclasses.field(default_factory=dict)  # modality id -> (grid_thw [n, 3], merge or None)
    video_frames: Optional[tuple] = None  # (videos, frames per video)
    positions: Optional[torch.Tensor] = None  # M-RoPE position_ids [3 or 4, B, N]: rows t, h, w last
    images: Optional[tuple] = None  # LLaVA-style (images, tokens of each or None): an image is a frame

    def empty(self) -> bool:
        return self.input_ids is None and self.type_ids is None


def layout_from_published(p: PublishedInputs) -> tuple:
    """(ModalityLayout or None, source, geometry) of what was published."""
    from mmcompile.patterns.layout import IMAGE, MODALITY_NAMES, TEXT, VIDEO, from_hf_inputs

    if p.type_ids is not None:
        modality, source = p.type_ids.to(torch.int32), "mm_token_type_ids"
    elif p.input_ids is not None:
        modality, source = torch.zeros_like(p.input_ids, dtype=torch.int32), "input_ids placeholders"
        for token, kind in p.tokens.items():
            modality = torch.where(p.input_ids == token, kind, modality)
    else:
        return None, "none (text-only)", "none"
    kinds = sorted(k for k in MODALITY_NAMES if k != TEXT)
    counts = dict(zip(kinds, torch.stack([(modality == k).sum() for k in kinds]).tolist()))
    if not any(counts.values()):
        return None, "none (text-only)", "none"
    grids, notes = {}, []
    for kind, (grid, merge) in sorted(p.grids.items()):
        if not counts[kind]:
            continue
        name = MODALITY_NAMES[kind]
        merge = merge or _merge_from_counts(grid, counts[kind])
        if merge is None:
            notes.append(f"none for {name} ({name}_grid_thw does not match the {counts[kind]} {name} tokens)")
            continue
        grids[kind] = grid.cpu() // torch.tensor([1, merge, merge])
        notes.append(f"{name}_grid_thw (merge {merge})")
    for kind in (IMAGE, VIDEO):
        if counts[kind] and kind not in grids and p.positions is not None:
            name = MODALITY_NAMES[kind]
            rows = _grids_from_positions(p.positions, modality, kind)
            if rows is None:
                notes.append(f"none for {name} (position_ids do not tile its token runs into frames)")
            else:
                grids[kind] = rows
                notes.append(f"position_ids (M-RoPE) for {name}")
    frame_hw = {}
    if p.video_frames is not None and counts[VIDEO] and VIDEO not in grids:
        videos, frames = p.video_frames
        per_frame, rest = divmod(counts[VIDEO], videos * frames)
        if rest == 0:
            side = math.isqrt(per_frame)
            frame_hw[VIDEO] = (side, side) if side * side == per_frame else (1, per_frame)
            notes.append(f"pixel_values_videos ({frames} frames)")
        else:  # LLaVA-OneVision: one newline token ends each video
            notes.append(f"none for video ({counts[VIDEO]} video tokens are not whole frames of {frames} per video)")
    if p.images is not None and counts[IMAGE] and IMAGE not in grids:
        images, tokens = p.images
        per_image, rest = divmod(counts[IMAGE], images)
        if rest == 0 and (tokens is None or set(tokens) == {per_image}):
            side = math.isqrt(per_image)
            frame_hw[IMAGE] = (side, side) if side * side == per_image else (1, per_image)
            notes.append(f"{images} images of {per_image} tokens")
        else:
            notes.append(f"none for image ({counts[IMAGE]} image tokens are not {images} equal images)")
    try:
        layout = from_hf_inputs(mm_token_type_ids=modality, image_grid_thw=grids.get(IMAGE),
                                video_grid_thw=grids.get(VIDEO), frame_hw=frame_hw)
    except ValueError as e:  # grids that do not fit the token runs: keep the modalities, drop the geometry
        log.warning("mminference: published frame geometry ignored: %s", e)
        return from_hf_inputs(mm_token_type_ids=modality), source, f"none ({e})"
    return layout, source, ", ".join(notes) or "none"


def _grids_from_positions(positions: torch.Tensor, modality: torch.Tensor, kind: int) -> Optional[torch.Tensor]:
    """[runs, 3] (frames, h, w in tokens) of each run of ``kind`` tokens, sample after sample, read
    off the h and w rows of Qwen's rotary ids (a frame is h x w tokens; frames = run / (h * w)). The
    t row is not counted: its values are times, which may repeat. None when a run is not whole frames."""
    if positions.shape[1:] != modality.shape:
        return None
    h_ids, w_ids = positions[-2].cpu(), positions[-1].cpu()
    runs = torch.nn.functional.pad((modality == kind).int().cpu(), (1, 1)).diff(dim=-1)
    rows = []
    for b in range(modality.shape[0]):
        starts, ends = (runs[b] == 1).nonzero().flatten().tolist(), (runs[b] == -1).nonzero().flatten().tolist()
        for start, end in zip(starts, ends):
            h, w = h_ids[b, start:end].unique().numel(), w_ids[b, start:end].unique().numel()
            frames, rest = divmod(end - start, h * w)
            if rest:
                return None
            rows.append((frames, h, w))
    return torch.tensor(rows, dtype=torch.long) if rows else None


def _merge_from_counts(grid: torch.Tensor, tokens: int) -> Optional[int]:
    """m with sum(t*h*w) = tokens * m * m (Qwen's processor: one token per m x m patches), else None."""
    patches = int(grid.prod(-1).sum())
    if tokens <= 0 or patches % tokens:
        return None
    merge = math.isqrt(patches // tokens)
    return merge if merge * merge == patches // tokens else None


def summarize(layout, source: str, geometry: str) -> LayoutSummary:
    """The layout as plain data for call records (host syncs: once per forward)."""
    from mmcompile.patterns.layout import MODALITY_NAMES

    if layout is None:
        return LayoutSummary(source, geometry, {}, (), ())
    kinds = sorted(MODALITY_NAMES)
    counts = torch.stack([(layout.modality == k).sum() for k in kinds]).tolist()
    seg_kind = layout.modality.gather(1, layout.seg_start.long().clamp(0, max(layout.length - 1, 0)))
    rows = torch.stack([seg_kind, layout.seg_start, layout.seg_len, layout.frame_h, layout.frame_w], -1).tolist()
    segments = tuple(tuple((MODALITY_NAMES.get(k, str(k)), start, length, h, w)
                           for k, start, length, h, w in sample if length > 0) for sample in rows)
    return LayoutSummary(source, geometry, {MODALITY_NAMES[k]: c for k, c in zip(kinds, counts) if c},
                         tuple(layout.frame_stride().tolist()), segments)
