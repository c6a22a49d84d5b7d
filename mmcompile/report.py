"""What the ``mminference`` backend did, kept as data to inspect after compiling and running.

    compiled = torch.compile(model, backend="mminference"); compiled(**inputs)
    report = mmcompile.report.last_report()
    report.rewritten, report.skipped_reasons(), report.runtime()   # or print(report.table())

One ``GraphReport`` per graph Dynamo handed to the backend: every attention node found (rewritten or
skipped, why, layer, heads, modality source), the passes' results, a fallback if one happened, and
the runtime counters of the op calls made by that graph (sparse/dense calls and why, density).
``last_report()`` accumulates every graph compiled by ``backend="mminference"`` since the last
``reset_report()``; ``MMInferenceBackend`` objects keep their own ``Report``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import warnings
from typing import Optional

from mmcompile.runtime import RuntimeStats

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AttentionEntry:
    """One attention node of one graph."""

    node: str
    layer: Optional[int]
    heads: str  # "query/kv"
    shape: str  # "Nq x Nk x D"
    status: str  # "rewritten" | "skipped"
    causal_form: str
    gqa_form: str
    modality_source: str
    reason: str  # why skipped ("" when rewritten): the detail
    kind: object = None  # why skipped, as a ``passes.SkipKind`` (None when rewritten)


class _EntryViews:
    """``rewritten`` / ``skipped`` views over an ``entries`` list (per graph or over all graphs)."""

    @property
    def rewritten(self) -> list:
        return [e for e in self.entries if e.status == "rewritten"]

    @property
    def skipped(self) -> list:
        return [e for e in self.entries if e.status != "rewritten"]


@dataclasses.dataclass
class GraphReport(_EntryViews):
    index: int
    compile_id: str
    tag: str  # the ``tag`` argument of this graph's ops: routes their statistics here
    stats: RuntimeStats
    entries: list = dataclasses.field(default_factory=list)
    passes: list = dataclasses.field(default_factory=list)  # PassResult of each pass that ran
    fallback: Optional[str] = None  # "pass: error" when the unmodified graph was compiled

    def table(self) -> str:
        head = f"### graph {self.index} (compile id {self.compile_id}, tag {self.tag})\n\n"
        if self.fallback:
            head += f"**fallback**: compiled the unmodified graph after `{self.fallback}`\n\n"
        if not self.entries:
            return head + "no attention nodes\n"
        rows = ["| node | layer | heads q/kv | Nq x Nk x D | status | causal form | GQA | modality | reason |",
                "|---|---|---|---|---|---|---|---|---|"]
        for e in self.entries:
            rows.append(f"| {e.node} | {'' if e.layer is None else e.layer} | {e.heads} | {e.shape} | "
                        f"{e.status} | {e.causal_form} | {e.gqa_form} | {e.modality_source} | {e.reason} |")
        return head + "\n".join(rows) + "\n"


def _shape(site) -> str:
    return f"{site.n_q} x {site.n_k} x {site.head_dim}"


def entries_from_sites(sites) -> list:
    return [AttentionEntry(node=s.name, layer=s.layer, heads=f"{s.heads_q}/{s.heads_kv}", shape=_shape(s),
                           status="rewritten" if s.status == "rewritten" else "skipped",
                           causal_form=s.causal_form or "", gqa_form=s.gqa_form or "",
                           modality_source=s.modality_source if s.status == "rewritten" else "",
                           reason="" if s.status == "rewritten" else (s.reason or "matched, not rewritten"),
                           kind=None if s.status == "rewritten" else s.kind)
            for s in sites]


class Report(_EntryViews):
    """Every graph the backend compiled (since the last reset), the runtime counters of its ops and
    the notes the backend made for the user (each also warned once)."""

    def __init__(self):
        self.graphs: list[GraphReport] = []
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        """Record ``text`` and warn with it, the first time only."""
        if text not in self.notes:
            self.notes.append(text)
            warnings.warn(f"mminference: {text}", UserWarning, stacklevel=2)

    def summary(self) -> str:
        """One line, before the table: how much of the attention the rewrite reached."""
        if not self.graphs:
            return ("0 graphs reached the mminference backend (nothing compiled since the last reset; "
                    "for generate(): model.compile(backend='mminference'))")
        from mmcompile.passes import SkipKind

        # Bidirectional attention (vision towers) is not the rewrite's target: counted apart.
        bidirectional = [e for e in self.skipped if e.kind is SkipKind.NON_CAUSAL]
        found, rewritten = len(self.entries) - len(bidirectional), len(self.rewritten)
        share = f"{100 * rewritten // found}%" if found else "n/a"
        line = f"{found} attention calls, {rewritten} rewritten, {found - rewritten} left: {share}"
        kinds = collections.Counter(e.kind.value if e.kind is not None else e.reason
                                    for e in self.skipped if e.kind is not SkipKind.NON_CAUSAL)
        if kinds:
            line += " (left: " + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()) + ")"
        if bidirectional:
            line += f"; {len(bidirectional)} bidirectional (vision) calls left as they are"
        return line

    @property
    def entries(self) -> list:
        return [e for g in self.graphs for e in g.entries]

    @property
    def fallbacks(self) -> list:
        return [g.fallback for g in self.graphs if g.fallback]

    def skipped_reasons(self) -> collections.Counter:
        return collections.Counter(e.reason for e in self.skipped)

    def skipped_kinds(self) -> collections.Counter:
        return collections.Counter(e.kind for e in self.skipped)

    def runtime(self) -> dict:
        """Op calls since compile (or the last ``reset_counters``): totals, reasons, calls per layer."""
        stats = [g.stats for g in self.graphs]
        records = [r for s in stats for r in s.records]
        sparse = [r.density for r in records if r.path == "sparse"]
        return {
            "sparse_calls": sum(s.sparse_calls for s in stats),
            "dense_calls": sum(s.dense_calls for s in stats),
            "reasons": sum((s.reasons for s in stats), collections.Counter()),  # DenseReason -> calls
            "mean_sparse_density": sum(sparse) / len(sparse) if sparse else None,
            "records": records,
        }

    def reset_counters(self) -> None:
        for g in self.graphs:
            g.stats.reset()

    def table(self) -> str:
        rt = self.runtime()
        density = "n/a" if rt["mean_sparse_density"] is None else f"{rt['mean_sparse_density']:.3f}"
        lines = [self.summary() + "\n",
                 *(f"note: {text}\n" for text in self.notes),
                 f"## mminference report: {len(self.graphs)} graphs, {len(self.entries)} attention nodes, "
                 f"{len(self.rewritten)} rewritten, {len(self.skipped)} skipped\n",
                 f"runtime: {rt['sparse_calls']} sparse calls (mean density {density}), "
                 f"{rt['dense_calls']} dense calls {_reasons(rt['reasons'])}\n"]
        layouts = dict.fromkeys((r.layout.source, r.layout.geometry, tuple(r.layout.tokens.items()),
                                 r.layout.frame_stride) for r in rt["records"] if r.layout is not None)
        lines += [f"layout: {source}; frame geometry: {geometry}; tokens {dict(tokens)}; frame stride {stride}\n"
                  for source, geometry, tokens, stride in layouts]
        lines += [g.table() for g in self.graphs if g.entries or g.fallback]
        return "\n".join(lines)


def _reasons(counter) -> dict:
    return {reason.value: calls for reason, calls in counter.items()}


_LAST = Report()


def last_report() -> Report:
    """The report of every graph compiled through ``backend="mminference"`` since ``reset_report()``."""
    return _LAST


def reset_report() -> Report:
    global _LAST
    _LAST = Report()
    return _LAST


# --- dumps ------------------------------------------------------------------------------------

def _readable(gm) -> str:
    try:
        return gm.print_readable(print_output=False, include_stride=True, include_device=True)
    except Exception:  # noqa: BLE001 - a graph print_readable cannot annotate still has code
        return gm.code


def _trace_artifact(name: str, payload) -> None:
    """Send a text artifact to PyTorch's structured trace (``TORCH_TRACE`` / tlparse); lazy when off."""
    import torch._logging

    torch._logging.trace_structured("artifact", metadata_fn=lambda: {"name": name, "encoding": "string"},
                                    payload_fn=payload, expect_trace_id=False)


