"""What ``mminference::prefill_attention`` does when it runs: its options (op arguments, never a
registry), the dense/sparse decision and the dense fallback, the per-forward state (the modality
layout, in a ``ContextVar``) and the statistics of each call. No ``torch.library`` and no FX here:
``mmcompile.ops`` is the door from graphs, ``mmcompile.patterns`` and ``mmcompile.kernels`` do the work.
"""

from .forward_state import ForwardState, begin_forward, current_forward, forward_scope
from .options import POLICIES, RuntimeOptions
from .prefill import run_prefill
from .records import CallRecord, DenseReason, LayoutSummary
from .stats import RuntimeStats, stats_for, track

__all__ = [
    "RuntimeOptions", "POLICIES", "run_prefill", "CallRecord", "DenseReason", "LayoutSummary",
    "RuntimeStats", "stats_for", "track", "ForwardState", "current_forward", "begin_forward", "forward_scope",
]
