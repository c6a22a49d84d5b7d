"""Online estimation from the last queries (MInference Alg. 2, MMInference Alg. 1).

``last_queries`` picks, per sample, the last ``last_q`` tokens (of one modality, for boundary
heads); ``last_query_probs`` is their float32 softmax over all keys, causal in original positions;
vertical (per key) and slash (per diagonal offset) scores and the grid stride/phase are read off it.
"""

from __future__ import annotations

import torch

from .layout import PAD

LAST_Q = 64


def last_queries(modality: torch.Tensor | None, n: int, batch: int, want: int | None = None,
                 last_q: int = LAST_Q, device=None):
    """Positions int64 [B, L] of the last ``last_q`` tokens (of modality ``want``; non-pad if None),
    latest first, and a bool [B, L] saying which exist."""
    last_q = min(last_q, n)
    if modality is None:
        pos = torch.arange(n - 1, n - 1 - last_q, -1, device=device).expand(batch, last_q)
        return pos, torch.ones(batch, last_q, dtype=torch.bool, device=device)
    hit = modality != PAD if want is None else modality == want
    score = torch.where(hit, torch.arange(n, device=modality.device), -1)
    top = score.topk(last_q, dim=1).values
    return top.clamp(min=0), top >= 0


def last_query_probs(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor,
                     scale: float, key_pad: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
    """float32 [B, Hq, L, N]: softmax of the chosen queries over all keys (GQA without copies).

    Rows that do not exist (``valid`` False) hold garbage: the score readers below weight them 0.
    The product runs in the inputs' dtype (fp32 accumulate) and is then softmaxed in fp32: enough
    to rank columns and diagonals, and it avoids fp32 copies of K. ``start`` (<= every position in
    ``pos``, known once per forward) limits the causal masking to the keys from there on.
    """
    batch, heads_q, n, d = q.shape
    heads_kv = k.shape[1]
    rows = q.gather(2, pos[:, None, :, None].expand(batch, heads_q, pos.shape[1], d)) * scale
    rows = rows.view(batch, heads_kv, heads_q // heads_kv * pos.shape[1], d)
    # One batched product per KV head (no K copies), then fp32 for the softmax.
    scores = torch.matmul(rows, k.transpose(-1, -2)).view(batch, heads_q, pos.shape[1], n).float()
    # Causality only bites from the earliest estimation row on: mask that tail alone.
    keys = torch.arange(start, n, device=q.device)
    future = keys[None, None, :] > pos[:, :, None]  # [B, L, N - start]
    scores[..., start:].masked_fill_(future[:, None], float("-inf"))
    if key_pad is not None:  # padding: rare, full pass; all-masked rows become zeros
        scores.masked_fill_(key_pad[:, None, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1).nan_to_num_(0.0)
    return torch.softmax(scores, dim=-1)


def vertical_scores(probs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B, H, N]: attention mass of each key column over the (valid) estimation rows."""
    if valid is None:
        return probs.sum(dim=2)
    return torch.einsum("bhln,bl->bhn", probs, valid.to(probs.dtype))


def slash_scores(probs: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B, H, N]: mass along each diagonal offset o (key = query position - o), valid rows only."""
    batch, heads, rows, n = probs.shape
    offsets = torch.arange(n, device=probs.device)
    keys = pos[:, :, None] - offsets[None, None, :]  # [B, L, N]: key at offset o for each row
    weight = (keys >= 0).to(probs.dtype)
    if valid is not None:
        weight = weight * valid[:, :, None].to(probs.dtype)
    gathered = probs.gather(3, keys.clamp(min=0)[:, None].expand(batch, heads, rows, n))
    return torch.einsum("bhln,bln->bhn", gathered, weight)


def grid_stride_phase(vertical: torch.Tensor, candidates: list[int]):
    """Best (stride, phase) per (b, h) among candidate strides.

    Score of a stride s: the heaviest phase's share of the mass times s, i.e. its mass over the
    uniform 1/s baseline, so small strides are not favoured just for holding more tokens. Multiples
    of the true stride score the same up to noise while the true stride beats its divisors by ~2x,
    so a larger stride must win by 30% to replace a smaller one.
    """
    batch, heads, n = vertical.shape
    total = vertical.sum(-1).clamp(min=1e-20)
    best_score = torch.full((batch, heads), -1.0, device=vertical.device)
    best_stride = torch.ones(batch, heads, dtype=torch.long, device=vertical.device)
    best_phase = torch.zeros(batch, heads, dtype=torch.long, device=vertical.device)
    for s in candidates:  # a few strides; each is one O(N) view-and-sum
        padded = torch.nn.functional.pad(vertical, (0, (-n) % s))
        mass = padded.view(batch, heads, -1, s).sum(2)
        top, phase = mass.max(-1)
        score = top / total * s
        better = score > best_score * 1.3
        best_score = torch.where(better, score, best_score)
        best_stride = torch.where(better, s, best_stride)
        best_phase = torch.where(better, phase, best_phase)
    return best_stride, best_phase


def stride_candidates(frame: int, max_stride: int) -> list[int]:
    """Candidate strides for a searched grid: the frame size, its halves and doubles, and a coarse
    log-spaced set up to ``max_stride``."""
    coarse = {int(round(2 ** (e / 4))) for e in range(16, 4 * max_stride.bit_length())}
    around = {frame, frame // 2, frame * 2, frame // 4} if frame > 0 else set()
    return sorted(v for v in coarse | around if 8 <= v <= max_stride)
