"""The run time of ``mminference::prefill_attention``: decide, run sparse or dense, record.

An error in the sparse path (layout, estimation, policy, index building, kernel) never aborts the
user's forward: that call runs dense exactly (SDPA semantics), the error is logged once per kind
with its cause, and the record says ``SPARSE_FAILED``; ``strict=True`` re-raises instead.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from mmcompile._once import Once

from .decision import check_prefill_inputs, dense_reason
from .dense import dense, dense_padded
from .forward_state import current_forward
from .options import RuntimeOptions
from .records import CallRecord, DenseReason
from .stats import stats_for

log = logging.getLogger(__name__)
_ONCE = Once()


def reset_logged() -> None:
    """Forget which fallbacks were logged, so the next one of each kind is logged again (the log
    is once per kind per process otherwise)."""
    _ONCE.reset()


def run_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, modality_ids: Optional[torch.Tensor],
                key_padding_mask: Optional[torch.Tensor], layer: int, scale: float,
                options: RuntimeOptions) -> torch.Tensor:
    """Causal (bottom-right) GQA attention of one rewritten layer, dense or sparse per ``options``."""
    check_prefill_inputs(q, k, v, modality_ids, key_padding_mask)
    state = current_forward()
    reason = dense_reason(q, k, v, options, key_padding_mask, state)
    detail = ""
    if reason is None:
        try:
            out, record = _sparse(q, k, v, modality_ids, layer, scale, options, state)
            _record(options, record)
            return out.contiguous()
        except Exception as e:  # noqa: BLE001 - the user's forward must go on: this call runs dense
            if options.strict:
                raise
            reason, detail = DenseReason.SPARSE_FAILED, f"{type(e).__name__}: {e}"
            _ONCE.log(log, logging.WARNING, type(e).__name__,
                      "mminference: sparse attention of layer %s failed (%s); running it dense "
                      "(options={'strict': True} re-raises)", layer, detail, exc_info=True)
    if reason is DenseReason.NON_FINITE:
        _ONCE.log(log, logging.WARNING, reason, "mminference: NaN or inf in the q/k/v of layer %s; running it "
                  "dense, as SDPA would (a sparse index would leave some later rows finite)", layer)
    if reason is DenseReason.KEY_PADDING:
        out = dense_padded(q, k, v, scale, key_padding_mask)
    else:
        out = dense(q, k, v, scale)
    _record(options, CallRecord(layer, "dense", reason, detail, q.shape[2], k.shape[2]))
    return out.contiguous()


def _sparse(q, k, v, modality_ids, layer, scale, options: RuntimeOptions, state):
    from mmcompile.patterns import DEFAULT_BLOCK, AShape, HeadPattern, layer_attention
    from mmcompile.patterns.layer import plan_keywords

    layout, source, geometry = state.layout_for_call(q, modality_ids, layer)
    ctx, summary = state.context(q, layout, source, geometry, DEFAULT_BLOCK)
    chosen = {}  # the online choice, per head and query modality
    chooser = options.policy
    if options.plan:
        from mmcompile.plans import patterns_from_arg

        planned = patterns_from_arg(options.plan)
        if len(planned) != q.shape[1]:
            raise ValueError(f"the plan gives {len(planned)} head patterns for layer {layer}'s "
                             f"{q.shape[1]} query heads")
        chosen = plan_keywords(planned, options.plan_sizes)
        chooser = "plan types, online sizes" if options.plan_sizes == "online" else "plan"
    elif options.policy == "a-shape":
        chosen = {"patterns": [HeadPattern("none", (("*", AShape(options.sink, options.local)),))] * q.shape[1]}
    target = options.recall if (options.plan or options.policy == "online") and options.recall > 0 else None
    result = layer_attention(q, k, v, ctx, density=options.density, scale=scale, recall=target, **chosen)
    if options.pictures:
        _pictures(result.indexes, k.shape[2], options.pictures, layer)
    return result.out, CallRecord(layer, "sparse", None, chooser, q.shape[2], k.shape[2], result.head_density,
                                  summary, tuple(result.patterns), result.head_recall)


def _pictures(indexes, n_k: int, folder: str, layer: int) -> None:
    """The masks of this call, one PNG per sparse head; a folder that cannot be written is logged
    once and never breaks the forward."""
    from mmcompile.patterns.pictures import write_mask_pictures

    try:
        write_mask_pictures(indexes, n_k, folder, prefix=f"layer{layer:02d}")
    except OSError as e:
        _ONCE.log(log, logging.WARNING, ("pictures", folder), "mminference: no mask pictures in %s: %s", folder, e)


def _record(options: RuntimeOptions, record: CallRecord) -> None:
    stats = stats_for(options.tag)
    if stats is not None:
        stats.record(record)
