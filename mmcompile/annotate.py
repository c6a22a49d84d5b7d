"""Explicit modality annotation, for callers who pass ``inputs_embeds``, compile only the language
model, or whose graphs do not carry the modality ids:

    with mmcompile.annotate.modality(mm_token_type_ids=inputs["mm_token_type_ids"]):
        compiled_model(**inputs)

Every ``mminference::prefill_attention`` call inside the block whose sequence length matches reads
the ids at run time (the op is opaque to the compiler), so the layout reaches all layers across
Dynamo's graph breaks without changing the model or recompiling.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

_current: contextvars.ContextVar = contextvars.ContextVar("mminference_modality", default=None)


@contextlib.contextmanager
def modality(mm_token_type_ids: torch.Tensor | None = None, *, layout=None):
    """Annotate the forwards run inside the block: ``mm_token_type_ids`` [B, N] (0 text, 1 image,
    2 video, 3 audio, -1 padding) or a ``mmcompile.patterns.ModalityLayout``."""
    if (mm_token_type_ids is None) == (layout is None):
        raise ValueError("give exactly one of mm_token_type_ids or layout")
    ids = layout.modality if layout is not None else mm_token_type_ids
    if ids.dim() != 2:
        raise ValueError(f"modality ids must be [batch, tokens], got shape {tuple(ids.shape)}")
    token = _current.set(ids)
    try:
        yield
    finally:
        _current.reset(token)


def current_modality_ids() -> torch.Tensor | None:
    """The ids of the innermost ``modality`` block, or None."""
    return _current.get()


# Published by the backend from a graph that reads ``input_ids`` and compares them with the
# placeholder token ids (HF's ``get_placeholder_mask``): valid for the forward that published it.
# Every graph that reads ``input_ids`` republishes (or clears), so a new forward never sees stale ids.
_published: dict = {"ids": None}


def publish_from_input_ids(input_ids: torch.Tensor, visual_token_ids: tuple) -> None:
    """Modality ids [B, N] from ``input_ids``: tokens equal to a placeholder id are visual (VIDEO,
    2: image and video placeholders are not told apart here), the rest text. Empty ids clear."""
    if not visual_token_ids or input_ids.dim() != 2:
        _published["ids"] = None
        return
    visual = torch.zeros_like(input_ids, dtype=torch.bool)
    for token in visual_token_ids:
        visual |= input_ids == token
    _published["ids"] = visual.to(torch.int32) * 2


def published_modality_ids() -> torch.Tensor | None:
    return _published["ids"]
