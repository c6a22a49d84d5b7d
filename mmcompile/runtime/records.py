"""What one call of the prefill op did, as data: the path, why (a kind, not a string), the layout."""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

import torch


class DenseReason(enum.Enum):
    """Why a call ran dense (SDPA semantics). Tests assert on these kinds."""

    KEY_PADDING = "key padding"
    DECODE_OR_CHUNK = "decode/chunk"
    FORCE_DENSE = "force_dense"
    SHORT = "short"
    NO_KERNEL = "no kernel here"  # plain CPU without TRITON_INTERPRET, or a dtype/head dim the kernels lack
    REQUIRES_GRAD = "requires grad"  # the sparse path has no gradient: dense, differentiable
    SPARSE_FAILED = "sparse path failed"  # an error in estimation/policy/index/kernel: logged, run dense
    NON_FINITE = "non-finite q/k/v"  # NaN or inf: dense propagates it to every later row, a sparse index would not


@dataclasses.dataclass(frozen=True)
class LayoutSummary:
    """The modality layout one sparse call used, as plain data (computed once per forward)."""

    source: str  # "op argument", "annotation", "input_ids placeholders", "mm_token_type_ids", "none (...)"
    geometry: str  # "given", "video_grid_thw (merge 2)", "pixel_values_videos (4 frames)", "none", "none (why)"
    tokens: dict  # modality name -> tokens over the batch (text included; padding not)
    frame_stride: tuple  # per sample: tokens per frame of its longest visual segment (0: none)
    segments: tuple  # per sample: ((modality name, start, length, frame_h, frame_w), ...) of visual segments


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One call of the op. ``reason`` is None for a sparse call; ``detail`` says more (what chose a
    sparse call's patterns: the policy, "plan", or "plan types, online sizes"; the error of a
    failed one)."""

    layer: int
    path: str  # "sparse" | "dense"
    reason: Optional[DenseReason]
    detail: str
    n_q: int
    n_k: int
    head_density: Optional[torch.Tensor] = None  # [Hq] (``SparseIndex.density``), None for dense calls
    layout: Optional[LayoutSummary] = None  # the layout a sparse call read
    patterns: tuple = ()  # per query head, the HeadPattern a sparse call ran
    head_recall: Optional[torch.Tensor] = None  # [Hq]: recall of each head's launches on held-out rows (patterns/verify.py)

    @property
    def density(self) -> float:
        """Mean over heads of the evaluated share of the causal area (1.0 when dense). Reading it
        syncs with the device: the hot path only stores the tensor."""
        return 1.0 if self.head_density is None else float(self.head_density.float().mean())

    @property
    def predicted_recall(self) -> Optional[float]:
        """Smallest per-head recall on the held-out rows (what the call believed), or None."""
        return None if self.head_recall is None else float(self.head_recall.min())
