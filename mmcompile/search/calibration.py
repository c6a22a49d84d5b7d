"""Calibration inputs for ``mminference search --source model`` from a checkpoint folder's own
processor: synthetic media and a prompt with the model's placeholder tokens, and their modality
layout, so that the search sees q, k, v of the whole VLM (vision tower included) on inputs shaped as
a user's are.

    calibration, why_not = processor_calibration("path/to/checkpoint", tokens=32768, seed=0)
    if calibration is not None:
        model(**calibration.inputs)         # under search.capture.capturing; layout: calibration.layout

Media kind: video frames when the processor has a video processor (Qwen2-VL / 2.5-VL,
LLaVA-OneVision), else images (LLaVA), one image standing for one frame. How many: the processor is
probed once with one unit (one image, or one temporal patch of frames: ``temporal_patch_size``, 2
for Qwen), which gives the tokens a unit yields, the prompt's text tokens and the pixel size the
processor works at; then ``(tokens - text) // per_unit`` units (at least one), so the prompt has
at most about ``tokens`` tokens. That assumes each unit costs what it costs alone: true for fixed-size
images (LLaVA) and for Qwen's per-frame resize; the record gives the real count either way.

The layout is built from the processor's output by the runtime's own rule
(``mmcompile.runtime.layout_sources.layout_from_published``, what the backend builds from the same
inputs when the plan is used): placeholder ids or ``mm_token_type_ids`` for the modality, ``*_grid_thw``
for frame geometry, or an image's tokens as one square frame (LLaVA).
"""

from __future__ import annotations

import dataclasses
import logging
import os

log = logging.getLogger(__name__)

QUESTION = "what moves in the video where does it go"
PROBE_SIDE = 448  # pixels of the probe's frames; the processor resizes them to the size it works at
SCENES = 4  # distinct backgrounds over the frames (a scene cut every count / SCENES frames)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The processor's output for synthetic media and a prompt, and what it holds."""

    inputs: dict  # the processor's BatchFeature: ``model(**inputs)``
    layout: object  # mmcompile.patterns.ModalityLayout of ``inputs["input_ids"]``
    description: str  # for the plan's calibration record, e.g. "processor (8 frames of 56x56 ...)"


