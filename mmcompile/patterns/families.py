"""Planted attention structure by family, with per-head random parameters: a generator the default
policy was not tuned on (BENCHMARKING.md "Fidelity, without model weights").

Independent of ``planted.py`` by construction. Every logit is an explicit bilinear form of
low-rank "address" codes, each in its own orthonormal slot of a random per-KV-head basis
(q . k / sqrt(D) = sum of slot products exactly; no cross talk between slots):
  position ladder  keys carry (cos, sin)(2 pi j / P_m), P_m = 4 W0 2^m, m = 0 .. L-1 (L such that
                   the coarsest level spans N). A query putting amplitude a on levels m >= s at
                   position i - o gets the Toeplitz logit a sum_m cos(pi (d - o) / 2 W0 2^m),
                   d = i - j: for |d - o| in [W0 2^m, W0 2^(m+1)) level m is at an angle in
                   [pi/2, pi), so every key farther than W = W0 2^s from the centre is at least a
                   below the peak and the tail falls like a power law (-a per octave). Several
                   centres (slash bands) add in the logit, not in mass, so their amplitudes are
                   calibrated numerically on the 1-D profile (``_calibrate_bands``).
  frame ladder     the same over the global frame index, on line keys only: grid-window (large
                   amplitude from level s: lines of about 2^s recent frames) and grid-decay (small
                   amplitude from level 0: line weight falls as a power of the frame distance).
  indicators       one slot each: sink keys, frame-start keys, keyword (text) keys, and one line
                   slot per phase used in the KV group (keys at that spatial position in every
                   frame). Indicator keys carry no position codes, so their logit is exactly the
                   lift the query puts on the slot (plus the frame profile for lines).
  noise            the remaining slots: Gaussian keys, query std giving logit noise sigma 0.2-0.5.
Calibration: per head and query modality a mass budget is drawn: background (the position-ladder
tail outside the band cores, plus noise) 2-10%, the rest split between indicator components and
the bands. Band amplitudes are fitted (multiplicative updates on the exact profile, row N-1) so
each band core holds its share of the Toeplitz mass and the tail the background; slash centres
whose ladders interfere (a spurious peak takes the mass) fail the fit and are redrawn. Each indicator
component c gets, per row i, the lift G_c(i) = log(share_c / share_bands) + log B(i) - log S_c(i),
B(i) = sum_{d<=i} exp(F(d)) (the bands' mass up to row i, a cumulative sum of the profile) and
S_c(i) = sum over c's keys <= i of exp(profile) (cumulative counts; frame-profile sums for lines),
so its mass share is row independent. Overlaps, noise and holes left by indicator keys in the band
make this approximate: ``planted_mask`` gives the planted keys and the tests measure their mass.
Memory is O(N D) per head (codes and per-row lifts), never N x N.
"""

from __future__ import annotations

import math

import torch

from . import families_temporal as temporal
from .layout import IMAGE, TEXT, VIDEO, ModalityLayout, from_segments

FAMILIES = ("grid-all", "grid-window", "grid-decay", "vertical-frame-start", "vertical-phase", "slash-bands",
            "sink-local", "k-boundary", "q-boundary", "2d-boundary", "unstructured", "composite",
            "grid-temporal")
LAYOUTS = ("video", "videos", "images", "mixed")
W0 = 8  # finest band core (tokens); core of ladder start level s is W0 * 2^s
_SLOTS = ("sink", "frame_starts", "anyline", "text_keys", "keywords")  # indicator slots, then lines


