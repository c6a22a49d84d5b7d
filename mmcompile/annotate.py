"""Where the rewritten attention's modality layout comes from at run time.

An explicit annotation, for callers who pass ``inputs_embeds``, compile only the language model, or
whose graphs do not carry the modality inputs:

    with mmcompile.annotate.modality(mm_token_type_ids=inputs["mm_token_type_ids"]):
        compiled_model(**inputs)
    with mmcompile.annotate.modality(layout=mmcompile.patterns.from_hf_inputs(...)):  # with frame geometry
        compiled_model(**inputs)

Every ``mminference::prefill_attention`` call inside the block whose [batch, tokens] match reads the
layout at run time (the op is opaque to the compiler), so it reaches all layers across Dynamo's
graph breaks without changing the model or recompiling.

Without an annotation, the backend publishes what the graphs of the current forward see
(``passes/modality_source.py::modality_inputs``: ``input_ids`` compared with placeholder token ids,
``mm_token_type_ids``, ``*_grid_thw``, a 5-D ``pixel_values_videos``), and ``published_layout``
builds one ``ModalityLayout`` from it, once per forward.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Optional

import torch

log = logging.getLogger(__name__)
_current: contextvars.ContextVar = contextvars.ContextVar("mminference_modality", default=None)


@contextlib.contextmanager
def modality(mm_token_type_ids: torch.Tensor | None = None, *, layout=None):
    """Annotate the forwards run inside the block: ``mm_token_type_ids`` [B, N] (0 text, 1 image,
    2 video, 3 audio, -1 padding; frame geometry unknown) or a ``mmcompile.patterns.ModalityLayout``
    (kept whole, frame geometry included). The layout is checked here, once (a host sync)."""
    from mmcompile.patterns.layout import check_layout, from_hf_inputs

    if (mm_token_type_ids is None) == (layout is None):
        raise ValueError("give exactly one of mm_token_type_ids or layout")
    geometry = "given"
    if layout is None:
        if mm_token_type_ids.dim() != 2:
            raise ValueError(f"modality ids must be [batch, tokens], got shape {tuple(mm_token_type_ids.shape)}")
        layout, geometry = from_hf_inputs(mm_token_type_ids=mm_token_type_ids), "none"
    check_layout(layout)
    token = _current.set((layout, geometry))
    try:
        yield
    finally:
        _current.reset(token)


def current_annotation() -> Optional[tuple]:
    """(ModalityLayout, geometry: "given" or "none") of the innermost ``modality`` block, or None."""
    return _current.get()


# --- published by the backend --------------------------------------------------------------------
# Valid for the forward that published it: the graph that opens every HF forward reads input_ids
# without comparing it (the embedding lookup) and clears, so a new forward never sees stale inputs;
# a forward with no input_ids at all (inputs_embeds) is caught when a layer reads it a second time.

class _Published:
    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.input_ids: Optional[torch.Tensor] = None
        self.tokens: dict = {}  # token id -> modality id
        self.type_ids: Optional[torch.Tensor] = None
        self.grids: dict = {}  # modality id -> (grid_thw [n, 3], merge size or None)
        self.video_frames: Optional[tuple] = None  # (videos, frames per video)
        self.built: Optional[tuple] = None  # (layout or None, source, geometry), once per forward
        self.layers_used: set = set()  # rewritten layers that read this publication
        self.stale = False  # a layer came back: a new forward that published nothing


_published = _Published()


def publish_input_ids(input_ids: torch.Tensor, tokens=()) -> None:
    """``input_ids`` [B, N] and the placeholder tokens it is compared with (``{token: modality}`` or
    pairs). No tokens: a new forward (or a text-only one) starts, and everything published is cleared."""
    tokens = dict(tokens)
    if not tokens or input_ids.dim() != 2:
        _published.clear()
        return
    _published.input_ids, _published.tokens = input_ids, tokens
    _fresh()


def _fresh() -> None:
    """Something new was published: rebuild the layout, and a new forward may use it."""
    _published.built, _published.layers_used, _published.stale = None, set(), False


def publish_mm_token_type_ids(ids: torch.Tensor) -> None:
    if ids.dim() == 2:
        _published.type_ids = ids
        _fresh()


def publish_grid(modality: int, grid_thw: torch.Tensor, merge: Optional[int] = None) -> None:
    """``image_grid_thw`` / ``video_grid_thw`` [n, 3] (patches) and the spatial merge size if known."""
    if grid_thw.dim() == 2 and grid_thw.shape[-1] == 3:
        _published.grids[modality] = (grid_thw, merge)
        _fresh()


def publish_video_frames(pixel_values_videos: torch.Tensor) -> None:
    """LLaVA-style ``pixel_values_videos`` [videos, frames, C, H, W]: frames per video."""
    if pixel_values_videos.dim() == 5:
        _published.video_frames = tuple(pixel_values_videos.shape[:2])
        _fresh()


def published_layout() -> tuple:
    """(ModalityLayout or None, source, geometry) of what this forward's graphs published; built on
    the first call after a publication (host syncs once per forward, not per layer)."""
    if _published.built is None:
        _published.built = _build(_published)
    return _published.built


def published_for_layer(layer: Optional[int]) -> tuple:
    """``published_layout()`` for the rewritten attention of ``layer``. A publication serves one
    forward, in which every layer runs once: a layer that already read it means a new forward that
    published nothing (one started from ``inputs_embeds``), which then gets no layout (text-only,
    logged once) instead of the previous forward's."""
    if layer is not None and layer >= 0 and published_layout()[0] is not None:
        if not _published.stale and layer in _published.layers_used:
            _published.stale = True
            log.warning("mminference: a new forward published no modality inputs (inputs_embeds?); "
                        "the previous forward's layout is not reused: text-only")
        if _published.stale:
            return None, "none (nothing published by this forward)", "none"
        _published.layers_used.add(layer)
    return published_layout()


def _build(p: _Published) -> tuple:
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
    try:
        layout = from_hf_inputs(mm_token_type_ids=modality, image_grid_thw=grids.get(IMAGE),
                                video_grid_thw=grids.get(VIDEO), frame_hw=frame_hw)
    except ValueError as e:  # grids that do not fit the token runs: keep the modalities, drop the geometry
        log.warning("mminference: published frame geometry ignored: %s", e)
        return from_hf_inputs(mm_token_type_ids=modality), source, f"none ({e})"
    return layout, source, ", ".join(notes) or "none"


def _merge_from_counts(grid: torch.Tensor, tokens: int) -> Optional[int]:
    """m with sum(t*h*w) = tokens * m * m (Qwen's processor: one token per m x m patches), else None."""
    patches = int(grid.prod(-1).sum())
    if tokens <= 0 or patches % tokens:
        return None
    merge = math.isqrt(patches // tokens)
    return merge if merge * merge == patches // tokens else None
