"""Decides where each matched attention call gets its modality layout from (no rewrite yet).

In the graph every call gets ``modality_ids=None`` and the report says "at run time"; the layout
arrives at run time instead (text-only when none arrives), and the op records its source per call:
  * an explicit annotation (``mmcompile.annotate.modality``: ids or a whole ``ModalityLayout``);
  * a layout published by the graphs of the same forward: ``modality_inputs`` finds, in any graph,
    the placeholders that carry modality information, and the backend wraps that graph's compiled
    callable to publish them on each call (``mmcompile.annotate``). The op builds the layout from
    them once per forward.

What ``modality_inputs`` reads (placeholders by name; HF VLMs split these over several graphs):
  * ``input_ids`` compared with integer constants (HF's ``get_placeholder_mask``). Each compared
    token gets a role from the compare's source line (``self.config.image_token_id`` /
    ``video_token_index`` / ``audio_token_id``: what the model compares with), else from the node
    name (``special_image_mask``, ``special_video_mask``, ...), else VIDEO (visual, kind unknown).
    A graph that reads ``input_ids`` without comparing (the embedding lookup that opens every HF
    forward) begins a new forward (``mmcompile.runtime.begin_forward``): nothing published yet;
  * ``mm_token_type_ids``: the modality ids themselves (preferred to the compares);
  * ``image_grid_thw`` / ``video_grid_thw`` (Qwen's ``get_image_features`` / ``get_video_features``
    graphs; ``grid_thw`` of the vision tower is not told image from video and is not read), with
    the spatial merge size from the graph's ``grid_thw.prod(-1) // merge**2`` when present (else
    the op infers it from the token counts);
  * a 5-D ``pixel_values_videos`` [videos, frames, C, H, W] (LLaVA-style): frames per video;
  * LLaVA-style images, each one frame: a 4-D ``pixel_values`` [images, C, H, W] (how many), or the
    per-image features ``generate()`` precomputes ([tokens, hidden] each: ``_image_features_name``);
  * a 3-D ``position_ids`` [3 or 4, B, N] (Qwen's multimodal rotary ids, the last three rows t, h, w):
    the frame geometry when no grid reaches the graphs (``generate()`` encodes the pixels eagerly
    before the prefill and passes the language model precomputed positions, not the grids).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Optional

import torch
import torch.fx as fx

from ._fx import static_int
from ._types import PassResult, state

AT_RUN_TIME = "at run time (annotation or published inputs; else text-only)"
IMAGE, VIDEO, AUDIO = 1, 2, 3  # mmcompile.patterns.layout's ids (passes do not import the patterns)
_ROLES = {"image": IMAGE, "video": VIDEO, "audio": AUDIO}


def modality_source(gm: fx.GraphModule, config) -> PassResult:
    matched = [s for s in state(gm)["sites"] if s.status == "matched"]
    for site in matched:
        site.modality, site.modality_source = None, AT_RUN_TIME
    return PassResult("modality_source", changed=False, counts={"at run time": len(matched)})


@dataclasses.dataclass(frozen=True)
class ModalityInputs:
    """Placeholders of one graph that carry modality information (positions among the placeholders,
    which is where the compiled callable receives them)."""

    input_ids: Optional[int] = None
    tokens: tuple = ()  # ((token id, modality id), ...): what input_ids is compared with
    mm_token_type_ids: Optional[int] = None
    grids: tuple = ()  # ((modality id, position, merge size or None), ...) of *_grid_thw placeholders
    video_pixels: Optional[int] = None  # a 5-D pixel_values_videos
    mrope_positions: Optional[int] = None  # a [3 or 4, B, N] position_ids
    image_pixels: Optional[int] = None  # a 4-D pixel_values [images, C, H, W]
    image_features: tuple = ()  # positions of the per-image [tokens, hidden] features


def modality_inputs(gm: fx.GraphModule) -> Optional[ModalityInputs]:
    """What ``gm``'s placeholders say about the modality layout, or None when nothing."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    found = {}
    for pos, node in enumerate(placeholders):
        name = node.name
        if "input_ids" in name and "input_ids" not in found:
            found["input_ids"] = pos
            found["tokens"] = _compared_tokens(node)
        elif "mm_token_type_ids" in name:
            found["mm_token_type_ids"] = pos
        elif "image_grid_thw" in name or "video_grid_thw" in name:
            kind = IMAGE if "image_grid_thw" in name else VIDEO
            found.setdefault("grids", ())
            found["grids"] += ((kind, pos, _merge_size(node)),)
        elif "pixel_values_videos" in name and _dim(node) == 5:
            found["video_pixels"] = pos
        elif "position_ids" in name and _dim(node) == 3 and static_int(_fake_shape(node)[0]) in (3, 4):
            found["mrope_positions"] = pos
        elif "pixel_values" in name and _dim(node) == 4:
            found["image_pixels"] = pos
        elif _image_features_name(name) and _dim(node) == 2:
            found["image_features"] = found.get("image_features", ()) + (pos,)
    return ModalityInputs(**found) if found else None