class GraphDump:
    """Code of one graph before/after each pass and its report table: files under ``dump_dir``
    (``graph_<i>_<compile id>/NN_<stage>.py``, ``report.md``) when set, and structured-trace
    artifacts (``mminference_<stage>``, ``mminference_report``) always."""

    def __init__(self, dump_dir: Optional[str], graph: GraphReport):
        from pathlib import Path

        safe_id = "".join(c if c.isalnum() else "_" for c in graph.compile_id)
        self.dir = Path(dump_dir) / f"graph_{graph.index:03d}_{safe_id}" if dump_dir else None
        self.step = 0
        if self.dir is not None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                log.warning("mminference: no dumps, cannot create %s: %s", self.dir, e)
                self.dir = None

    def code(self, stage: str, gm) -> None:
        _trace_artifact(f"mminference_{stage}", lambda: _readable(gm))  # evaluated now, only if tracing
        self._write(f"{self.step:02d}_{stage}.py", lambda: _readable(gm))
        self.step += 1

    def table(self, graph: GraphReport) -> None:
        text = graph.table()
        _trace_artifact("mminference_report", lambda: text)
        self._write("report.md", lambda: text)

    def _write(self, name: str, text_fn) -> None:
        if self.dir is None:
            return
        try:
            (self.dir / name).write_text(text_fn())
        except OSError as e:  # a dump must never break compilation
            log.warning("mminference: could not write %s: %s", self.dir / name, e)
