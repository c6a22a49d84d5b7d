"""The one configuration object of the ``mminference`` backend, built from ``torch.compile(options=...)``.

    torch.compile(model, backend="mminference", options={"min_sparse_len": 16384, "dump_dir": "dumps"})

``config_from_options`` is the only constructor used by the backend: it rejects unknown keys (the
message lists the valid ones) and values of the wrong type, and reads ``MMINFERENCE_DUMP_DIR`` when
``dump_dir`` is not given.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

from mmcompile.runtime.options import PLAN_SIZES, POLICIES, RuntimeOptions

DUMP_DIR_ENV = "MMINFERENCE_DUMP_DIR"


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """Settings of one ``torch.compile(..., backend="mminference", options=...)`` call."""

    plan: Optional[str] = None
    """Path of a per-head pattern plan (``mmcompile.plans``, versioned JSON). Checked when loaded and
    against every rewritten attention call (layers, heads, head dim): a plan for another model is an
    error, never applied silently. The online estimation still runs; the recall check still applies."""

    min_sparse_len: int = 32768
    """Prefill length (tokens) from which a rewritten layer runs the sparse kernel; shorter
    prefills, decode steps and chunked prefill (query length != key length) run dense."""

    policy: str = "online"
    """How long prefills choose their sparse pattern without a plan: ``"online"`` (per head and per
    query modality from the last-query estimate, ``mmcompile.patterns.policy``; heads without
    structure stay dense) or ``"a-shape"`` (a fixed sink + local budget for every head)."""

    density: float = 0.1
    """Budget cap of the online policy: the fraction of the causal area a head's pattern may visit."""

    recall: float = 0.95
    """The accuracy target: the share of the attention mass of held-out rows (rows of the same
    modality the index was not built from) each head's launches must keep, measured on the kernel's
    own result; a head that misses it is recomputed with its pattern grown to the ``density`` cap
    (Grid replaced by its best original-order pattern), then dense. 0 turns the check off."""

    plan_sizes: str = "online"
    """With a ``plan``: ``"online"`` (the plan fixes each head's pattern type per query modality, the
    online policy sizes it for the input at hand: budgets searched at 32K are too small at 128K) or
    ``"plan"`` (the plan's patterns as searched, budgets included)."""

    sink: int = 128
    """``policy="a-shape"``: the first ``sink`` keys every query block sees (tokens)."""

    local: int = 4096
    """``policy="a-shape"``: the local window before each query block's diagonal (tokens)."""

    dump_dir: Optional[str] = None
    """Directory for per-graph dumps (code before/after each pass, the report table) and, under
    ``masks/``, a picture per sparse head of each layer of the last forward. Falls back to the
    ``MMINFERENCE_DUMP_DIR`` environment variable; ``None`` writes nothing."""

    strict: bool = False
    """Re-raise an internal error of a pass instead of warning and compiling the unmodified graph,
    and at run time an error of the sparse path instead of running that call dense."""

    debug_uncompiled: bool = False
    """Return the rewritten graph's ``forward`` (run by Python) instead of compiling it with
    Inductor: fast to build, easy to step through, used by most tests."""

    force_dense: bool = False
    """Rewrite as usual but run every call dense (checks the rewrite itself against eager)."""

    seq_chunk: int = 32768
    """Tokens per piece in which the position-wise blocks (MLPs, RMS norms) of a prefill of at
    least twice as many tokens run, bounding their memory by the piece (``passes.chunk_sequence``);
    0 turns it off."""

    def __post_init__(self):
        if self.plan is not None:
            from mmcompile.plans import load_plan

            load_plan(self.plan)  # raises PlanError (a ValueError) naming what does not fit
        for name in ("min_sparse_len", "sink", "local", "seq_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"option {name!r} must be a non-negative int, got {value!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"option 'policy' must be one of {POLICIES}, got {self.policy!r}")
        if self.plan_sizes not in PLAN_SIZES:
            raise ValueError(f"option 'plan_sizes' must be one of {PLAN_SIZES}, got {self.plan_sizes!r}")
        if isinstance(self.density, bool) or not isinstance(self.density, (int, float)) or not 0 < self.density <= 1:
            raise ValueError(f"option 'density' must be a number in (0, 1], got {self.density!r}")
        for name in ("strict", "debug_uncompiled", "force_dense"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"option {name!r} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.recall, bool) or not isinstance(self.recall, (int, float)) or not 0 <= self.recall <= 1:
            raise ValueError(f"option 'recall' must be a number in [0, 1], got {self.recall!r}")
        if self.dump_dir is not None and not isinstance(self.dump_dir, (str, os.PathLike)):
            raise ValueError(f"option 'dump_dir' must be a path, got {self.dump_dir!r}")

    def runtime_options(self, tag: str = "") -> RuntimeOptions:
        """What every rewritten op of a graph compiled with this config receives as arguments."""
        return RuntimeOptions(min_sparse_len=self.min_sparse_len, policy=self.policy, density=self.density,
                              recall=self.recall, plan_sizes=self.plan_sizes, sink=self.sink, local=self.local,
                              force_dense=self.force_dense, strict=self.strict, tag=tag,
                              pictures=os.path.join(self.dump_dir, "masks") if self.dump_dir else "")


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(BackendConfig)]


def config_from_options(options: Optional[Mapping[str, Any]]) -> BackendConfig:
    """Build the BackendConfig from ``torch.compile``'s ``options`` dict (``None`` = defaults)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(valid_keys()))
    if unknown:
        raise ValueError(f"unknown mminference option(s) {unknown}; valid keys: {', '.join(valid_keys())}")
    if options.get("dump_dir") is None and os.environ.get(DUMP_DIR_ENV):
        options["dump_dir"] = os.environ[DUMP_DIR_ENV]
    if isinstance(options.get("dump_dir"), os.PathLike):
        options["dump_dir"] = os.fspath(options["dump_dir"])
    return BackendConfig(**options)
