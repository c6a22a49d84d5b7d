"""Per-head pattern plans: versioned JSON files (``schema``) and their compact per-layer form, the
``plan`` argument of ``torch.ops.mminference.prefill_attention`` (``codec``). A plan fixes each head's
inter-modality type and intra patterns with their budgets; the input still fixes the lines (online
estimation runs with a plan). The offline search that writes plans is ``mmcompile.search``; under
tensor parallelism each rank runs its slice of one plan (``ranks``).
"""

from .codec import layer_arg, patterns_from_arg
from .ranks import plan_for_call, shard_plan
from .schema import PLAN_VERSION, ModelShape, Plan, PlanError, load_plan, save_plan

__all__ = ["Plan", "ModelShape", "PlanError", "PLAN_VERSION", "load_plan", "save_plan", "layer_arg",
           "patterns_from_arg", "shard_plan", "plan_for_call"]
