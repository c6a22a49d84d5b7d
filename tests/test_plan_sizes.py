"""Plans that transfer across lengths (issue 12): the plan fixes each head's pattern type per query
modality, the online policy sizes it for the input at hand (``plan_sizes="online"``, the default),
against the plan's budgets as searched (``plan_sizes="plan"``)."""

import dataclasses

import pytest
import torch

import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference.*)
from mmcompile.config import config_from_options
from mmcompile.patterns import forward_context, layer_attention
from mmcompile.patterns.families import family_layout, family_qkv
from mmcompile.patterns.planted import planted_qkv, standard_layout
from mmcompile.patterns.policy import choose_with_fallbacks
from mmcompile.patterns.specs import AShape, Dense, Grid, HeadPattern, VerticalSlash
from mmcompile.plans import layer_arg
from mmcompile.runtime import RuntimeOptions, track
from mmcompile.search import search_layer

BLOCK = (128, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


def types(head: HeadPattern) -> list:
    return [(m, type(p)) for m, p in head.intra]


def family_heads(n: int):
    """A sink-local head and a slash-bands head (one KV head each) of the planted families at ``n``
    tokens: the widest band a seed may draw grows with the length (``families._behaviour``), as a
    model's heads reach farther in a longer prompt."""
    layout = family_layout("video", n, 1, frame_tokens=(64, 256))
    local = family_qkv("sink-local", layout, 2, 1, 64, seed=1)
    bands = family_qkv("slash-bands", layout, 2, 1, 64, seed=1)
    q = torch.cat([local[0][:, :1], bands[0][:, 1:]], 1)
    k, v = (torch.cat([local[i], bands[i]], 1) for i in (1, 2))
    return layout, q, k, v


@pytest.mark.interpreter
def test_a_plan_searched_short_keeps_its_families_and_meets_the_target_twice_as_long():
    """Sized at twice the search's length (2K -> 4K; at 1K a VS of 512 columns costs ~0.8 of dense): each row set runs the plan's family, or where the search
    found A-shape and VS both reaching the target (``interchangeable``), the cheaper of the two
    for this input: the sink-local head's band outgrows its A-shape and VS covers it for less."""
    layout, q, k, v = family_heads(2048)
    plan, _ = search_layer(q, k, v, forward_context(layout, 2048, 1, "cpu", *BLOCK), target=0.95)
    assert types(plan[0]) == [("text", AShape), ("video", AShape)], plan
    assert plan[0].interchangeable == ("text", "video"), plan
    assert types(plan[1])[1] == ("video", VerticalSlash), plan  # its text rows: VS, or A-shape where VS also served
    assert types(plan[1])[0] == ("text", VerticalSlash) or "text" in plan[1].interchangeable, plan
    layout, q, k, v = family_heads(4096)
    ctx = forward_context(layout, 4096, 1, "cpu", *BLOCK)
    sized = layer_attention(q, k, v, ctx, density=0.2, recall=0.95, families=plan)
    strict = layer_attention(q, k, v, ctx, density=0.2, recall=0.95,
                             families=[dataclasses.replace(h, interchangeable=()) for h in plan])
    searched = layer_attention(q, k, v, ctx, plan, density=0.2, recall=0.95)
    # The sink-local head keeps its family. The slash-bands head's VS keeps most of the held-out
    # rows' mass but is off in output (a narrow band's edge): the check sends it dense.
    for head, planned in zip(strict.patterns[:1], plan):  # a family short of the target is re-chosen
        assert [rows for rows, _ in types(head)] == [rows for rows, _ in types(planned)], (head, planned)
        assert all(family in (AShape, VerticalSlash) for _, family in types(head)), head
    assert types(strict.patterns[1]) == [("*", Dense)] and types(sized.patterns[1]) == [("*", Dense)]
    for head, planned in zip(sized.patterns[:1], plan):
        for (rows, pattern), (_, searched_pattern) in zip(head.intra, planned.intra):
            either = rows in planned.interchangeable
            assert isinstance(pattern, (AShape, VerticalSlash) if either else type(searched_pattern)), (head, planned)
    assert sized.patterns != tuple(plan)  # sized for this input, not the plan's budgets
    assert isinstance(sized.patterns[0].pattern_for("video"), VerticalSlash)  # the cheaper family here
    for result in (sized, strict):
        assert (result.head_recall >= 0.95).all(), result.head_recall
        assert (result.head_error <= 0.05).all(), result.head_error
    assert any(Dense in [family for _, family in types(h)] for h in searched.patterns)  # 1024's budget: dense rows
    assert float(sized.head_density.sum()) < float(strict.head_density.sum()), (sized.head_density,
                                                                                strict.head_density)


def planted_video(n=3072, layout_kind="video"):
    layout = standard_layout(layout_kind, n)
    q, k, _, _ = planted_qkv(layout, 8, 2, 64, periodic_frames=16.0, seed=3)
    return q, k, forward_context(layout, n, 1, "cpu", 64, 64)


def only(family) -> list:
    return [HeadPattern("none", (("*", family()),))] * 8


@pytest.mark.parametrize("family", [AShape, VerticalSlash])
def test_a_restriction_to_one_family_chooses_it_where_it_reaches_the_target(family):
    """Rows whose plan family is predicted to reach the target keep it; the others (the family
    cannot serve them at this length) get the online choice."""
    q, k, ctx = planted_video()
    online, _ = choose_with_fallbacks(q, k, ctx, 0.1)
    restricted, _ = choose_with_fallbacks(q, k, ctx, 0.1, families=only(family))
    for head, free in zip(restricted, online):
        for (rows, pattern), (_, online_pattern) in zip(head.intra, free.intra if free.intra[0][0] != "*" else
                                                        [(m, free.intra[0][1]) for m, _ in head.intra]):
            assert isinstance(pattern, family) or pattern == online_pattern, (head, free)
    assert any(isinstance(p, family) for h in restricted for _, p in h.intra)
    changed = [h for h, (a, b) in enumerate(zip(online, restricted))
               if any(not isinstance(p, family) for _, p in a.intra) and types(b) != [("*", Dense)]]
    assert changed, online  # some head the online policy gave another family now runs this one


def test_grid_restriction_on_video_rows_and_where_the_input_cannot_run_it():
    """Video rows with a frame stride take the plan's Grid; text rows (no frames) take the better of
    A-shape and VS, which is what the online policy gives rows that cannot weigh Grid; a Dense in the
    plan (no candidate reached the target at the search's length) gets the online choice."""
    q, k, ctx = planted_video()
    online, online_fallbacks = choose_with_fallbacks(q, k, ctx, 0.1)
    chosen, fallbacks = choose_with_fallbacks(q, k, ctx, 0.1, families=only(Grid)[:7] + only(Dense)[:1])
    sparse = [h for h in chosen[:7] if types(h) != [("*", Dense)]]
    assert sparse and all(isinstance(h.pattern_for("video"), Grid) for h in sparse), chosen
    assert all(isinstance(h.pattern_for("text"), (AShape, VerticalSlash)) for h in sparse)
    assert types(online[7]) != [("*", Dense)] and chosen[7] == online[7]
    assert fallbacks.get(7) == online_fallbacks.get(7)
    assert choose_with_fallbacks(q, k, ctx, 0.1, families=only(Dense)) == (online, online_fallbacks)
    flat = forward_context(None, ctx.n, 1, "cpu", 64, 64)  # no layout: no frame stride
    assert choose_with_fallbacks(q, k, flat, 0.1, families=only(Grid)) == choose_with_fallbacks(q, k, flat, 0.1)


@pytest.mark.parametrize("layout_kind", ["video", "text"])
def test_the_online_types_as_a_plan_give_the_online_choice_and_fallbacks(layout_kind):
    """Regression guard of both paths: sizing each head within the family the online policy chose
    reproduces the online sizes and fallbacks exactly (the same curves), and no restriction is the
    online choice."""
    q, k, ctx = planted_video(layout_kind=layout_kind)
    online = choose_with_fallbacks(q, k, ctx, 0.1)
    assert choose_with_fallbacks(q, k, ctx, 0.1, families=None) == online
    assert len({t for h in online[0] for _, p in h.intra for t in [type(p)]}) >= 2  # several families at stake
    assert choose_with_fallbacks(q, k, ctx, 0.1, families=online[0]) == online


def test_plan_sizes_is_validated_and_travels_to_the_op():
    with pytest.raises(ValueError, match=r"plan_sizes must be one of \('online', 'plan'\), got 'searched'"):
        RuntimeOptions(plan_sizes="searched")
    with pytest.raises(ValueError, match=r"'plan_sizes' must be one of \('online', 'plan'\)"):
        config_from_options({"plan_sizes": "searched"})
    assert RuntimeOptions().plan_sizes == "online"
    assert config_from_options({"plan_sizes": "plan"}).runtime_options().op_kwargs()["plan_sizes"] == "plan"
    assert "str plan_sizes=\"online\"" in str(torch.ops.mminference.prefill_attention.default._schema)


@pytest.mark.interpreter
def test_the_op_sizes_the_plan_types_online_or_runs_them_as_searched():
    layout = family_layout("video", 1024, 1, frame_tokens=(64, 256))
    q, k, v, _ = family_qkv("sink-local", layout, 2, 1, 64, seed=1)
    narrow = HeadPattern("none", (("*", AShape(sink=16, local=64)),))
    stats = track("test-plan-sizes")
    for sizes in ("plan", "online"):
        torch.ops.mminference.prefill_attention(q, k, v, None, None, 0, 0.125, min_sparse_len=16, recall=0.0,
                                                plan=layer_arg((narrow,) * 2), plan_sizes=sizes, tag="test-plan-sizes")
    as_searched, sized = list(stats.records)[-2:]
    assert (as_searched.detail, sized.detail) == ("plan", "plan types, online sizes")
    assert as_searched.patterns == (narrow,) * 2
    assert all(types(h) == [("*", AShape)] and h.intra[0][1].sink == 128 for h in sized.patterns), sized.patterns


def test_a_plans_grid_is_not_sent_dense_by_its_lower_bound():
    """Grid's predicted recall is a lower bound: with a plan its Grid runs and the held-out check
    judges it (then the fallback, then dense); online, and for other families, a prediction under
    ``min_recall`` still means dense rows: the head's where those rows hold most of the causal pairs
    (the video's), else those rows alone (the question's: the video rows keep VS)."""
    from mmcompile.patterns.policy import MIN_RECALL, patterns_from_tables

    _, _, ctx = planted_video(layout_kind="video")
    assert ctx.row_sets() == ["text", "video"]
    vs = VerticalSlash(128, 4)
    plan = [HeadPattern("q-boundary", (("text", vs), ("video", Grid())))]
    picks = {"text": ([0.99], [vs], [vs], [None]), "video": ([0.3], [Grid()], [vs], [Grid()])}
    chosen, fallbacks = patterns_from_tables(picks, ctx, MIN_RECALL, 0.1, plan)
    assert isinstance(chosen[0].pattern_for("video"), Grid) and 0 in fallbacks
    assert types(patterns_from_tables(picks, ctx, MIN_RECALL, 0.1)[0][0]) == [("*", Dense)]
    low_vs = {"text": ([0.99], [vs], [vs], [None]), "video": ([0.3], [vs], [vs], [None])}
    assert types(patterns_from_tables(low_vs, ctx, MIN_RECALL, 0.1, plan)[0][0]) == [("*", Dense)]
    low_text = {"text": ([0.3], [vs], [vs], [None]), "video": ([0.99], [vs], [vs], [None])}
    assert ctx.row_area(["text"]) < 0.5 < ctx.row_area(["video"])
    assert types(patterns_from_tables(low_text, ctx, MIN_RECALL, 0.1)[0][0]) == [("text", Dense),
                                                                                 ("video", VerticalSlash)]
    both_low = {"text": ([0.5], [vs], [vs], [None]), "video": ([0.3], [vs], [vs], [None])}
    assert types(patterns_from_tables(both_low, ctx, MIN_RECALL, 0.1)[0][0]) == [("*", Dense)]


def test_a_head_s_fallbacks_are_the_family_at_the_cap_then_grid_where_its_rows_weighed_it():
    """``patterns_from_tables``: a head's fallbacks are its original-order family grown to the cap,
    then Grid (at the sizes its rows' table gave) on the rows that weighed Grid and chose otherwise."""
    from mmcompile.patterns.policy import MIN_RECALL, patterns_from_tables

    _, _, ctx = planted_video(layout_kind="video")
    vs, grid = VerticalSlash(128, 4), Grid(local_frames=2, band=128)
    picks = {"text": ([0.99], [vs], [vs], [None]), "video": ([0.99], [vs], [vs], [grid])}
    chosen, fallbacks = patterns_from_tables(picks, ctx, MIN_RECALL, 0.1)
    grown, structural = fallbacks[0]
    assert types(grown) == [("text", VerticalSlash), ("video", VerticalSlash)] and grown != chosen[0]
    assert structural == HeadPattern("q-boundary", (("text", vs), ("video", grid)))
    chosen_grid = {"text": ([0.99], [vs], [vs], [None]), "video": ([0.99], [grid], [vs], [grid])}
    assert len(patterns_from_tables(chosen_grid, ctx, MIN_RECALL, 0.1)[1][0]) == 1  # Grid already: no second
