"""Q/K/V with planted attention structure, for fidelity measurements without model weights.

Per head one of (BENCHMARKING.md "Fidelity"):
  grid        video queries attend to grid lines (one key per frame at a phase, per head) and, with
              ``periodic_frames``, to the same patch in earlier frames (periodic slashes); text
              queries attend locally;
  vertical-slash  a few heavy key columns plus a local band, for every query;
  a-shape     sink tokens plus a local band;
  boundary    text queries: sink + local; video queries: grid lines (modality-dependent);
  random      unstructured (i.i.d. Gaussian Q/K).
The local band comes from sinusoidal position features (like RoPE: q_i . k_j depends on i - j).

Calibration: planted pairs score ``strength`` above the noise; the paper measures 95% of the mass
in the top 5.78% of weights at 128K for VLMs (method.md, "Sparsity analysis"), so the diffuse
background must hold only a few percent of a structured row's mass. Random-feature local bands
have a far field: away from the diagonal, their logit is a sum of m cosines with random phases,
std ``strength / sqrt(2m)``. With m = 16 frequencies (the first version: a quarter of the head dim,
uniform frequencies) that was ~1.9 logits: it held ~12% of an A-shape row's mass at 128K and made
a few random keys per row hot, so one planted column (the one the far field happened to boost)
drew most of a VS head's mass, differently for every query. Now the band uses every dimension not
taken by the sink/line/column directions (m = 62 at D=128) with Gaussian frequencies (a Gaussian
kernel, no sinc side lobes), and sink, line and column keys carry no band features, so planted
keys score the same for every query.
"""

from __future__ import annotations

import math

import torch

from .layout import TEXT, VIDEO, ModalityLayout, from_segments

HEAD_KINDS = ("grid", "vertical-slash", "a-shape", "boundary", "random")


def head_kinds(heads: int) -> list[str]:
    """A fixed mix: ~35% grid, 20% VS, 20% A-shape, 20% boundary, 5% random (1 of 28 heads).

    Unstructured heads must stay dense (no sparse mask keeps their mass), so each costs 1/H of
    the mean density: at 10% (3 of 28, the first mix) the density bar of 10% could not be met by
    any policy; the paper finds nearly all VLM heads sparse at long context."""
    weights = (0.35, 0.2, 0.2, 0.2, 0.05)
    counts = [int(round(w * heads)) for w in weights]
    counts[0] += heads - sum(counts)
    return [kind for kind, c in zip(HEAD_KINDS, counts) for _ in range(c)]


