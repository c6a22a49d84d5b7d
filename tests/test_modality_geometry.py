"""The full modality layout (image vs video labels and frame geometry) reaches the rewritten
attention on its own, with no change to the model: tiny real Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT-Video
and LLaVA-OneVision called with processor-style inputs. What the op saw is read from its
``CallRecord.layout`` (a ``LayoutSummary``); the expected geometry comes from the model config and
the inputs, not from the backend.
"""

import logging

import pytest
import torch
from test_backend_models import LAYERS, build, logits

from mmcompile import annotate
from mmcompile import report as mm_report
from mmcompile.passes.modality_source import IMAGE, VIDEO, modality_inputs

ONLINE = {"debug_uncompiled": True, "min_sparse_len": 16, "policy": "online", "density": 0.5}


@pytest.fixture
def report():
    return mm_report.reset_report()


@pytest.fixture(autouse=True)
def _nothing_published_after():
    yield
    annotate.publish_input_ids(torch.zeros(1, 1, dtype=torch.long))  # what a new forward does: clear


def qwen_image_and_video(name, image_thw=(1, 4, 6), video_thw=(2, 8, 8), seed=0):
    """One image and one video (grids in patches), placed as Qwen's processor places them."""
    model, _ = build(name)
    cfg = model.config
    merge = cfg.vision_config.spatial_merge_size
    g = torch.Generator().manual_seed(seed)

    def pad(token, thw):
        n = thw[0] * thw[1] * thw[2] // merge ** 2
        return [torch.tensor([cfg.vision_start_token_id]), torch.full((n,), token),
                torch.tensor([cfg.vision_end_token_id])]

    ids = torch.cat([torch.randint(0, 200, (5,), generator=g), *pad(cfg.image_token_id, image_thw),
                     torch.randint(0, 200, (3,), generator=g), *pad(cfg.video_token_id, video_thw),
                     torch.randint(0, 200, (4,), generator=g)])[None]
    row = 3 * cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size ** 2
    inputs = dict(input_ids=ids, pixel_values=torch.randn(image_thw[0] * image_thw[1] * image_thw[2], row),
                  image_grid_thw=torch.tensor([image_thw]),
                  pixel_values_videos=torch.randn(video_thw[0] * video_thw[1] * video_thw[2], row),
                  video_grid_thw=torch.tensor([video_thw]),
                  mm_token_type_ids=(ids == cfg.image_token_id).int() + (ids == cfg.video_token_id).int() * 2)
    if name == "qwen2_5_vl":
        inputs["second_per_grid_ts"] = torch.tensor([1.0])
    return model, inputs


def _seen(report):
    """The layout summaries of this run's sparse calls (one per rewritten layer), all equal."""
    records = report.runtime()["records"]
    assert len(records) == LAYERS and all(r.path == "sparse" for r in records)
    assert all(r.layout is records[0].layout for r in records)  # read once per forward, for every layer
    return records[0].layout


def _compiled(model, options=ONLINE):
    """``torch.compile`` with the backend, recording ``modality_inputs`` of every graph it is given
    (the graph side below) before the backend rewrites it: one compile serves both checks."""
    from mmcompile.backend import mminference_backend

    found = []

    def backend(gm, example_inputs):
        found.append(modality_inputs(gm))
        return mminference_backend(gm, example_inputs, options=options)

    return torch.compile(model, backend=backend), found


def _check_qwen_geometry(model, inputs, seen, report):
    cfg, ids = model.config, inputs["input_ids"][0]
    merge = cfg.vision_config.spatial_merge_size
    assert seen.source == "input_ids placeholders"
    assert seen.geometry == f"image_grid_thw (merge {merge}), video_grid_thw (merge {merge})"
    image_at = int((ids == cfg.image_token_id).nonzero()[0])
    video_at = int((ids == cfg.video_token_id).nonzero()[0])
    (_, ih, iw), (vt, vh, vw) = (row.tolist() for row in (inputs["image_grid_thw"][0], inputs["video_grid_thw"][0]))
    ih, iw, vh, vw = ih // merge, iw // merge, vh // merge, vw // merge
    assert seen.tokens == {"text": len(ids) - ih * iw - vt * vh * vw, "image": ih * iw, "video": vt * vh * vw}
    assert seen.segments == ((("image", image_at, ih * iw, ih, iw), ("video", video_at, vt * vh * vw, vh, vw)),)
    assert seen.frame_stride == (vh * vw,)  # the grid pattern's stride: one merged video frame
    assert f"frame geometry: {seen.geometry}; tokens {seen.tokens}; frame stride {seen.frame_stride}" in report.table()


