"""``torch.ops.mminference.prefill_attention``: the op the backend's rewrite inserts for causal
language-model attention.

    prefill_attention(q [B,Hq,Nq,D], k [B,Hkv,Nk,D], v [B,Hkv,Nk,D], modality_ids: Tensor?,
                      layer: int, scale: float, config_key: str, key_padding_mask: Tensor? = None)
        -> [B,Hq,Nq,D]   (contiguous)

Same result as ``F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=scale)``
with the causal diagonal aligned bottom-right (query ``i`` is token ``Nk - Nq + i``: decode steps and
chunked prefill). GQA is native: K/V are never repeated. ``key_padding_mask`` [B, >= Nk] (any dtype,
nonzero = keep) is the 2-D padding mask HF folds into its boolean attention mask; when it masks
something the call runs dense SDPA with exactly that mask (the original graph's semantics).

Runtime choice, per call: key padding present, Nq != Nk, Nq < ``min_sparse_len`` or ``force_dense``
-> dense (the Triton dense kernel on CUDA or under ``TRITON_INTERPRET=1``, SDPA on a plain CPU);
otherwise sparse: ``policy="online"`` chooses per head (and per query modality when a layout reaches
the call: ``modality_ids``, an ``mmcompile.annotate`` block, or what the forward's graphs published)
with ``mmcompile.patterns`` (one host sync per layer for the choice);
``policy="a-shape"`` uses a static A-shape index. Without a kernel (plain CPU) the sparse path is
the exact reference of the A-shape index.
``config_key`` names a ``RuntimeConfig`` the backend registered; each call is counted there.

The hot path avoids host syncs: the A-shape index and its density are cached per shape, and the
padding check is cached per padding tensor (one sync per forward, not per layer).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import weakref
from typing import Optional

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BLOCK_M = BLOCK_N = 64  # placeholder A-shape index tiles (a size the kernel is compiled for)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_RECORDS = 4096


@dataclasses.dataclass(frozen=True)
class LayoutSummary:
    """The modality layout one sparse call used, as plain data (computed once per forward): where it
    came from, where its frame geometry came from, and what it says."""

    source: str  # "annotation", "input_ids placeholders", "mm_token_type_ids", "graph", "none (...)"
    geometry: str  # "given" (an annotated layout), "video_grid_thw (merge 2)", "pixel_values_videos (4 frames)",
    #                "none" or "none (why)": no frame geometry, each visual run is one frame
    tokens: dict  # modality name -> tokens over the batch (text included; padding not)
    frame_stride: tuple  # per sample: tokens per frame of its longest visual segment (0: none)
    segments: tuple  # per sample: ((modality name, start, length, frame_h, frame_w), ...) of visual segments


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One call of the op: which layer, which path and why, its lengths and the density run."""

    layer: int
    path: str  # "sparse" | "dense"
    reason: str  # why dense ("short", "decode/chunk", "force_dense", "key padding", ...) or the pattern
    n_q: int
    n_k: int
    density: float  # fraction of the causal (query, key) pairs computed
    layout: Optional[LayoutSummary] = None  # the layout the online sparse path read (None elsewhere)


