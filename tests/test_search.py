"""Offline pattern search (mmcompile/search): it recovers planted head types, writes a plan the
backend loads, and captures a real model's q, k, v one layer at a time."""

import pytest
import torch

from mmcompile.patterns import forward_context
from mmcompile.patterns.planted import planted_qkv, standard_layout
from mmcompile.patterns.specs import AShape, Dense, Grid, VerticalSlash
from mmcompile.plans import ModelShape, load_plan
from mmcompile.search import search_layer

pytestmark = pytest.mark.interpreter

KINDS = ["grid", "a-shape", "vertical-slash", "random", "grid", "a-shape", "vertical-slash", "boundary"]


def recovered(kind, head) -> bool:
    """The planted type, read off the searched HeadPattern."""
    patterns = [p for _, p in head.intra]
    if kind == "grid":
        return isinstance(head.pattern_for("video"), Grid)
    if kind == "a-shape":
        return all(isinstance(p, AShape) for p in patterns)
    if kind == "vertical-slash":
        return any(isinstance(p, VerticalSlash) for p in patterns)
    if kind == "random":
        return patterns == [Dense()]
    return head.inter == "q-boundary" and head.pattern_for("text") != head.pattern_for("video")  # boundary


def test_search_recovers_the_planted_pattern_types_on_a_video_text_layout():
    layout = standard_layout("video", 4096)
    q, k, v, kinds = planted_qkv(layout, 8, 2, 64, kinds=KINDS, periodic_frames=16.0, seed=3)
    ctx = forward_context(layout, layout.length, 1, "cpu", 64, 64)
    patterns, scores = search_layer(q, k, v, ctx, target=0.95)
    hits = [recovered(kind, head) for kind, head in zip(kinds, patterns)]
    assert sum(hits) >= 0.9 * len(hits), list(zip(kinds, patterns))
    chosen = scores[0]["video"]["grid:frame/64"]
    assert set(chosen) == {"recall", "err", "cost"} and chosen["recall"] >= 0.95 and chosen["cost"] < 0.5


def test_search_command_writes_a_plan_for_the_model_and_shows_it(tmp_path, capsys):
    from mmcompile.cli import main
    from mmcompile.search.cli import _config

    out, picture = tmp_path / "plan.json", tmp_path / "map.png"
    main(["search", "tiny", "--source", "planted", "--tokens", "1536", "--out", str(out)])
    plan = load_plan(out, expect=ModelShape.of_config(_config("tiny")))
    assert sorted(plan.layers) == [0, 1] and plan.search["target_recall"] == 0.95
    assert any(not isinstance(p, Dense) for heads in plan.layers.values() for h in heads for _, p in h.intra)
    from mmcompile.search import retarget
    assert retarget(plan, 0.95).layers == plan.layers  # the scores reproduce the search's own choice
    strict = retarget(plan, 1.0)  # nothing sparse keeps every row's whole mass: all dense
    assert all(h.intra == (("*", Dense()),) for heads in strict.layers.values() for h in heads)
    main(["plan", "show", str(out), "--picture", str(picture)])
    text = capsys.readouterr().out
    assert "plan for qwen2_5_vl: 2 layers, 4/2 heads" in text and picture.read_bytes()[:4] == b"\x89PNG"


def test_capture_searches_each_layer_of_a_model_forward(tmp_path):
    """Random weights: no structure, so every head is Dense, but every layer was captured and
    scored (q, k, v of the right shapes reached the search)."""
    from mmcompile.cli import main

    out = tmp_path / "plan.json"
    main(["search", "tiny", "--source", "model", "--tokens", "1024", "--out", str(out)])
    plan = load_plan(out)
    assert sorted(plan.layers) == [0, 1]
    assert all(len(heads) == 4 for heads in plan.layers.values())
    assert set(plan.scores[(1, 3)]) == {"text", "video"}  # the annotated layout reached the search
    assert plan.scores[(1, 3)]["video"]["ashape:128+128"]["cost"] > 0


def test_rows_that_both_a_shape_and_vs_serve_are_listed_interchangeable():
    from mmcompile.search.candidates import choose_from_scores

    def entry(recall, cost):
        return dict(recall=recall, err=0.0, cost=cost)
    scores = {"text": {"ashape:128+512": entry(0.97, 0.10), "vs:128x4": entry(0.96, 0.09)},
              "video": {"ashape:128+512": entry(0.90, 0.10), "vs:128x4": entry(0.96, 0.05)}}
    head = choose_from_scores(scores, 0.95)
    assert head.pattern_for("text") == AShape(128, 512) and head.pattern_for("video") == VerticalSlash(128, 4)
    assert head.interchangeable == ("text",)  # video: A-shape misses the target there
    assert choose_from_scores(scores, 0.965).interchangeable == ()  # only A-shape reaches 0.965 on text


def test_a_candidate_off_in_output_does_not_reach_the_target_whatever_its_recall():
    """The search judges candidates as the run-time check does: recall and output error."""
    from mmcompile.search.candidates import choose_from_scores

    scores = {"video": {"grid:frame/256": dict(recall=0.976, err=0.22, cost=0.58),
                        "vs:512x8": dict(recall=1.0, err=0.0, cost=0.61)}}
    assert choose_from_scores(scores, 0.95).pattern_for("video") == VerticalSlash(512, 8)
    scores["video"]["grid:frame/256"]["err"] = 0.04
    assert isinstance(choose_from_scores(scores, 0.95).pattern_for("video"), Grid)



def test_search_prices_2d_boundary_pairs_and_takes_them_where_they_are_cheaper():
    """On the planted 2D-Boundary family the estimated VS pairs reach the target on both row sets;
    the search takes them for a head only where they cost less in all than the per-modality
    choice (here plain VS in original order is cheaper still, so the heads keep it)."""
    from mmcompile.patterns.families import family_layout, family_qkv
    from mmcompile.search.candidates import choose_from_scores

    n = 2048
    layout = family_layout("video", n, 1, frame_tokens=(64, 256))
    q, k, v, _ = family_qkv("2d-boundary", layout, 4, 1, 64, seed=1)
    patterns, scores = search_layer(q, k, v, forward_context(layout, n, 1, "cpu", 64, 64), target=0.95)
    for head, by_rows in zip(patterns, scores.values()):
        pairs = [by_rows[rows]["2d:vs:512x8"] for rows in ("text", "video")]
        assert all(e["recall"] >= 0.95 for e in pairs), pairs
        chosen = sum(by_rows[rows][f"vs:{p.vertical}x{p.slash_blocks}"]["cost"] for rows, p in head.intra)
        assert head.inter == "q-boundary" and chosen < sum(e["cost"] for e in pairs)
    cheaper = {rows: {**entries, "2d:vs:512x8": dict(entries["2d:vs:512x8"], cost=0.01)}
               for rows, entries in scores[0].items()}
    head = choose_from_scores(cheaper, 0.95)
    assert head.inter == "2d-boundary" and head.intra[0] == ("text>text", VerticalSlash(512, 8)), head