def test_qwen2_5_vl_image_and_video_labels_grid_geometry_and_what_the_graphs_show(report):
    """Qwen2.5-VL, no annotation: the labels and grids reach the op (Qwen2-VL: the test below). The
    same compile shows the graph side: roles from the compares, merge from ``grid.prod(-1) // m**2``."""
    model, inputs = qwen_image_and_video("qwen2_5_vl")
    compiled, found = _compiled(model)
    assert torch.isfinite(logits(compiled, inputs)).all()
    _check_qwen_geometry(model, inputs, _seen(report), report)

    found, cfg = [f for f in found if f is not None], model.config
    assert {f.tokens for f in found if f.tokens} == {((cfg.image_token_id, IMAGE), (cfg.video_token_id, VIDEO))}
    assert any(f.input_ids is not None and not f.tokens for f in found)  # the embedding: starts a forward
    grids = {(kind, merge) for f in found for kind, _, merge in f.grids}
    assert grids == {(IMAGE, 2), (VIDEO, 2)}  # from get_*_features' `grid.prod(-1) // merge**2`


def test_llava_next_video_frames_from_pixel_values_videos(report):
    model, inputs = build("llava_next_video")
    frames = inputs["pixel_values_videos"].shape[1]
    video = int((inputs["input_ids"] == model.config.video_token_index).sum())
    compiled, found = _compiled(model)
    logits(compiled, inputs)
    found, cfg = [f for f in found if f is not None], model.config
    assert {f.tokens for f in found if f.tokens} == {((cfg.image_token_index, IMAGE), (cfg.video_token_index, VIDEO))}
    assert sum(f.video_pixels is not None for f in found) == 1
    seen = _seen(report)
    assert seen.source == "input_ids placeholders"
    assert seen.geometry == f"pixel_values_videos ({frames} frames)"
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size // model.config.spatial_pool_stride  # pooled frame side
    assert video == frames * side * side
    assert seen.tokens["video"] == video and "image" not in seen.tokens
    assert seen.segments == ((("video", 6, video, side, side),),) and seen.frame_stride == (side * side,)


def test_llava_onevision_video_has_no_whole_frames(report):
    """LLaVA-OneVision ends each video with one newline token: the run is not whole frames, so its
    frame geometry stays unknown (one frame of the whole run), and the report says why."""
    model, inputs = build("llava_onevision")
    video = int((inputs["input_ids"] == model.config.video_token_index).sum())
    logits(torch.compile(model, backend="mminference", options=ONLINE), inputs)
    seen = _seen(report)
    assert seen.tokens["video"] == video and seen.frame_stride == (video,)
    assert seen.geometry.startswith(f"none for video ({video} video tokens are not whole frames")


def test_each_forward_sees_only_its_own_layout(report, caplog):
    """Qwen2-VL, one compile, five forwards: image + video (labels and grids, checked as for
    Qwen2.5-VL); a same-length forward from ``inputs_embeds``, which publishes nothing (no layout
    and a warning, not the last one); image only (the video grid of the first forward does not
    reach it); text only; image + video again (publishing makes the layout fresh)."""
    model, both = qwen_image_and_video("qwen2_vl")
    compiled = torch.compile(model, backend="mminference", options=ONLINE)
    assert torch.isfinite(logits(compiled, both)).all()
    _check_qwen_geometry(model, both, _seen(report), report)

    with torch.no_grad():
        embeds = model.get_input_embeddings()(both["input_ids"])
    report.reset_counters()
    with caplog.at_level(logging.WARNING, logger="mmcompile.runtime.forward_state"):
        logits(compiled, {"inputs_embeds": embeds})
    records = report.runtime()["records"]
    assert len(records) == LAYERS
    assert {r.layout.source for r in records} == {"none (nothing published by this forward)"}
    assert "published no modality inputs" in caplog.text

    cfg = model.config
    image_only = {k: v for k, v in both.items() if "video" not in k}
    image_only["input_ids"] = torch.where(both["input_ids"] == cfg.video_token_id, 7, both["input_ids"])
    image_only["mm_token_type_ids"] = (image_only["input_ids"] == cfg.image_token_id).int()
    report.reset_counters()
    logits(compiled, image_only)
    seen = _seen(report)
    assert seen.tokens.keys() == {"text", "image"} and seen.geometry == "image_grid_thw (merge 2)"

    report.reset_counters()
    logits(compiled, {"input_ids": both["input_ids"][:, :20]})  # text-only, right after
    assert {r.layout.source for r in report.runtime()["records"]} == {"none (text-only)"}

    report.reset_counters()
    logits(compiled, both)
    assert _seen(report).tokens.keys() == {"text", "image", "video"}