class RuntimeStats:
    """Counters of the op calls made under one config key (thread-safe, bounded history)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.sparse_calls = 0
        self.dense_calls = 0
        self.reasons: collections.Counter = collections.Counter()
        self.records: collections.deque = collections.deque(maxlen=_MAX_RECORDS)

    def record(self, rec: CallRecord) -> None:
        with self._lock:
            if rec.path == "sparse":
                self.sparse_calls += 1
            else:
                self.dense_calls += 1
            self.reasons[rec.reason] += 1
            self.records.append(rec)

    def reset(self) -> None:
        with self._lock:
            self.sparse_calls = self.dense_calls = 0
            self.reasons.clear()
            self.records.clear()

    def mean_sparse_density(self) -> Optional[float]:
        dens = [r.density for r in self.records if r.path == "sparse"]
        return sum(dens) / len(dens) if dens else None


@dataclasses.dataclass
class RuntimeConfig:
    """What the op reads at run time, registered by the backend under a config key."""

    min_sparse_len: int = 32768
    sink: int = 128
    local: int = 4096
    force_dense: bool = False
    policy: str = "online"
    density: float = 0.1
    stats: RuntimeStats = dataclasses.field(default_factory=RuntimeStats)


_REGISTRY: dict[str, RuntimeConfig] = {}
_DEFAULT = RuntimeConfig()
_warned_keys: set[str] = set()


def register_runtime_config(key: str, config: RuntimeConfig) -> None:
    _REGISTRY[key] = config


def runtime_config(key: str) -> RuntimeConfig:
    """The config registered under ``key``; an unknown key (e.g. a graph loaded in another process)
    gets the defaults, with one warning."""
    config = _REGISTRY.get(key)
    if config is None:
        if key not in _warned_keys:
            log.warning("mminference: no runtime config registered under %r; using defaults", key)
            _warned_keys.add(key)
        return _DEFAULT
    return config


# --- dense -----------------------------------------------------------------------------------

# The kernels are imported on first use, not with this module: the backend imports it, and the
# interpreter choice (TRITON_INTERPRET) must still be open until a kernel is defined.
def _kernels():
    import mmcompile.kernels as kernels
    from mmcompile.kernels.index_factories import a_shape_index

    return kernels, a_shape_index


def _kernel_ok(q: torch.Tensor) -> bool:
    interpreting = _kernels()[0].interpreting()
    return (q.device.type == "cuda" or interpreting) and q.dtype in _KERNEL_DTYPES and q.shape[-1] <= 256


def _sdpa(q, k, v, scale, mask=None, causal=False):
    # enable_gqa reads the K/V heads in place (no repeat_kv copy).
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def _dense(q, k, v, scale):
    n_q, n_k = q.shape[2], k.shape[2]
    if _kernel_ok(q):
        return _kernels()[0].dense_attention_forward(q, k, v, scale, q_offset=n_k - n_q)[0]
    if n_q == n_k:
        return _sdpa(q, k, v, scale, causal=True)
    # SDPA's is_causal is top-left aligned; decode queries are the last positions (bottom-right).
    mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
    return _sdpa(q, k, v, scale, mask=mask)


# --- key padding (the masked HF form) --------------------------------------------------------

_pad_cache: dict = {"ref": None, "version": -1, "all_ones": False}


def _padding_all_ones(pad: torch.Tensor) -> bool:
    """``pad.all()`` with a one-entry cache keyed on the tensor object and its version counter:
    every layer of one forward passes the same padding tensor, so this syncs once per forward."""
    ref = _pad_cache["ref"]
    if ref is not None and ref() is pad and _pad_cache["version"] == pad._version:
        return _pad_cache["all_ones"]
    all_ones = bool(pad.bool().all())
    _pad_cache.update(ref=weakref.ref(pad), version=pad._version, all_ones=all_ones)
    return all_ones


def _dense_padded(q, k, v, scale, pad):
    n_q, n_k = q.shape[2], k.shape[2]
    causal = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
    # The graph read pad[b, j] for j < Nk: a longer padding mask contributes its first Nk columns.
    mask = causal[None, None] & pad[:, :n_k].to(device=q.device, dtype=torch.bool)[:, None, None, :]
    return _sdpa(q, k, v, scale, mask=mask)


# --- sparse placeholder: static A-shape ------------------------------------------------------

_index_cache: collections.OrderedDict = collections.OrderedDict()
_INDEX_CACHE_SIZE = 16


def _a_shape(batch, heads, n, sink, local, device):
    """(SparseIndex, density), built once per shape: building syncs (capacity), layers must not."""
    key = (batch, heads, n, sink, local, str(device))
    hit = _index_cache.get(key)
    if hit is not None:
        _index_cache.move_to_end(key)
        return hit
    index = _kernels()[1](batch, heads, n, sink, local, block_m=BLOCK_M, block_n=BLOCK_N, device=device)
    rows = (n - torch.arange(index.num_query_blocks, device=device) * BLOCK_M).clamp(max=BLOCK_M)
    # Listed A-shape blocks lie wholly before the diagonal block: every pair in them is causal.
    listed = (index.block_count.to(torch.float64) * BLOCK_N * rows).sum()
    diagonal = batch * heads * (rows * (rows + 1) / 2).sum()
    density = float(listed + diagonal) / (batch * heads * n * (n + 1) / 2)
    _index_cache[key] = (index, density)
    if len(_index_cache) > _INDEX_CACHE_SIZE:
        _index_cache.popitem(last=False)
    return index, density


def sparse_attention_forward(q, k, v, index, scale):
    """The sparse kernel (a module-level name so a test can swap in the reference)."""
    return _kernels()[0].sparse_attention_forward(q, k, v, index, scale)


_context_cache: dict = {"key": None, "ref": None, "ctx": None, "summary": None}


def _forward_context(q, layout, source: str = "", geometry: str = ""):
    """(the pattern library's per-forward context, its LayoutSummary), cached: every layer of a
    forward has the same length and layout object, so the layout is read (host syncs) once per forward."""
    from mmcompile.patterns import forward_context

    key = (q.shape[0], q.shape[2], str(q.device), source, geometry,
           None if layout is None else layout.modality._version)
    cache = _context_cache
    same = layout is None or (cache["ref"] is not None and cache["ref"]() is layout)
    if cache["key"] == key and same and cache["ctx"] is not None:
        return cache["ctx"], cache["summary"]
    ctx = forward_context(layout, q.shape[2], q.shape[0], q.device)
    summary = _summary(layout, source, geometry)
    cache.update(key=key, ref=None if layout is None else weakref.ref(layout), ctx=ctx, summary=summary)
    return ctx, summary


def _summary(layout, source: str, geometry: str) -> LayoutSummary:
    from mmcompile.patterns.layout import MODALITY_NAMES

    if layout is None:
        return LayoutSummary(source, geometry, {}, (), ())
    kinds = sorted(MODALITY_NAMES)
    counts = torch.stack([(layout.modality == k).sum() for k in kinds]).tolist()
    seg_kind = layout.modality.gather(1, layout.seg_start.long().clamp(0, max(layout.length - 1, 0)))
    rows = torch.stack([seg_kind, layout.seg_start, layout.seg_len, layout.frame_h, layout.frame_w], -1).tolist()
    segments = tuple(tuple((MODALITY_NAMES.get(k, str(k)), start, length, h, w)
                           for k, start, length, h, w in sample if length > 0) for sample in rows)
    return LayoutSummary(source, geometry, {MODALITY_NAMES[k]: c for k, c in zip(kinds, counts) if c},
                         tuple(layout.frame_stride().tolist()), segments)


def _online(q, k, v, scale, config: RuntimeConfig, layout, source: str, geometry: str):
    """Patterns chosen per head from this input, then one launch per group of heads."""
    from mmcompile.patterns.fidelity import index_density
    from mmcompile.patterns.layer import Estimates, attend, build_layer_indexes
    from mmcompile.patterns.policy import choose_patterns

    ctx, summary = _forward_context(q, layout, source, geometry)
    estimates = Estimates(q, k, ctx, scale)
    heads = choose_patterns(q, k, ctx, density=config.density, scale=scale, estimates=estimates)
    indexes = build_layer_indexes(q, k, heads, ctx, scale, estimates=estimates)
    out = attend(q, k, v, indexes, scale)
    total = sum(len(ids) * (1.0 if index is None else float(index_density(index, q.shape[2]).mean()))
                for ids, index in indexes)
    return out, min(total / q.shape[1], 1.0), summary


_ids_cache: dict = {"ref": None, "version": -1, "layout": None}
_warned: dict = {"ref": None}  # the last layout warned about: one warning per layout, not per layer


def _ids_layout(ids):
    """The op's own ``modality_ids`` argument as a layout (no geometry), built once per tensor."""
    from mmcompile.patterns import from_hf_inputs

    cache = _ids_cache
    if cache["ref"] is None or cache["ref"]() is not ids or cache["version"] != ids._version:
        cache.update(ref=weakref.ref(ids), version=ids._version, layout=from_hf_inputs(mm_token_type_ids=ids))
    return cache["layout"]


def _layout(q, modality_ids, layer: int | None = None):
    """(ModalityLayout or None, source, geometry) for this call, in order: the op's own argument, an
    ``mmcompile.annotate.modality`` block, what this forward's graphs published. A layout whose
    [batch, tokens] do not match the call is ignored (text-only), with one warning per layout."""
    if modality_ids is not None:
        return _ids_layout(modality_ids), "graph", "none"
    from mmcompile.annotate import current_annotation, published_for_layer

    annotated = current_annotation()
    if annotated is not None:
        layout, geometry = annotated
        if _matches(q, layout, "annotated"):
            return layout, "annotation", geometry
        return None, "none (annotation shape mismatch)", "none"
    layout, source, geometry = published_for_layer(layer)
    if layout is not None and not _matches(q, layout, f"published ({source})"):
        return None, "none (published layout shape mismatch)", "none"
    return layout, source, geometry


def _matches(q, layout, what: str) -> bool:
    if (layout.batch, layout.length) == (q.shape[0], q.shape[2]):
        return True
    if _warned["ref"] is None or _warned["ref"]() is not layout:
        _warned["ref"] = weakref.ref(layout)
        log.warning("mminference: %s modality layout [batch, tokens] = %s does not match this call's %s; "
                    "treating it as text-only", what, (layout.batch, layout.length), (q.shape[0], q.shape[2]))
    return False


def _sparse(q, k, v, scale, config: RuntimeConfig, modality_ids=None, layer: int | None = None):
    """(out, density, pattern name and layout source, LayoutSummary or None) of the sparse path."""
    if config.policy == "online" and _kernel_ok(q):
        layout, source, geometry = _layout(q, modality_ids, layer)
        out, density, summary = _online(q, k, v, scale, config, layout, source, geometry)
        return out, density, f"online, layout: {source}", summary
    batch, heads, n, _ = q.shape
    index, density = _a_shape(batch, heads, n, config.sink, config.local, q.device)
    if _kernel_ok(q):
        return sparse_attention_forward(q, k, v, index, scale)[0], density, "a-shape", None
    # Plain CPU (no interpreter) or an unsupported dtype: the exact O(N^2) reference of the same index.
    out, _ = _kernels()[0].sparse_attention_reference(q.float(), k.float(), v.float(), index, scale)
    return out.to(q.dtype), density, "a-shape (reference: no kernel here)", None


# --- the op ------------------------------------------------------------------------------------

def _choose(q, k, config: RuntimeConfig, key_padding_mask) -> str:
    """'' for the sparse path, else the reason to go dense."""
    if key_padding_mask is not None and not _padding_all_ones(key_padding_mask):
        return "key padding"
    if q.shape[2] != k.shape[2]:
        return "decode/chunk"
    if config.force_dense:
        return "force_dense"
    if q.shape[2] < max(config.min_sparse_len, 1):
        return "short"
    return ""


@torch.library.custom_op("mminference::prefill_attention", mutates_args=())
def prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, modality_ids: Optional[torch.Tensor],
    layer: int, scale: float, config_key: str, key_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Causal (bottom-right) GQA attention of a rewritten layer; dense or sparse per the runtime config."""
    config = runtime_config(config_key)
    n_q, n_k = q.shape[2], k.shape[2]
    reason = _choose(q, k, config, key_padding_mask)
    if reason == "key padding":
        out = _dense_padded(q, k, v, scale, key_padding_mask)
    elif reason:
        out = _dense(q, k, v, scale)
    else:
        out, density, pattern, layout = _sparse(q, k, v, scale, config, modality_ids, layer)
        config.stats.record(CallRecord(layer, "sparse", pattern, n_q, n_k, density, layout))
        return out.contiguous()
    config.stats.record(CallRecord(layer, "dense", reason, n_q, n_k, 1.0))
    return out.contiguous()


@prefill_attention.register_fake
def _(q, k, v, modality_ids, layer, scale, config_key, key_padding_mask=None):
    # Contiguous, like the real output (Inductor asserts on a stride mismatch).
    return q.new_empty(q.shape)
