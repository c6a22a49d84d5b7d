"""The "grid-temporal" planted family: video queries attend the same patch (and its spatial
neighbours) in their own and earlier frames, with a frame-distance profile. In the original order
these are periodic slashes at multiples of the frame stride, which Vertical-Slash can cover only
with one slash per earlier frame; Grid's residue-major order makes them a few contiguous blocks
(method.md 1.4, ``use_slash``). The other families plant lines at one phase (columns), not this.

Written in the families' bilinear code form (``families.py``): visual keys carry
  spatial codes  the position ladder (``_ladder``) of the position within the frame, periods
                 4 * 2^m up to twice the largest frame: a query with its own codes times a per
                 level gets the logit A s(dp), A = a L, s(0) = 1, falling about 1.4 a for the
                 next patch and a per octave after (the same patch is sharp, neighbours in the
                 row come next, neighbours in the column a frame width away);
  frame codes    the frame ladder of every visual key (the lines' ladder, ``_line_sum``'s profile);
  a constant     the "anyline" indicator slot, set on every visual key;
and no band codes, so the kernel is the whole of a video row's attention to video keys (the
same frame's earlier patches are its local part). The per-row lift on the constant slot gives
the kernel its mass share, as the families' indicator lifts do, from the exact per-row sum over
the keys of the row's own segment (``kernel_log_sums``).
"""

from __future__ import annotations

import math

import torch

CORE_NATS = 4.0  # planted: keys whose spatial logit is within 4 nats of the peak ...
FRAME_CORE = 4.0  # ... in frames whose profile is within 4 nats of the row's own frame


def spatial_periods(geo: dict) -> torch.Tensor:
    """The ladder's periods: 4, 8, ... up to at least twice the largest frame (no wrap in a frame)."""
    largest = max([size for _, _, size in geo["segments"]] or [1])
    levels = max(1, math.ceil(math.log2(max(2 * largest, 4) / 4)) + 1)
    return torch.tensor([4 * 2 ** m for m in range(levels)], dtype=torch.long)


def spatial_codes(geo: dict) -> torch.Tensor:
    """[N, 2 L] float32: the ladder of every visual token's position within its frame (zero elsewhere)."""
    periods = spatial_periods(geo).to(geo["within"].device)
    turns = torch.remainder(geo["within"][:, None], periods[None, :]).double() / periods[None, :]
    codes = torch.cat([torch.cos(2 * math.pi * turns), torch.sin(2 * math.pi * turns)], -1)
    return (codes * geo["visual"][:, None]).float()


def spatial_similarity(geo: dict, rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """s [R, K] in [-1, 1]: the kernel's spatial logit over A between rows and keys (1: same patch)."""
    codes = spatial_codes(geo).double()
    return codes[rows] @ codes[keys].T / (codes.shape[1] // 2)


def frame_profile(amplitude_level, frame_periods, distances: torch.Tensor) -> torch.Tensor:
    """float64: the profile's logit at frame distances (0 at distance 0; None: flat)."""
    if amplitude_level is None:
        return torch.zeros(distances.shape, dtype=torch.float64, device=distances.device)
    b, s = amplitude_level
    return sum((b * (torch.cos(2 * math.pi * torch.remainder(distances, int(p)).double() / int(p)) - 1)
                for p in frame_periods[s:]), torch.zeros(distances.shape, dtype=torch.float64, device=distances.device))


def kernel_log_sums(geo: dict, segments, amplitude: float, profile, frame_periods) -> torch.Tensor:
    """float64 [N]: per visual row i, log sum over the visual keys j <= i of its segment of
    exp(A (s_ij - 1) + profile(frame_i - frame_j)); -inf elsewhere. Exact: per patch, its sum over
    a whole earlier frame and over its own frame up to itself (O(frame size^2) per segment).
    Keys of other segments are left out: their spatial codes meet the row's at random offsets."""
    n = geo["pos"].numel()
    out = torch.full((n,), float("-inf"), dtype=torch.float64, device=geo["pos"].device)
    for start, length, size in segments:
        first = torch.arange(start, start + size, device=out.device)
        sim = spatial_similarity(geo, first, first)  # [size, size]: one frame against itself
        weight = torch.exp(amplitude * (sim - 1))
        whole = weight.sum(-1)  # a whole frame, seen from each patch
        own = torch.tril(weight).sum(-1)  # the row's own frame, keys up to the row
        frames = length // size
        gd = torch.exp(frame_profile(profile, frame_periods, torch.arange(frames, device=out.device)))
        earlier = torch.cumsum(gd, 0) - gd[0]  # sum over distances 1 .. f of the profile
        rows = torch.arange(start, start + length, device=out.device)
        f, p = (rows - start) // size, (rows - start) % size
        out[rows] = torch.log(own[p] + whole[p] * earlier[f])
    return out


def planted_keys(geo: dict, rows: torch.Tensor, amplitude: float, profile, frame_periods, segment_of) -> torch.Tensor:
    """bool [R, N]: the kernel's core for visual rows (same segment, keys <= row, spatial logit
    within ``CORE_NATS`` of the peak, frame profile within ``FRAME_CORE`` nats)."""
    n = geo["pos"].numel()
    keys = torch.arange(n, device=rows.device)
    same = segment_of[rows][:, None] == segment_of[None, :]
    near = amplitude * (1 - spatial_similarity(geo, rows, keys)) <= CORE_NATS
    dist = (geo["frame"][rows][:, None] - geo["frame"][None, :]).clamp(min=0)
    in_frames = frame_profile(profile, frame_periods, dist) >= -FRAME_CORE
    return same & near & in_frames & geo["visual"][None, :] & (segment_of[rows] >= 0)[:, None]
