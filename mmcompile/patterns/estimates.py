"""The estimate of one layer, shared by the policy, the index builders and the held-out check:
line scores per query modality, the ranked columns, and the held-out rows' dense attention, each
computed once on first use for all heads.
"""

from __future__ import annotations

import torch

from . import estimate, intra, verify
from .context import ForwardContext


class Estimates:
    """Line scores (``estimate.LineScores``) per query modality ("*" = all), computed once per layer
    on first use for all heads and shared by the policy and the index builders."""

    def __init__(self, q, k, ctx: ForwardContext, scale: float):
        self.q, self.k, self.ctx, self.scale = q, k, ctx, scale
        self._cache = {}

    def lines(self, modality: str, head_ids: list[int]) -> estimate.LineScores:
        if modality not in self._cache:
            pos, valid, start, step = self.ctx.last_rows[modality]
            self._cache[modality] = estimate.line_scores(self.q, self.k, pos, valid, self.scale,
                                                         self.ctx.key_pad, start, step,
                                                         block_n=self.ctx.block_n)
        return self._cache[modality].heads(head_ids)

    def column_ranking(self, modality: str, head_ids: list[int]) -> torch.Tensor:
        """fp32 [B, H, N]: ``intra.column_scores`` of these heads' lines, computed once per layer
        and modality for all heads: the policy and the VS builder rank the same columns (~18 ops
        a call, per head and elementwise, so a slice of it is what a call on the slice returns)."""
        key = ("columns", modality)
        if key not in self._cache:
            self._cache[key] = intra.column_scores(self.lines(modality, list(range(self.q.shape[1]))), self.ctx.n)
        return estimate.select_heads(self._cache[key], head_ids)

    def adopting(self, q, k) -> "Estimates":
        """Estimates of ``q`` and ``k`` that start from this one's cached tensors (a replayed
        ``choice_graph``'s, computed from copies of q and k): what is computed anew reads q, k."""
        other = Estimates(q, k, self.ctx, self.scale)
        other._cache = dict(self._cache)
        return other

    def held_out_lse(self) -> torch.Tensor:
        """fp32 [B, Hq, S * L]: dense log-sum-exp of the held-out rows of every row set
        (``ctx.held_out``), in one pass: a layer that retries heads reads it twice."""
        if "held-out" not in self._cache:
            pos, valid = self.ctx.held_out
            self._cache["held-out"] = estimate.dense_row_lse(self.q, self.k, pos, valid, self.scale, self.ctx.key_pad)
        return self._cache["held-out"]

    def held_out_dense(self, v) -> tuple[torch.Tensor, torch.Tensor]:
        """(lse fp32 [B, Hq, S * L], out fp32 [B, Hq, S * L, D]): dense attention of the held-out
        rows (``verify.dense_rows``), once per layer; its lse serves ``held_out_lse`` too."""
        if "held-out-out" not in self._cache:
            pos, valid = self.ctx.held_out
            lse, out = verify.dense_rows(self.q, self.k, v, pos, valid, self.scale, self.ctx.key_pad)
            self._cache["held-out"], self._cache["held-out-out"] = lse, out
        return self._cache["held-out"], self._cache["held-out-out"]

    def explained_by(self, lines: estimate.LineScores, head_ids: list[int]):
        """columns -> the slash mass of ``lines`` those key columns account for."""
        return lambda columns: estimate.column_slash(self.q, self.k, lines, head_ids, columns, self.scale)

    def column_probs(self, lines: estimate.LineScores, head_ids: list[int]):
        """columns -> the estimation rows' probabilities at those key columns."""
        return lambda columns: estimate.column_probs(self.q, self.k, lines, head_ids, columns, self.scale)

    def keep_vs_ranking(self, modality: str, head_ids: list[int], columns, order) -> None:
        """The policy's ranked columns [B, H, C] and block order [B, H, T] for these heads (all of
        the layer's, in order), from which the VS builder takes its sets: the index the policy
        predicted is the index built (``vs_ranking``)."""
        if head_ids == list(range(self.q.shape[1])):
            self._cache[("vs", modality)] = (columns, order)

    def vs_ranking(self, modality: str, head_ids: list[int]):
        """(columns, block order) the policy ranked for these heads, or None."""
        kept = self._cache.get(("vs", modality))
        return None if kept is None else tuple(estimate.select_heads(t, head_ids) for t in kept)
