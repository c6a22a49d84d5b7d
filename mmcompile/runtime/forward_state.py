"""The state one forward's rewritten layers share: where the modality layout comes from, the layout
built once, the per-forward context of the pattern library, and small per-forward caches.

One ``ForwardState`` object per forward, held in a ``ContextVar`` (each thread and asyncio task
has its own; no module globals). It is replaced, never mutated into a new forward:
  * ``begin_forward()``: the backend's input wrapper calls it when the graph that opens an HF forward
    runs (the embedding lookup reads ``input_ids`` without comparing it to placeholder ids);
  * ``forward_scope(state)``: ``mmcompile.annotate.modality`` installs a state carrying the
    annotation for the block (forwards begun inside it keep the annotation).
A forward that publishes nothing (started from ``inputs_embeds``) cannot be seen beginning: the
rule ``ForwardState.serves`` then notices a layer coming back and stops serving the publication.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Optional

import torch

from mmcompile._once import Once

from .layout_sources import PublishedInputs, layout_from_published, summarize

log = logging.getLogger(__name__)
_ONCE = Once()
_STATE: contextvars.ContextVar = contextvars.ContextVar("mminference_forward_state", default=None)


def _same_tensor(cached: Optional[tuple], t: torch.Tensor) -> bool:
    """``cached = (tensor, version)`` is ``t``, unchanged. The cache holds the tensor, so its memory
    cannot be reused by another while cached; the version counter is compared where one exists
    (inference tensors have none: within one forward they are not written in place)."""
    if cached is None or cached[0] is not t:
        return False
    return cached[1] is None or cached[1] == t._version


def _version(t: torch.Tensor):
    return None if t.is_inference() else t._version


class ForwardState:
    """What every rewritten layer of one forward reads. See the module docstring for its lifetime."""

    def __init__(self, annotation: Optional[tuple] = None):
        self.annotation = annotation  # (ModalityLayout, geometry "given"/"none") of an annotate block
        self.published = PublishedInputs()
        self._built: Optional[tuple] = None  # (layout or None, source, geometry) of the publication
        self._layers_read: set = set()
        self._stale = False
        self._context: Optional[tuple] = None  # (key, ForwardContext, LayoutSummary, layout): the last shape
        self._padding: Optional[tuple] = None  # (tensor, version, all ones)
        self._ids: Optional[tuple] = None  # (tensor, version, layout) of the op's modality_ids argument

    # --- publication (the backend's input wrapper) -------------------------------------------

    def publish(self, **fields) -> None:
        """Set published inputs (``PublishedInputs`` fields); the layout is rebuilt on next read."""
        for name, value in fields.items():
            if name == "grids":
                self.published.grids.update(value)
            else:
                setattr(self.published, name, value)
        self._built, self._layers_read, self._stale = None, set(), False

    def published_layout(self) -> tuple:
        """(ModalityLayout or None, source, geometry) of this forward's publication, built once."""
        if self._built is None:
            self._built = layout_from_published(self.published)
        return self._built

    def serves(self, layer: Optional[int]) -> bool:
        """Whether the publication still serves ``layer``. It serves one forward, in which every
        layer runs once: a layer that already read it means a new forward that published nothing
        (one started from ``inputs_embeds``); from then on it is stale (logged once)."""
        if self._stale:
            return False
        if layer is None or layer < 0:
            return True
        if layer in self._layers_read:
            self._stale = True  # logged once per such forward: the state stays stale until a publication
            log.warning("mminference: a new forward published no modality inputs (inputs_embeds?); the "
                        "previous forward's layout is not reused: text-only")
            return False
        self._layers_read.add(layer)
        return True

    # --- what a call reads --------------------------------------------------------------------

    def layout_for_call(self, q: torch.Tensor, modality_ids: Optional[torch.Tensor], layer: Optional[int]) -> tuple:
        """(ModalityLayout or None, source, geometry) for one call, in order: the op's own
        ``modality_ids`` argument, the annotation, this forward's publication. A layout whose
        [batch, tokens] do not match the call is not used (text-only), with one warning."""
        if modality_ids is not None:  # [B, N] ids, or a [B, N, 3] table with frame geometry
            geometry = "given" if modality_ids.dim() == 3 else "none"
            layout, source = self._ids_layout(modality_ids), "op argument"
        elif self.annotation is not None:
            (layout, geometry), source = self.annotation, "annotation"
        else:
            layout, source, geometry = self.published_layout()
            if layout is not None and not self.serves(layer):
                return None, "none (nothing published by this forward)", "none"
        if layout is not None and (layout.batch, layout.length) != (q.shape[0], q.shape[2]):
            _ONCE.log(log, logging.WARNING, ("mismatch", id(layout)),
                      "mminference: %s modality layout [batch, tokens] = %s does not match this call's %s; "
                      "treating it as text-only", source, (layout.batch, layout.length), (q.shape[0], q.shape[2]))
            return None, f"none ({source} shape mismatch)", "none"
        return layout, source, geometry

    def context(self, q: torch.Tensor, layout, source: str, geometry: str, block: tuple) -> tuple:
        """(ForwardContext, LayoutSummary), built once per forward (host syncs): every layer of a
        forward has the same shape, so one entry serves it, and a state that lives across forwards
        (nothing begins them, e.g. text-only eager calls) never grows."""
        from mmcompile.patterns import forward_context

        key = (q.shape[0], q.shape[2], str(q.device), block, source, geometry)
        if self._context is None or self._context[0] != key or self._context[3] is not layout:
            ctx = forward_context(layout, q.shape[2], q.shape[0], q.device, *block)
            self._context = (key, ctx, summarize(layout, source, geometry), layout)
        return self._context[1], self._context[2]

    def padding_all_ones(self, pad: torch.Tensor) -> bool:
        """``pad.all()``, once per forward: every layer passes the same padding tensor."""
        if not _same_tensor(self._padding, pad):
            self._padding = (pad, _version(pad), bool(pad.bool().all()))
        return self._padding[2]

    def _ids_layout(self, ids: torch.Tensor):
        from mmcompile.patterns import from_hf_inputs
        from mmcompile.patterns.token_table import from_token_table

        if not _same_tensor(self._ids, ids):
            layout = from_token_table(ids) if ids.dim() == 3 else from_hf_inputs(mm_token_type_ids=ids)
            self._ids = (ids, _version(ids), layout)
        return self._ids[2]


def current_forward() -> ForwardState:
    """This context's forward state (a new one if none was begun here)."""
    state = _STATE.get()
    if state is None:
        state = ForwardState()
        _STATE.set(state)
    return state


def begin_forward() -> ForwardState:
    """Start a new forward in this context: nothing published yet, the annotation (if any) kept."""
    old = _STATE.get()
    state = ForwardState(annotation=None if old is None else old.annotation)
    _STATE.set(state)
    return state


@contextlib.contextmanager
def forward_scope(state: ForwardState):
    """Run the block with ``state`` as this context's forward state, then restore the previous one."""
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)