def family_layout(name: str, tokens: int, seed: int = 0, frame_tokens=(64, 1024)) -> ModalityLayout:
    """``tokens`` tokens: "video" (prompt, one video, question), "videos" (2-4 videos of different
    frame sizes between text), "images" (images between long text), "mixed" (all of these).
    Frame sizes h x w are drawn with h * w in ``frame_tokens``."""
    g = torch.Generator().manual_seed(seed * 7919 + LAYOUTS.index(name))
    rint = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    def hw():
        while True:
            h, w = rint(4, 32), rint(4, 32)
            if frame_tokens[0] <= h * w <= frame_tokens[1]:
                return h, w
    kinds = {"video": [VIDEO], "videos": [VIDEO] * rint(2, 4), "images": [IMAGE] * rint(2, 6),
             "mixed": [IMAGE, VIDEO, IMAGE, VIDEO][:rint(2, 4)]}[name]
    text_share = 0.1 if name == "video" else 0.3
    left = tokens - rint(tokens // 64, tokens // 16)  # the question at the end
    segs = [(TEXT, rint(32, max(32, tokens // 16)))]
    left -= segs[0][1]
    for n_kind, kind in enumerate(kinds):
        h, w = hw()
        room = left // (len(kinds) - n_kind)
        frames = 1 if kind == IMAGE else max(1, int(room * (1 - text_share)) // (h * w))
        if frames * h * w > left:
            break
        segs.append((kind, frames * h * w, h, w))
        gap = min(left - frames * h * w, rint(room // 8, max(room // 8, int(room * text_share))))
        if gap > 0:
            segs.append((TEXT, gap))
        left -= frames * h * w + gap
    segs.append((TEXT, tokens - sum(s[1] for s in segs)))
    return from_segments([[s for s in segs if s[1] > 0]])


def _token_geometry(layout: ModalityLayout, device):
    """Per token (batch 0): visual mask, position within frame, frame size and width, visual
    segment (-1: text) and the list of (start, length, frame size) of the visual segments, global
    frame index (text tokens: frames begun before them), frame-start mask."""
    n = layout.length
    pos = torch.arange(n, device=device)
    mod = layout.modality[0].to(device)
    visual = (mod == VIDEO) | (mod == IMAGE)
    size = torch.zeros(n, dtype=torch.long, device=device)
    width = torch.zeros(n, dtype=torch.long, device=device)
    start = torch.zeros(n, dtype=torch.long, device=device)
    segment = torch.full((n,), -1, dtype=torch.long, device=device)
    segments = []
    fields = ("seg_start", "seg_len", "frame_tokens", "frame_w")
    for i, (s0, ln, t, w) in enumerate(zip(*(getattr(layout, f)[0].tolist() for f in fields))):
        if ln > 0:
            size[s0:s0 + ln], start[s0:s0 + ln], width[s0:s0 + ln], segment[s0:s0 + ln] = t, s0, w, i
            segments.append((s0, ln, t))
    within = torch.where(visual, (pos - start) % size.clamp(min=1), 0)
    fstart = visual & (within == 0)
    frame = torch.cumsum(fstart.long(), 0) - 1
    return dict(pos=pos, visual=visual, text=mod == TEXT, within=within, size=size, width=width, segment=segment,
                segments=segments, frame=frame.clamp(min=0), frame_start=fstart, n_frames=int(fstart.sum()))


def _rand(g, lo, hi):
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _shares(g, names, total):
    w = -torch.log(torch.rand(len(names), generator=g))  # flat Dirichlet
    return dict(zip(names, (w / w.sum() * total).tolist()))


def _behaviour(g, comps, n, bands=1, width=None, text_key_logit=0.0, line_profile=None):
    """One query modality's budget: background, indicator shares, band list [(offset, level, share)]."""
    bg = _rand(g, 0.02, 0.10)
    levels_max = max(1, int(math.log2(max(n // 16, W0) / W0)))
    level = width if width is not None else int(torch.randint(2, max(3, min(8, levels_max + 1)), (1,), generator=g))
    ind = {c: _rand(g, lo, hi) for c, (lo, hi) in comps.items()}
    band_total = 1 - sum(ind.values())
    local = band_total * (_rand(g, 0.25, 0.5) if bands > 1 else 1.0)
    out = [(0, level, local)]
    if bands > 1:
        for off, sh in zip(torch.randint(0, 1 << 30, (bands - 1,), generator=g).tolist(),
                           _shares(g, range(bands - 1), band_total - local).values()):
            lo, hi = math.log(256), math.log(max(n // 2, 512))
            out.append((int(math.exp(lo + (hi - lo) * (off / (1 << 30)))), int(torch.randint(0, 3, (1,), generator=g)), sh))
    return dict(bg=bg, comps=ind, bands=out, text_key_logit=text_key_logit, line_profile=line_profile)


def family_specs(family: str, layout: ModalityLayout, heads_q: int, heads_kv: int, seed: int = 0,
                 device=None) -> list[dict]:
    """Per query head: {"kind", "n_sink", "keywords" (key positions; both shared by the KV group),
    "phase" (fraction of the frame), "sigma", "behaviour": {"text", "visual"}}.
    Deterministic in (family, layout length, heads, seed); about 1 of 28 heads is unstructured.
    Band amplitudes are fitted here (on ``device``: O(N log N) per band and step)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    n = layout.length
    g = torch.Generator().manual_seed(seed * 1009 + FAMILIES.index(family))
    periods = _periods(n, W0)
    unstructured = set(torch.randperm(heads_q, generator=g)[:round(heads_q / 28)].tolist())
    text_pos = torch.nonzero(layout.modality[0] == TEXT)[:, 0]
    text_pos = text_pos[text_pos >= 64]
    per_kv = []
    for _ in range(heads_kv):  # key-side parameters, shared by a KV group
        count = min(int(torch.randint(16, 129, (1,), generator=g)), text_pos.numel())
        per_kv.append(dict(n_sink=[1, 4, 16, 64][int(torch.randint(0, 4, (1,), generator=g))],
                           keywords=text_pos[torch.randperm(text_pos.numel(), generator=g)[:count]].sort().values))
    specs = []
    for h in range(heads_q):
        kind = "unstructured" if family == "unstructured" or h in unstructured else family
        spec = dict(kind=kind, **per_kv[h // (heads_q // heads_kv)], phase=_rand(g, 0, 1), sigma=_rand(g, 0.2, 0.5) if kind != "unstructured" else _rand(g, 0.5, 1.5))
        sink = ("sink", (0.03, 0.2))
        lines = ("lines", (0.4, 0.7))
        if kind == "unstructured":
            text = vis = None
        elif kind == "grid-temporal":  # the same patch in earlier frames (families_temporal.py)
            prof = [None, (_rand(g, 3, 5), int(torch.randint(1, 4, (1,), generator=g))), (_rand(g, 0.4, 1.2), 0)][
                int(torch.randint(0, 3, (1,), generator=g))]
            spec["amplitude"] = _rand(g, 2.0, 3.5) * len(temporal.spatial_periods(_token_geometry(layout, "cpu")))
            text = _behaviour(g, dict([sink]), n)
            vis = _behaviour(g, dict([sink, ("temporal", (0.5, 0.8))]), n, line_profile=prof)
        elif kind.startswith("grid"):
            prof = {"grid-all": None, "grid-window": (_rand(g, 3, 5), int(torch.randint(1, 4, (1,), generator=g))),
                    "grid-decay": (_rand(g, 0.4, 1.2), 0)}[kind]
            text = _behaviour(g, dict([sink]), n)
            vis = _behaviour(g, dict([sink, lines]), n, line_profile=prof)
        elif kind in ("vertical-frame-start", "vertical-phase", "k-boundary", "sink-local", "slash-bands"):
            comps = {"vertical-frame-start": [sink, ("frame_starts", (0.3, 0.6))], "vertical-phase": [sink, lines],
                     "k-boundary": [sink, ("keywords", (0.2, 0.4)), ("lines", (0.2, 0.4))],
                     "sink-local": [("sink", (0.1, 0.4))], "slash-bands": [("sink", (0.02, 0.1))]}[kind]
            for _ in range(40):  # slash centres that interfere are redrawn (``_calibrate_bands``)
                text = vis = _behaviour(g, dict(comps), n, bands=int(torch.randint(2, 5, (1,), generator=g)) if kind == "slash-bands" else 1)
                if _calibrate_bands(text, periods, n, device):
                    break
        elif kind == "q-boundary":
            text = _behaviour(g, dict([sink]), n, width=int(torch.randint(1, 4, (1,), generator=g)))
            vis = _behaviour(g, dict([sink, lines]), n, line_profile=(_rand(g, 3, 5), int(torch.randint(0, 3, (1,), generator=g))))
        elif kind == "composite":  # several families in one head, as real heads mix them: sink, keywords,
            # 2-4 slash bands, and on video rows the lines of a grid profile drawn per head
            prof = [None, (_rand(g, 3, 5), int(torch.randint(1, 4, (1,), generator=g))), (_rand(g, 0.4, 1.2), 0)][
                int(torch.randint(0, 3, (1,), generator=g))]
            for _ in range(40):  # slash centres that interfere are redrawn, on both row sets
                text = _behaviour(g, {"sink": (0.02, 0.1), "keywords": (0.1, 0.25)}, n,
                                  bands=int(torch.randint(2, 5, (1,), generator=g)))
                vis = _behaviour(g, {"sink": (0.02, 0.1), "keywords": (0.05, 0.15), "lines": (0.2, 0.4)}, n,
                                 bands=int(torch.randint(2, 5, (1,), generator=g)), line_profile=prof)
                if _calibrate_bands(text, periods, n, device) and _calibrate_bands(vis, periods, n, device):
                    break
        else:  # 2d-boundary: T->T local, T->V strong (frame starts), V->V lines, V->T weak
            text = _behaviour(g, dict([sink, ("frame_starts", (0.3, 0.5))]), n)
            vis = _behaviour(g, dict([sink, lines]), n, text_key_logit=-_rand(g, 2, 5))
        for beh in {id(b): b for b in (text, vis) if b is not None and "amps" not in b}.values():
            _calibrate_bands(beh, periods, n, device)
        spec["behaviour"] = dict(text=text, visual=vis)
        specs.append(spec)
    return specs


def _ladder(values, periods):
    """[N, 2 L] (cos, sin) of 2 pi (values mod P) / P, exact for integer values at any length."""
    periods = periods.to(values.device)
    turns = torch.remainder(values[:, None], periods[None, :]).double() / periods[None, :]
    return torch.cat([torch.cos(2 * math.pi * turns), torch.sin(2 * math.pi * turns)], -1).float()


def _periods(n, base):
    levels = max(1, int(math.log2(max(n, 2 * base) / base)) + 1)
    return torch.tensor([4 * base * 2 ** m for m in range(levels)], dtype=torch.long)


def _band_profile(bands, amps, periods, d):
    """float64 [len(d)]: the Toeplitz logit sum_k a_k sum_{m >= s_k} cos(2 pi (d - o_k) / P_m)."""
    p = periods.to(d.device)
    off = torch.tensor([o for o, *_ in bands], device=d.device)
    weight = torch.tensor([[a if m >= level else 0.0 for m in range(len(p))] for (_, level, _), a in zip(bands, amps)],
                          dtype=torch.float64, device=d.device)  # [K, L]
    turns = torch.remainder(d[None, None, :] - off[:, None, None], p[None, :, None]).double() / p[None, :, None]
    return torch.einsum("kl,kln->n", weight, torch.cos(2 * math.pi * turns))


def _calibrate_bands(beh, periods, n, device, steps=30) -> bool:
    """Sets beh["amps"] so each band core holds its share of the bands' mass at row n-1 and the
    tail (outside every core) ``bg / band share``. Raising one amplitude lowers every key but
    those near its centre, so multiplicative updates converge for one band; several centres
    interfere (their ladders add in the logit), so this returns whether the fit holds (union of
    cores within 10% of its target, every core at least a third of its share)."""
    bands = beh["bands"]
    total = sum(s for *_, s in bands)
    tail = min(beh["bg"] / max(total, 1e-6), 0.5)
    want = torch.tensor([s / total * (1 - tail) for *_, s in bands], dtype=torch.float64)
    d = torch.arange(n, device=device)
    cores = [(d - off).abs() < W0 * 2 ** level for off, level, _ in bands]
    union = torch.stack(cores).any(0)
    amps = torch.full((len(bands),), 2.0, dtype=torch.float64)
    for _ in range(steps):
        w = torch.softmax(_band_profile(bands, amps.tolist(), periods, d), 0)
        got = torch.stack([w[c].sum() for c in cores]).cpu()
        amps = (amps * (want / got.clamp(min=1e-9)) ** 0.15).clamp(0.3, 12.0)
    beh["amps"] = amps.tolist()
    w = torch.softmax(_band_profile(bands, beh["amps"], periods, d), 0)
    got = torch.stack([w[c].sum() for c in cores]).cpu()
    return bool(w[union].sum() >= 0.9 * (1 - tail)) and bool((got >= want / 3).all())


def _line_sum(geo, phase, profile, frame_periods):
    """Per row: sum over this phase's line keys <= i of exp(frame profile), with its log."""
    line_within = (phase * geo["size"]).long()
    dist = torch.arange(geo["n_frames"] + 1, device=geo["pos"].device)
    if profile is None:
        gd = torch.ones(dist.shape, dtype=torch.float64, device=dist.device)
    else:
        b, s = profile
        gd = torch.exp(sum((b * (torch.cos(2 * math.pi * torch.remainder(dist, int(p)).double() / int(p)) - 1)
                            for p in frame_periods[s:]), torch.zeros(dist.shape, dtype=torch.float64, device=dist.device)))
    cum = gd.cumsum(0)
    after = geo["visual"] & (line_within > geo["within"])  # this frame's line key lies after row i
    s = cum[geo["frame"]] - after.double() * gd[0]
    return s


def _key_codes(geo, phases, n_sink, keywords, periods, frame_periods, spatio_temporal=False):
    """Indicator columns [N, 5 + phases], band codes, per-line-key frame codes and spatial codes;
    indicator keys get no band codes. ``spatio_temporal`` (grid-temporal): every visual key is a line key
    (the "anyline" slot is the kernel's constant, the frame codes its profile) with spatial codes,
    and no band codes (``families_temporal``)."""
    vis = geo["visual"]
    lines = [vis & (geo["within"] == (p * geo["size"]).long()) for p in phases]
    anyline = vis if spatio_temporal else torch.stack(lines).any(0) if lines else torch.zeros_like(vis)
    ind = torch.stack([geo["pos"] < n_sink, geo["frame_start"], anyline, geo["text"], keywords] + lines, -1).float()
    plain = ~(ind[:, [0, 1, 4]].bool().any(-1) | anyline)
    band = _ladder(geo["pos"], periods) * plain[:, None]
    frame = _ladder(geo["frame"], frame_periods) * anyline[:, None]
    spatial = temporal.spatial_codes(geo) if spatio_temporal else torch.zeros(vis.numel(), 0, device=vis.device)
    return ind, band, frame, spatial


def _query_codes(spec, beh_rows, geo, ind_keys, periods, frame_periods, slot_of_phase, n, device, spatial_keys):
    """[N, slots] query coefficients of one head (logit space), per row by query modality."""
    ind = torch.zeros(n, ind_keys.shape[1], dtype=torch.float64, device=device)
    band = torch.zeros(n, 2 * len(periods), device=device)
    frame = torch.zeros(n, 2 * len(frame_periods), device=device)
    spatial = torch.zeros_like(spatial_keys)
    for name, rows in beh_rows.items():
        beh = spec["behaviour"][name]
        if beh is None or not bool(rows.any()):
            continue
        amps = beh["amps"]
        d = torch.arange(n, device=device)
        log_b = torch.logcumsumexp(_band_profile(beh["bands"], amps, periods, d), 0)[geo["pos"]]
        band_share = sum(s for *_, s in beh["bands"])
        for (off, level, _), a in zip(beh["bands"], amps):
            mask = (torch.arange(len(periods)) >= level).float().repeat(2).to(device)
            band[rows] += a * _ladder(geo["pos"][rows] - off, periods) * mask
        for comp, share in beh["comps"].items():
            if comp == "temporal":  # the kernel's constant: A s = A (s - 1) + A, profile codes = profile + b (L - s)
                amp, prof = spec["amplitude"], beh["line_profile"]
                spatial[rows] = amp / (spatial_keys.shape[1] // 2) * spatial_keys[rows]
                peak = amp + (0.0 if prof is None else prof[0] * (len(frame_periods) - prof[1]))
                log_s = temporal.kernel_log_sums(geo, geo["segments"], amp, prof, frame_periods)
                lift = math.log(share / band_share) + log_b - log_s - peak
                ind[rows, _SLOTS.index("anyline")] = torch.where(torch.isfinite(log_s), lift, -30.0)[rows]
                continue
            if comp == "lines":
                slot = slot_of_phase[spec["phase"]]
                count = _line_sum(geo, spec["phase"], beh["line_profile"], frame_periods)
            else:
                slot = _SLOTS.index(comp)
                count = torch.cumsum(ind_keys[:, slot].double(), 0)
            lift = math.log(share / band_share) + log_b - count.clamp(min=1e-30).log()
            ind[rows, slot] = torch.where(count > 0, lift, 0.0)[rows]
        if beh["line_profile"] is not None and ("lines" in beh["comps"] or "temporal" in beh["comps"]):
            b, s = beh["line_profile"]
            mask = (torch.arange(len(frame_periods)) >= s).float().repeat(2).to(device)
            frame[rows] = b * _ladder(geo["frame"][rows], frame_periods) * mask
            if "lines" in beh["comps"]:
                ind[rows, _SLOTS.index("anyline")] = -b * (len(frame_periods) - s)
        ind[rows, _SLOTS.index("text_keys")] = beh["text_key_logit"]
    return ind.float(), band, frame, spatial


def family_qkv(family: str, layout: ModalityLayout, heads_q: int, heads_kv: int, head_dim: int = 128,
               device=None, dtype=torch.float32, seed: int = 0):
    """(q [1, Hq, N, D], k [1, Hkv, N, D], v [1, Hkv, N, D], kinds [Hq]) with ``family``'s structure
    (``family_specs``) in dense softmax attention (scale D^-0.5). Built head by head in float32."""
    n = layout.length
    specs = family_specs(family, layout, heads_q, heads_kv, seed, device)
    geo = _token_geometry(layout, device)
    periods = _periods(n, W0)
    frame_periods = _periods(max(geo["n_frames"], 2), 1)
    group = heads_q // heads_kv
    g = torch.Generator(device=device).manual_seed(seed)
    gp = torch.Generator().manual_seed(seed + 17)  # the bases
    q = torch.empty(1, heads_q, n, head_dim, dtype=dtype, device=device)
    k = torch.empty(1, heads_kv, n, head_dim, dtype=dtype, device=device)
    v = torch.randn(1, heads_kv, n, head_dim, generator=g, device=device).to(dtype)
    root = head_dim ** 0.25  # logit-space codes times D^(1/4) on both sides: q . k / sqrt(D) = code product
    beh_rows = dict(text=~geo["visual"], visual=geo["visual"])
    for kv in range(heads_kv):
        hs = specs[kv * group:(kv + 1) * group]
        phases = sorted({s["phase"] for s in hs})
        keywords = torch.zeros(n, dtype=torch.bool, device=device)
        keywords[hs[0]["keywords"].to(device)] = True
        ind_k, band_k, frame_k, spatial_k = _key_codes(geo, phases, hs[0]["n_sink"], keywords, periods, frame_periods,
                                                       spatio_temporal=family == "grid-temporal")
        used = ind_k.shape[1] + band_k.shape[1] + frame_k.shape[1] + spatial_k.shape[1]
        noise_dims = head_dim - used
        if noise_dims < 4:
            raise ValueError(f"head_dim {head_dim} too small: {used} code slots at {n} tokens, {len(phases)} phases")
        basis = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=gp))[0].to(device)
        noise_k = torch.randn(n, noise_dims, generator=g, device=device)
        k[0, kv] = (torch.cat([ind_k, band_k, frame_k, spatial_k, noise_k], -1) @ basis.T * root).to(dtype)
        slot_of_phase = {p: len(_SLOTS) + i for i, p in enumerate(phases)}
        for i, spec in enumerate(hs):
            ind_q, band_q, frame_q, spatial_q = _query_codes(spec, beh_rows, geo, ind_k, periods, frame_periods,
                                                             slot_of_phase, n, device, spatial_k)
            noise_q = torch.randn(n, noise_dims, generator=g, device=device) * (spec["sigma"] / math.sqrt(noise_dims))
            codes = torch.cat([ind_q, band_q, frame_q, spatial_q, noise_q], -1)
            q[0, kv * group + i] = (codes @ basis.T * root).to(dtype)
    return q, k, v, [s["kind"] for s in specs]


def planted_mask(spec: dict, layout: ModalityLayout, rows: torch.Tensor) -> torch.Tensor:
    """bool [R, N]: the keys a head's structure plants for query rows ``rows`` (band cores, sinks,
    its lines, frame starts, keywords), causal. For tests and reports, O(R N)."""
    n = layout.length
    geo = _token_geometry(layout, rows.device)
    out = torch.zeros(rows.numel(), n, dtype=torch.bool, device=rows.device)
    pos = geo["pos"][None, :]
    for name, beh in spec["behaviour"].items():
        sel = ~geo["visual"][rows] if name == "text" else geo["visual"][rows]
        if beh is None or not bool(sel.any()):
            continue
        r = rows[sel][:, None]
        m = torch.zeros(r.shape[0], n, dtype=torch.bool, device=rows.device)
        for off, level, _ in beh["bands"]:
            m |= ((r - pos) - off).abs() < W0 * 2 ** level
        m |= pos < spec["n_sink"]
        if "lines" in beh["comps"]:
            m |= (geo["visual"] & (geo["within"] == (spec["phase"] * geo["size"]).long()))[None, :]
        if "frame_starts" in beh["comps"]:
            m |= geo["frame_start"][None, :]
        if "keywords" in beh["comps"]:
            m[:, spec["keywords"].to(rows.device)] = True
        if "temporal" in beh["comps"]:
            frame_periods = _periods(max(geo["n_frames"], 2), 1)
            m |= temporal.planted_keys(geo, rows[sel], spec["amplitude"], beh["line_profile"], frame_periods,
                                       geo["segment"])
        out[sel] = m
    return out & (pos <= rows[:, None])