def processor_calibration(model: str, tokens: int, seed: int = 0):
    """(Calibration, "") when ``model`` is a folder whose ``AutoProcessor`` takes images or video,
    else (None, why not) and the caller keeps random embeddings."""
    if not os.path.isdir(model):
        return None, "not a checkpoint folder"
    try:
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained(model)
    except Exception as e:  # noqa: BLE001 - any failure means no processor: the caller falls back
        log.info("mminference search: no processor from %s: %r", model, e)
        return None, f"no processor loads: {type(e).__name__}"
    kind = _media_kind(processor)
    if kind is None:
        return None, f"{type(processor).__name__} takes no images or video"
    try:
        probe = _run(processor, kind, 1, (PROBE_SIDE, PROBE_SIDE), seed)
    except Exception as e:  # noqa: BLE001 - a processor that wants other inputs than ours: fall back
        log.warning("mminference search: %s refused synthetic %s input: %r", type(processor).__name__, kind, e)
        return None, f"{type(processor).__name__} refused synthetic {kind} input: {type(e).__name__}"
    token_id = processor.video_token_id if kind == "video" else processor.image_token_id
    per_unit = int((probe["input_ids"] == token_id).sum())
    if per_unit == 0:
        return None, f"{type(processor).__name__}'s prompt has no {kind} tokens"
    text = probe["input_ids"].shape[1] - per_unit
    units = max(1, (tokens - text) // per_unit)
    size = _processed_size(probe, _media_processor(processor, kind))
    inputs = _run(processor, kind, units, size, seed)
    layout, geometry = _layout(processor, inputs)
    if layout is None:
        return None, f"{type(processor).__name__}'s inputs have no image or video tokens"
    frames = units * _frames_per_unit(processor, kind)
    media = int((inputs["input_ids"] == token_id).sum())
    what = f"{frames} frames of {size[0]}x{size[1]} in one video" if kind == "video" else \
        f"{frames} images of {size[0]}x{size[1]}"
    description = (f"processor ({what}: {media} {kind} tokens of {inputs['input_ids'].shape[1]}; "
                   f"geometry {geometry})")
    return Calibration(inputs, layout, description), ""


def synthetic_frames(count: int, height: int, width: int, seed: int = 0) -> list:
    """``count`` RGB frames (uint8 [H, W, 3]): a few scenes of smooth colour gradients, each with a
    square of its own colour moving at constant speed: tokens that repeat along time and vary smoothly within a
    frame, as a video's do, where pure noise would give the vision tower nothing alike to attend to.
    Deterministic for ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    scenes = max(1, min(SCENES, count))
    colours = rng.integers(0, 200, (scenes, 3, 3)).astype(np.float32)  # per scene: two ends, square
    angles = rng.uniform(0, 2 * np.pi, scenes)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    side = max(2, min(height, width) // 6)
    frames = []
    for i in range(count):
        s = i * scenes // count
        ramp = (np.cos(angles[s]) * xs / max(width - 1, 1) + np.sin(angles[s]) * ys / max(height - 1, 1))
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        frame = colours[s, 0] + ramp[..., None] * (colours[s, 1] - colours[s, 0])
        y = (i * 3) % max(height - side, 1)
        x = (i * 5) % max(width - side, 1)
        frame[y:y + side, x:x + side] = 55 + colours[s, 2]
        frames.append(frame.astype(np.uint8))
    return frames


def _media_kind(processor):
    """"video" with a video processor and token, else "image" with an image processor and token."""
    for kind in ("video", "image"):
        if getattr(processor, f"{kind}_processor", None) is not None and \
                getattr(processor, f"{kind}_token_id", None) is not None:
            return kind
    return None


def _media_processor(processor, kind: str):
    return processor.video_processor if kind == "video" else processor.image_processor


def _frames_per_unit(processor, kind: str) -> int:
    """Frames of one temporal patch (Qwen's video processor: 2), 1 for images."""
    return int(getattr(processor.video_processor, "temporal_patch_size", None) or 1) if kind == "video" else 1


def _run(processor, kind: str, units: int, size, seed: int):
    frames = synthetic_frames(units * _frames_per_unit(processor, kind), size[0], size[1], seed)
    text = _prompt(processor, kind, units)
    media = dict(videos=[frames]) if kind == "video" else dict(images=frames)
    return processor(text=text, return_tensors="pt", **media)


def _prompt(processor, kind: str, units: int) -> str:
    """The model's own prompt (its chat template) when the processor has one, else the placeholders
    then the question; Qwen-style tokenizers get each placeholder between ``<|vision_start|>`` and
    ``<|vision_end|>``, as their chat template writes it."""
    items = 1 if kind == "video" else units
    if getattr(processor, "chat_template", None):
        content = [{"type": kind}] * items + [{"type": "text", "text": QUESTION}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
    token = processor.video_token if kind == "video" else processor.image_token
    vocab = processor.tokenizer.get_vocab()
    if "<|vision_start|>" in vocab and "<|vision_end|>" in vocab:
        token = f"<|vision_start|>{token}<|vision_end|>"
    return " ".join([token] * items) + " " + QUESTION


def _processed_size(probe, media) -> tuple[int, int]:
    """(height, width) in pixels the processor made of the probe's frames: from the grid (patches
    times ``patch_size``) or a 4-D ``pixel_values``; else the probe's own size."""
    patch = getattr(media, "patch_size", None)
    for key in ("video_grid_thw", "image_grid_thw"):
        if key in probe and patch:
            _, h, w = probe[key][0].tolist()
            return int(h) * int(patch), int(w) * int(patch)
    pixels = probe.get("pixel_values")
    if pixels is not None and pixels.dim() == 4:
        return int(pixels.shape[-2]), int(pixels.shape[-1])
    return PROBE_SIDE, PROBE_SIDE


def _layout(processor, inputs):
    """(ModalityLayout or None, geometry) of the processor's output, by the runtime's rule."""
    from mmcompile.patterns.layout import IMAGE, VIDEO
    from mmcompile.runtime.layout_sources import PublishedInputs, layout_from_published

    tokens = {getattr(processor, name): mid for name, mid in (("image_token_id", IMAGE), ("video_token_id", VIDEO))
              if getattr(processor, name, None) is not None}
    grids = {mid: (inputs[key], getattr(_media_processor(processor, name), "merge_size", None))
             for key, mid, name in (("image_grid_thw", IMAGE, "image"), ("video_grid_thw", VIDEO, "video"))
             if key in inputs}
    pixels, videos = inputs.get("pixel_values"), inputs.get("pixel_values_videos")
    published = PublishedInputs(
        input_ids=inputs["input_ids"], tokens=tokens, type_ids=inputs.get("mm_token_type_ids"), grids=grids,
        images=(int(pixels.shape[0]), None) if pixels is not None and pixels.dim() >= 4 else None,
        video_frames=tuple(videos.shape[:2]) if videos is not None and videos.dim() == 5 else None)
    layout, _, geometry = layout_from_published(published)
    return layout, geometry
