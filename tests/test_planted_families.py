"""The planted families (mmcompile.patterns.families) plant what they claim: on sampled rows of
dense attention the planted keys hold most of the mass, seeds change the parameters, shapes and
dtypes are right. CPU, small N, no kernels."""

import pytest
import torch

from mmcompile.patterns.families import FAMILIES, LAYOUTS, family_layout, family_qkv, family_specs, planted_mask
from mmcompile.patterns.layout import TEXT, check_layout

N = 4096
ROWS = torch.cat([torch.arange(N // 2, N, 61), torch.arange(N - 64, N, 7)])


pytestmark = pytest.mark.usefixtures("one_thread")


def _layout(seed=1):
    return family_layout("mixed", N, seed, frame_tokens=(64, 256))


def _probs(q, k, rows):
    group = q.shape[1] // k.shape[1]
    s = q[0][:, rows].float() @ k[0].float().repeat_interleave(group, 0).transpose(-1, -2) * q.shape[-1] ** -0.5
    return s.masked_fill(torch.arange(q.shape[2])[None] > rows[:, None], float("-inf")).softmax(-1)


# The planted keys' share of a row: 1 minus the background (2-10%) minus the band fit's slack
# (``_calibrate_bands`` holds the union of cores within 10% of its target). A composite head fits
# 2-4 bands beside three indicator components, so its slack is the fit's whole 10%.
MIN_PLANTED_MASS = {"composite": 0.82}


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "unstructured"])
def test_planted_keys_hold_most_mass(family):
    layout = _layout()
    q, k, _, kinds = family_qkv(family, layout, 4, 2, 64, seed=1)
    specs = family_specs(family, layout, 4, 2, 1)
    probs = _probs(q, k, ROWS)
    for h, spec in enumerate(specs):
        mass = (probs[h] * planted_mask(spec, layout, ROWS)).sum(-1)
        assert kinds[h] == family
        assert mass.mean() > MIN_PLANTED_MASS.get(family, 0.88), (family, h, mass.mean().item())
        assert mass.min() > 0.6, (family, h, mass.min().item())
        # and it is structure, not the whole row: the planted keys are a small share of the causal keys
        assert planted_mask(spec, layout, ROWS).float().sum(-1).mean() < 0.35 * ROWS.float().mean()


def test_grid_lines_at_the_heads_phase():
    layout = family_layout("video", N, 2, frame_tokens=(64, 256))
    q, k, _, _ = family_qkv("grid-all", layout, 4, 1, 64, seed=2)
    specs = family_specs("grid-all", layout, 4, 1, 2)
    visual = layout.modality[0][ROWS] != TEXT
    assert visual.sum() > 20
    probs = _probs(q, k, ROWS[visual])
    start, size = layout.seg_start[0], layout.frame_tokens[0]
    pos = torch.arange(N)
    seg = (pos[:, None] >= start) & (pos[:, None] < start + layout.seg_len[0])
    within = ((pos[:, None] - start) % size.clamp(min=1) * seg).sum(-1)
    for h, spec in enumerate(specs):
        phase = ((spec["phase"] * size).long() * seg).sum(-1)
        on_line = seg.any(-1) & (within == phase)
        off_line = seg.any(-1) & ((within - phase).abs() > 2)
        far = off_line[None, :] & (pos[None, :] < ROWS[visual][:, None] - 256)
        line_mass, off_mass = probs[h][:, on_line].sum(-1), (probs[h] * far).sum(-1)
        assert line_mass.mean() > 0.3, line_mass.mean()  # lines draw 40-70% of video queries' mass
        assert off_mass.mean() < 0.1, off_mass.mean()  # far keys at other phases are background


def test_composite_heads_mix_lines_keywords_and_bands():
    """On video rows a composite head puts mass on its lines, the keywords and each slash band at
    once (the families' other heads plant one structure each)."""
    layout = family_layout("video", N, 2, frame_tokens=(64, 256))
    q, k, _, _ = family_qkv("composite", layout, 4, 1, 64, seed=2)
    specs = family_specs("composite", layout, 4, 1, 2)
    rows = ROWS[layout.modality[0][ROWS] != TEXT]
    assert rows.numel() > 20
    probs = _probs(q, k, rows)
    geo_start, size = int(layout.seg_start[0][0]), int(layout.frame_tokens[0][0])
    pos = torch.arange(N)
    in_video = (pos >= geo_start) & (pos < geo_start + int(layout.seg_len[0][0]))
    for h, spec in enumerate(specs):
        beh = spec["behaviour"]["visual"]
        on_line = in_video & ((pos - geo_start) % size == int(spec["phase"] * size))
        keywords = torch.zeros(N, dtype=torch.bool)
        keywords[spec["keywords"]] = True
        assert probs[h][:, on_line].sum(-1).mean() > 0.5 * beh["comps"]["lines"]
        assert probs[h][:, keywords].sum(-1).mean() > 0.5 * beh["comps"]["keywords"]
        d = rows[:, None] - pos[None]
        for off, level, share in beh["bands"]:
            core = (d - off).abs() < 8 * 2 ** level
            assert (probs[h] * core).sum(-1).mean() > 0.33 * share, (h, off, share)


def test_grid_temporal_heads_attend_the_same_patch_in_earlier_frames():
    """Video rows of a grid-temporal head: their planted core (same patch and neighbours in their own
    and earlier frames) holds most of the mass, and the exact same patch in earlier frames (keys at
    multiples of the frame stride: periodic slashes) holds a large share by itself."""
    layout = family_layout("video", N, 1, frame_tokens=(64, 256))
    q, k, _, kinds = family_qkv("grid-temporal", layout, 4, 2, 64, seed=1)
    specs = family_specs("grid-temporal", layout, 4, 2, 1)
    rows = ROWS[layout.modality[0][ROWS] != TEXT]
    assert rows.numel() > 20 and set(kinds) <= {"grid-temporal", "unstructured"}
    probs = _probs(q, k, rows)
    size, start = int(layout.frame_tokens[0][0]), int(layout.seg_start[0][0])
    d = rows[:, None] - torch.arange(N)[None]
    same_patch = (d > 0) & (d % size == 0) & (torch.arange(N)[None] >= start)
    for h, spec in enumerate(specs):
        planted = planted_mask(spec, layout, rows)
        assert (probs[h] * planted).sum(-1).mean() > 0.85, h
        assert (probs[h] * same_patch).sum(-1).mean() > 0.15, h
        assert planted.float().sum(-1).mean() < 0.2 * rows.float().mean()  # a few patches per frame


def test_sink_local_band_and_sinks():
    layout = _layout()
    q, k, _, _ = family_qkv("sink-local", layout, 2, 1, 64, seed=3)
    specs = family_specs("sink-local", layout, 2, 1, 3)
    probs = _probs(q, k, ROWS)
    for h, spec in enumerate(specs):
        (off, level, _), = spec["behaviour"]["text"]["bands"]
        width = 8 * 2 ** level
        d = ROWS[:, None] - torch.arange(N)[None]
        band = (d >= 0) & (d < width)
        sinks = torch.arange(N)[None] < spec["n_sink"]
        assert (probs[h] * (band | sinks)).sum(-1).mean() > 0.88
        assert (probs[h] * sinks).sum(-1).mean() > 0.05  # the sink share is at least 10%, minus overlap


def test_unstructured_is_diffuse():
    layout = _layout()
    q, k, _, kinds = family_qkv("unstructured", layout, 2, 1, 64, seed=1)
    probs = _probs(q, k, ROWS)
    assert kinds == ["unstructured"] * 2
    assert probs.max() < 0.05  # no key holds a visible share
    keys_for_half = (probs.sort(-1, descending=True).values.cumsum(-1) < 0.5).sum(-1).float()
    assert keys_for_half.mean() > 0.1 * ROWS.float().mean()


def test_one_in_28_heads_unstructured():
    kinds = family_qkv("grid-window", _layout(), 28, 4, 64, seed=1)[3]
    assert kinds.count("unstructured") == 1 and kinds.count("grid-window") == 27


def test_seeds_change_parameters_and_inputs():
    layout = _layout()
    a, b = family_specs("slash-bands", layout, 4, 2, 1), family_specs("slash-bands", layout, 4, 2, 2)
    assert [s["behaviour"]["text"]["bands"] for s in a] != [s["behaviour"]["text"]["bands"] for s in b]
    ga, gb = family_specs("grid-window", layout, 4, 2, 1), family_specs("grid-window", layout, 4, 2, 2)
    assert [s["phase"] for s in ga] != [s["phase"] for s in gb]
    assert [s["behaviour"]["visual"]["line_profile"] for s in ga] != [s["behaviour"]["visual"]["line_profile"] for s in gb]
    assert len({s["phase"] for s in ga}) == 4  # per head, not per call
    qa = family_qkv("grid-window", layout, 4, 2, 64, seed=1)[0]
    assert torch.equal(qa, family_qkv("grid-window", layout, 4, 2, 64, seed=1)[0])  # deterministic
    assert not torch.equal(qa, family_qkv("grid-window", layout, 4, 2, 64, seed=2)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_and_dtypes(dtype):
    layout = family_layout("videos", 2000, 4, frame_tokens=(64, 128))  # not a block multiple
    q, k, v, kinds = family_qkv("2d-boundary", layout, 6, 2, 64, dtype=dtype, seed=0)
    assert q.shape == (1, 6, 2000, 64) and k.shape == v.shape == (1, 2, 2000, 64)
    assert q.dtype == k.dtype == v.dtype == dtype and len(kinds) == 6
    assert torch.isfinite(q.float()).all() and torch.isfinite(k.float()).all()


@pytest.mark.parametrize("name", LAYOUTS)
def test_layouts(name):
    for seed in (1, 2):
        layout = family_layout(name, N, seed)
        check_layout(layout, N)
        sizes = layout.frame_tokens[0][layout.seg_len[0] > 0]
        assert sizes.numel() >= 1 and bool(((sizes >= 64) & (sizes <= 1024)).all())
        assert bool((layout.modality[0] == TEXT).any())
    assert not torch.equal(family_layout(name, N, 1).modality, family_layout(name, N, 2).modality) or name == "video"


def test_head_dim_too_small_is_refused():
    with pytest.raises(ValueError, match="head_dim"):
        family_qkv("grid-all", _layout(), 8, 1, 16, seed=0)


def test_unknown_family():
    with pytest.raises(ValueError, match="known"):
        family_specs("grid", _layout(), 2, 1)
