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
``mm_token_type_ids``, ``*_grid_thw``, a 5-D ``pixel_values_videos``, images, M-RoPE
``position_ids``) into the forward's state (``mmcompile.runtime.forward_state``), which builds one ``ModalityLayout`` from it, once per forward.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from mmcompile.runtime.forward_state import ForwardState, begin_forward, current_forward, forward_scope


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
    with forward_scope(ForwardState(annotation=(layout, geometry))):
        yield


# --- published by the backend's input wrapper --------------------------------------------------

def publish_input_ids(input_ids: torch.Tensor, tokens=()) -> None:
    """``input_ids`` [B, N] and the placeholder tokens it is compared with (``{token: modality}`` or
    pairs). No tokens: the graph that opens an HF forward (the embedding lookup) runs, so a new
    forward begins with nothing published."""
    tokens = dict(tokens)
    if not tokens or input_ids.dim() != 2:
        begin_forward()
        return
    current_forward().publish(input_ids=input_ids, tokens=tokens)


def publish_mm_token_type_ids(ids: torch.Tensor) -> None:
    if ids.dim() == 2:
        current_forward().publish(type_ids=ids)


def publish_grid(modality: int, grid_thw: torch.Tensor, merge: Optional[int] = None) -> None:
    """``image_grid_thw`` / ``video_grid_thw`` [n, 3] (patches) and the spatial merge size if known."""
    if grid_thw.dim() == 2 and grid_thw.shape[-1] == 3:
        current_forward().publish(grids={modality: (grid_thw, merge)})


def publish_video_frames(pixel_values_videos: torch.Tensor) -> None:
    """LLaVA-style ``pixel_values_videos`` [videos, frames, C, H, W]: frames per video."""
    if pixel_values_videos.dim() == 5:
        current_forward().publish(video_frames=tuple(pixel_values_videos.shape[:2]))


def publish_mrope_positions(position_ids: torch.Tensor) -> None:
    """Qwen-style multimodal rotary ``position_ids`` [3 or 4, B, N] (last three rows t, h, w)."""
    if position_ids.dim() == 3 and position_ids.shape[0] in (3, 4):
        current_forward().publish(positions=position_ids)


def publish_images(images: int, tokens: Optional[tuple] = None) -> None:
    """LLaVA-style images, each one frame: how many, and how many tokens each when known."""
    if images > 0:
        current_forward().publish(images=(images, tokens))


def published_layout() -> tuple:
    """(ModalityLayout or None, source, geometry) of what this forward's graphs published."""
    return current_forward().published_layout()