def _image_features_name(name: str) -> bool:
    """Per-image features that ``generate()`` precomputed: ``mm_encoder_outputs`` ``image_pooler_output_<i>``
    (transformers 5.23), or the vision tower's ``pooler_output`` tuple handed to the next graph,
    ``stack0_pooler_output_<i>`` (5.17). Counted only against image tokens that have no grid."""
    return "image_pooler_output" in name or ("video" not in name and re.search(r"pooler_output_\d+", name) is not None)


def _dim(node: fx.Node) -> Optional[int]:
    shape = _fake_shape(node)
    return None if shape is None else len(shape)


def _fake_shape(node: fx.Node) -> Optional[tuple]:
    value = node.meta.get("example_value", node.meta.get("val"))
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _compared_tokens(ids: fx.Node) -> tuple:
    roles: dict = {}
    for node in ids.users:
        # torch 2.13's Dynamo records ``input_ids == 251`` as operator.eq, torch 2.11's as the
        # method ``__eq__``.
        is_eq = (node.op == "call_function" and node.target in (operator.eq, torch.eq)) or \
                (node.op == "call_method" and node.target in ("eq", "__eq__"))
        if is_eq and len(node.args) == 2 and node.args[0] is ids and isinstance(node.args[1], int):
            role = _role(node)
            token = node.args[1]
            # One token under two roles (two masks of one token, told apart only by their names): its
            # kind is unknown. GLM-4V's video mask compares with image_token_id: the source line says image.
            roles[token] = role if roles.get(token, role) == role else VIDEO
    return tuple(sorted(roles.items()))


def _role(compare: fx.Node) -> int:
    """IMAGE/VIDEO/AUDIO from the compare's source line (``== self.config.video_token_id``), else
    its node name (``special_video_mask``), else VIDEO."""
    lines = [ln.strip() for ln in (compare.meta.get("stack_trace") or "").strip().splitlines()]
    code = [ln for ln in lines if ln and not ln.startswith("File ") and not set(ln) <= {"^", "~"}]
    for text, pattern in ((code[-1] if code else "", r"(image|video|audio)_token"),
                          (compare.name, r"(image|video|audio)")):
        kinds = {m.group(1) for m in re.finditer(pattern, text)}
        if len(kinds) == 1:
            return _ROLES[kinds.pop()]
    return VIDEO


def _merge_size(grid: fx.Node) -> Optional[int]:
    """m from ``grid.prod(-1) // (m * m)`` (how Qwen splits the vision features per grid row)."""
    for prod in grid.users:
        if not ((prod.op == "call_method" and prod.target == "prod") or
                (prod.op == "call_function" and prod.target is torch.prod)):
            continue
        for div in prod.users:
            if div.op == "call_function" and div.target is operator.floordiv and div.args[0] is prod \
                    and isinstance(div.args[1], int) and div.args[1] > 0:
                root = math.isqrt(div.args[1])
                if root * root == div.args[1]:
                    return root
    return None