def _local_features(n, dims, width, device, g):
    """[N, dims] features whose dot products decay like exp(-(i - j)^2 / 2 width^2) (random Fourier
    features of a Gaussian kernel), up to a far field of std 1 / sqrt(dims)."""
    freqs = torch.randn(dims // 2, generator=g, device=device) / max(width, 1)
    angle = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs[None, :]
    return torch.cat([angle.cos(), angle.sin()], dim=-1)


def _periodic_features(n, dims, stride, frames, device, g):
    """[N, dims] features whose dot products approximate [i = j mod stride] exp(-(i - j)^2 / 2 (frames
    stride)^2): random Fourier features of that kernel, i.e. harmonics m / stride (m uniform over the
    residues: their mean is the comb) jittered by a Gaussian (the envelope), up to a far field of std
    1 / sqrt(dims). Dot products are 1 at i = j."""
    half = dims // 2
    harmonic = torch.randint(0, stride, (half,), generator=g, device=device)
    jitter = torch.randn(half, generator=g, device=device) / (2 * math.pi * stride * frames)
    pos = torch.arange(n, device=device)
    turns = (pos[:, None] * harmonic[None, :] % stride).float() / stride + pos[:, None].float() * jitter[None, :]
    angle = 2 * math.pi * turns  # the harmonic part reduced mod stride first: exact at any length
    return torch.cat([angle.cos(), angle.sin()], dim=-1) / math.sqrt(half)


def planted_qkv(layout: ModalityLayout, heads_q: int, heads_kv: int, head_dim: int = 128, device=None,
                dtype=torch.float32, seed: int = 0, kinds: list[str] | None = None, strength: float = 10.5,
                periodic_frames: float = 0.0, periodic_strength: float = 14.0):
    """Returns (q, k, v, kinds): [1, Hq, N, D], [1, Hkv, N, D] x2, and each query head's kind.
    Batch 1 (the layout's first sample). K/V heads are shared by ``heads_q // heads_kv`` query heads,
    so planted key features are per KV head and query heads of a group pick which ones to read.

    ``periodic_frames`` > 0 (off by default; off leaves the output unchanged): grid heads' video
    queries also attend to the same patch in earlier frames (keys at i - k * frame stride: periodic
    slashes, what Grid's permutation is for). Without it grid heads hold only lines and sinks, which
    VS covers as columns just as cheaply, so Grid's advantage cannot show. The logit at k frames is
    ``periodic_strength`` exp(-k^2 / 2 w^2) with w = periodic_frames sqrt(periodic_strength), so the
    mass falls roughly as exp(-k^2 / 2 periodic_frames^2). The strength sits above the sinks' and
    lines' 10.5, or those 64 + one-per-frame keys would keep most of the mass: at 16 frames ~80% of
    a video query's mass is on same-patch keys, mostly within 30 frames, ~15% on sinks and lines.
    The features (``_periodic_features``) take half of the band's dimensions, so the band's far
    field grows (std ``strength / sqrt(dims)``) in every head of the KV group.

    Drawn on the CPU whatever ``device``, then moved: a CPU probe then analyses the very input a
    GPU benchmark of the same seed runs (CUDA's generator draws other numbers)."""
    n = layout.length
    target, device = device, torch.device("cpu")  # every tensor below is drawn here, then moved to target
    g = torch.Generator().manual_seed(seed)
    kinds = kinds or head_kinds(heads_q)
    group = heads_q // heads_kv
    q = torch.randn(1, heads_q, n, head_dim, generator=g, device=device) * 0.3
    k = torch.randn(1, heads_kv, n, head_dim, generator=g, device=device) * 0.3
    v = torch.randn(1, heads_kv, n, head_dim, generator=g, device=device)
    video = layout.modality[0].to(device) == VIDEO
    frame = int(layout.frame_stride()[0]) or 256
    pos = torch.arange(n, device=device)
    free = head_dim - 3  # all but the sink, line and column directions
    band_dims = (free // 4 if periodic_frames > 0 else free // 2) * 2
    periodic_dims = (free - band_dims) // 2 * 2 if periodic_frames > 0 else 0
    scale = math.sqrt(strength * math.sqrt(head_dim))  # planted pairs score ~strength above noise
    for kv in range(heads_kv):
        basis = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=g, device=device))[0]
        sink_dir, line_dir, col_dir = basis[:, 0], basis[:, 1], basis[:, 2]
        local_sub = basis[:, 3:3 + band_dims]  # local band features live in their own subspace
        phase = int(torch.randint(0, frame, (1,), generator=g, device=device))
        lines = video & ((pos - phase) % frame == 0)
        columns = torch.zeros(n, dtype=torch.bool, device=device)
        columns[torch.randint(0, n, (max(n // 512, 4),), generator=g, device=device)] = True
        width = min(256, max(n // 64, 16))  # local band: a few hundred tokens at long lengths
        local = _local_features(n, band_dims, width, device, g) @ local_sub.T * (scale / math.sqrt(band_dims / 2))
        planted_key = (pos < 64) | lines | columns
        k[0, kv] += scale * (sink_dir * (pos < 64)[:, None] + line_dir * lines[:, None] +
                             col_dir * columns[:, None]) + local * (~planted_key)[:, None]
        periodic = None
        if periodic_dims:  # own subspace; planted keys stay out, as for the band
            periodic_sub = basis[:, 3 + band_dims:3 + band_dims + periodic_dims]
            width = periodic_frames * math.sqrt(periodic_strength)
            periodic = _periodic_features(n, periodic_dims, frame, width, device, g) @ periodic_sub.T * \
                math.sqrt(periodic_strength * math.sqrt(head_dim))
            k[0, kv] += periodic * (video & ~planted_key)[:, None]
        for h in range(kv * group, (kv + 1) * group):
            kind = kinds[h]
            if kind == "random":
                continue
            add = local.clone() if kind != "grid" else local * (~video)[:, None]
            add += scale * sink_dir
            if kind in ("grid", "boundary"):
                add += scale * line_dir * video[:, None]
            if kind == "grid" and periodic is not None:
                add += periodic * video[:, None]
            if kind == "vertical-slash":
                add += scale * col_dir
            q[0, h] += add
    return q.to(dtype).to(target), k.to(dtype).to(target), v.to(dtype).to(target), kinds


def standard_layout(kind: str, n: int, frame_hw=(16, 16)) -> ModalityLayout:
    """BENCHMARKING.md's standard layouts: "video" (256 text, frames, 512 question), "mixed" (text
    segments of 256-2048 tokens between groups of frames, ~25% text) or "text"."""
    frame = frame_hw[0] * frame_hw[1]
    if kind == "text":
        return from_segments([[(TEXT, n)]])
    body = n - 256 - 512
    if kind == "video":
        frames = body // frame
        return from_segments([[(TEXT, 256 + body - frames * frame), (VIDEO, frames * frame, *frame_hw), (TEXT, 512)]])
    segs, left, g = [(TEXT, 256)], body, torch.Generator().manual_seed(0)
    while left > 0:  # groups of frames, then 256-2048 text tokens: ~25% text
        group = min(left, frame * int(torch.randint(3, 12, (1,), generator=g)))
        group -= group % frame
        if group == 0:
            segs.append((TEXT, left))
            break
        segs.append((VIDEO, group, *frame_hw))
        left -= group
        text = min(left, int(torch.randint(256, 2049, (1,), generator=g)) // 64 * 64)
        if text:
            segs.append((TEXT, text))
            left -= text
    segs.append((TEXT, 512))
    return from_segments([segs])
