"""The options of one rewritten attention call, as the op receives them: plain arguments.

A graph carries them in its ``mminference::prefill_attention`` nodes, so the graph behaves the same
in a fresh process, after ``torch.export`` and in a cached compile: nothing is looked up by key.
``tag`` only routes statistics (``stats.py``); it changes no result.
"""

from __future__ import annotations

import dataclasses

from mmcompile.patterns.layer import PLAN_SIZES

POLICIES = ("online", "a-shape")


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """Run-time behaviour of one rewritten layer (the op's keyword arguments, in schema order)."""

    min_sparse_len: int = 32768
    """Prefills shorter than this run dense."""
    policy: str = "online"
    """``"online"``: patterns chosen per head from this input; ``"a-shape"``: ``sink`` + ``local`` for all heads."""
    density: float = 0.1
    """Budget cap of the online policy (fraction of the causal area)."""
    recall: float = 0.95
    """The attention-mass recall each head's launches must reach on held-out rows (measured on the
    kernel's own result), else that head is recomputed with its pattern grown to the density cap
    (Grid replaced by its best original-order pattern), then dense; 0 turns the check off."""
    sink: int = 128
    local: int = 4096
    force_dense: bool = False
    strict: bool = False
    """Re-raise an error of the sparse path instead of running that call dense."""
    plan: str = ""
    """This layer's head patterns from a plan file (``mmcompile.plans.layer_arg``), or "" for the
    policy's choice."""
    plan_sizes: str = "online"
    """With a ``plan``: ``"online"``, the plan fixes each head's pattern type per query modality and
    the online policy sizes it for this input (budgets searched at a calibration length fall short
    at several times that length); ``"plan"``, the plan's patterns run as searched, sizes included."""
    tag: str = ""
    """Routes this call's statistics (``stats_for(tag)``); changes no result."""
    pictures: str = ""
    """Directory for one picture per sparse head of each sparse call (``<dump_dir>/masks``), each
    forward replacing the last; "" writes none. Changes no result."""

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"mminference policy must be one of {POLICIES}, got {self.policy!r}")
        if self.plan_sizes not in PLAN_SIZES:
            raise ValueError(f"mminference plan_sizes must be one of {PLAN_SIZES}, got {self.plan_sizes!r}")
        if not 0 < self.density <= 1:
            raise ValueError(f"mminference density must lie in (0, 1], got {self.density!r}")
        if not 0 <= self.recall <= 1:
            raise ValueError(f"mminference recall must lie in [0, 1], got {self.recall!r}")
        if min(self.min_sparse_len, self.sink, self.local) < 0:
            raise ValueError("mminference min_sparse_len, sink and local must be non-negative")
        if self.plan:
            from mmcompile.plans import patterns_from_arg

            patterns_from_arg(self.plan)  # a malformed plan argument is a clear error here

    def op_kwargs(self) -> dict:
        """The keyword arguments of ``torch.ops.mminference.prefill_attention`` for these options."""
        return dataclasses.asdict(self)