# --- the graph side: what modality_inputs reads from real Dynamo graphs -----------------------

def test_roles_from_names_then_default_and_mm_token_type_ids_input():
    def f(input_ids, mm_token_type_ids, x):
        special_image_mask = input_ids == 5
        mask = input_ids == 6
        return x * special_image_mask + x * mask + mm_token_type_ids

    graphs = []
    torch.compile(f, backend=lambda gm, _: graphs.append(gm) or gm.forward)(
        torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4))
    (graph,) = graphs
    found = modality_inputs(graph)
    assert found.tokens == ((5, IMAGE), (6, VIDEO))  # by name, else visual of unknown kind (video)
    names = [n.name for n in graph.graph.nodes if n.op == "placeholder"]
    assert "mm_token_type_ids" in names[found.mm_token_type_ids] and "input_ids" in names[found.input_ids]


def test_torch_2_11_spellings_compare_as_a_method_and_features_as_stack_outputs():
    """torch 2.11's Dynamo records ``input_ids == 5`` as the method ``__eq__``, and transformers 5.17's
    generate() hands the per-image features to the next graph as ``stack0_pooler_output_<i>``."""
    graph = torch.fx.Graph()
    ids = graph.placeholder("l_input_ids_")
    ids.meta["example_value"] = torch.zeros(1, 40, dtype=torch.long)
    features = []
    for i in range(2):
        features.append(graph.placeholder(f"l_stack0_pooler_output_{i}_"))
        features[-1].meta["example_value"] = torch.zeros(16, 8)
    video = graph.placeholder("l_stack0_video_pooler_output_0_")  # video features are not images
    video.meta["example_value"] = torch.zeros(16, 8)
    special_image_mask = graph.create_node("call_method", "__eq__", (ids, 5), name="special_image_mask")
    graph.output((special_image_mask, *features, video))
    found = modality_inputs(torch.fx.GraphModule(torch.nn.Module(), graph))
    assert found.tokens == ((5, IMAGE),)
    assert found.image_features == (1, 2)


# --- building the published layout ------------------------------------------------------------

def _publish(ids, tokens, **kw):
    annotate.publish_input_ids(torch.zeros(1, 1, dtype=torch.long))  # a new forward
    annotate.publish_input_ids(ids, tokens)
    for kind, (grid, merge) in kw.get("grids", {}).items():
        annotate.publish_grid(kind, grid, merge)
    if "type_ids" in kw:
        annotate.publish_mm_token_type_ids(kw["type_ids"])
    return annotate.published_layout()


def test_merge_size_inferred_from_token_counts_when_the_graph_does_not_show_it():
    ids = torch.tensor([[1] + [9] * 18 + [2]])  # 2 frames of 3x3 tokens: 2 x 6 x 6 patches, merge 2
    layout, source, geometry = _publish(ids, {9: VIDEO}, grids={VIDEO: (torch.tensor([[2, 6, 6]]), None)})
    assert (source, geometry) == ("input_ids placeholders", "video_grid_thw (merge 2)")
    assert layout.frame_stride().tolist() == [9] and layout.frame_h[0, 0] == 3


def test_grids_that_do_not_fit_keep_the_labels_and_drop_the_geometry(caplog):
    ids = torch.tensor([[1] + [9] * 18 + [2]])
    with caplog.at_level(logging.WARNING, logger="mmcompile.runtime.layout_sources"):
        layout, _, geometry = _publish(ids, {9: VIDEO}, grids={VIDEO: (torch.tensor([[1, 6, 6]]), 2)})
    assert geometry.startswith("none (video run of 18 tokens does not match grid")
    assert layout.modality[0].tolist() == [0] + [VIDEO] * 18 + [0] and layout.frame_stride().tolist() == [18]
    assert "frame geometry ignored" in caplog.text
    _, _, geometry = _publish(ids, {9: VIDEO}, grids={VIDEO: (torch.tensor([[1, 5, 5]]), None)})
    assert geometry == "none for video (video_grid_thw does not match the 18 video tokens)"


def test_mm_token_type_ids_input_is_preferred_and_a_new_forward_clears():
    ids = torch.tensor([[1, 9, 9, 9, 9, 2]])
    types = torch.tensor([[0, 1, 1, 2, 2, 0]])  # says more than the compare with one token does
    layout, source, _ = _publish(ids, {9: VIDEO}, type_ids=types)
    assert source == "mm_token_type_ids" and layout.modality.tolist() == types.tolist()
    annotate.publish_input_ids(ids)  # the next forward's embedding graph: no compares
    assert annotate.published_layout() == (None, "none (text-only)", "none")
