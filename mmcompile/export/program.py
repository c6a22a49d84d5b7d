"""Export a language model's prefill with the backend's rewrite: an ExportedProgram whose causal
attention is ``torch.ops.mminference.prefill_attention``, fed the modality layout as an input.

    torch.export (dynamic sequence length)  ->  ep.module()
      -> the backend's passes (``mmcompile.passes.PIPELINE``, the same options as ``torch.compile``)
      -> bind_layout: every rewritten op reads the ``mm_token_type_ids`` input
      -> torch.export again: a clean program (signature, fake values) with the ops intact

Re-exporting the rewritten module, instead of editing ``ep.graph_module`` in place, keeps the graph
signature consistent with no bookkeeping of ours. The op stays one opaque node (it is a
``custom_op``): ``run_decompositions`` and AOTInductor keep it (``mmcompile/export/__init__.py``
says why it is not decomposed).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Optional

import torch
import torch.fx as fx

from mmcompile.config import config_from_options

from ._sym_minmax import provable_minmax_folded
from .signature import PrefillModule, PrefillSignature

FORMAT = 1  # of the "mminference.json" metadata stored with a program or package
META_FILE = "mminference.json"
LAYOUT_INPUT = "mm_token_type_ids"
_NOT_FOR_EXPORT = ("debug_uncompiled",)
MAX_LEN = 1 << 20  # default longest prefill of an export (tokens)


class ExportError(RuntimeError):
    """The model cannot be exported with sparse attention (nothing rewritten, or the ops got lost)."""


@dataclasses.dataclass
class ExportedPrefill:
    """An exported prefill: the program, its input signature, the tag of its ops' statistics and
    the report of the rewrite (which attention nodes became ops, and why others did not)."""

    program: torch.export.ExportedProgram
    signature: PrefillSignature
    tag: str
    report: object  # mmcompile.report.GraphReport

    def metadata(self) -> dict:
        import mmcompile

        return {"format": FORMAT, "mmcompile": mmcompile.__version__, "torch": torch.__version__,
                "tag": self.tag, "signature": dataclasses.asdict(self.signature),
                "rewritten_layers": sorted(e.layer for e in self.report.rewritten),
                "requires": "import mmcompile.ops (registers torch.ops.mminference.*) before loading"}


def export_prefill(model: torch.nn.Module, inputs_embeds: torch.Tensor, mm_token_type_ids: torch.Tensor, *,
                   attention_mask: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                   options: Optional[dict] = None, min_len: int = 16, max_len: int = MAX_LEN,
                   tag: Optional[str] = None) -> ExportedPrefill:
    """Export the prefill of ``model``'s language model (a VLM, a causal LM or the decoder itself:
    ``get_decoder()``) for any sequence length in [min_len, max_len], with sparse attention.
    ``mm_token_type_ids``: [B, N] modality ids, or [B, N, 3] with frame geometry (``signature.py``).

    The example inputs fix batch, hidden size, dtype and device, not the length. ``options`` are the
    backend's (``torch.compile(..., options=...)``): they become the ops' arguments. Raises
    ExportError when no attention is rewritten: a dense package is never produced silently."""
    from mmcompile.report import GraphDump, GraphReport
    from mmcompile.runtime import track

    config = _config(options)
    tag = tag or f"mminference-export-{uuid.uuid4().hex[:8]}"
    language_model = model.get_decoder() if hasattr(model, "get_decoder") else model
    if attention_mask is None:
        attention_mask = torch.ones(mm_token_type_ids.shape[:2], dtype=torch.long, device=inputs_embeds.device)
    signature = PrefillSignature.of(inputs_embeds, attention_mask, mm_token_type_ids, position_ids)
    args = signature.arrange(inputs_embeds, attention_mask, mm_token_type_ids, position_ids)
    dynamic = signature.dynamic_shapes(min_len, max_len)
    module = PrefillModule(language_model).eval()
    traced = _export(module, args, dynamic)
    gm = traced.module()  # a new module: rewriting it leaves ``traced`` as it was
    report = GraphReport(index=0, compile_id="export", tag=tag, stats=track(tag))
    _rewrite(gm, config, report, GraphDump(config.dump_dir, report))
    program = _export(gm, args, dynamic)
    _check_ops_kept(program, len(report.rewritten))
    return ExportedPrefill(program, signature, tag, report)


def _export(module: torch.nn.Module, args: tuple, dynamic: dict) -> torch.export.ExportedProgram:
    """Non-strict ``torch.export`` with a dynamic length. Provable ``min``/``max`` of sizes are
    folded while it traces: on torch 2.11, HF's ``repeat_kv`` reshape otherwise leaves the guard
    ``min(D*seq, g*D*seq) == D*seq`` that fails the Dim (``_sym_minmax.py`` says how)."""
    with torch.no_grad(), provable_minmax_folded():
        return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)


def _config(options: Optional[dict]):
    config = config_from_options(options)
    for name in _NOT_FOR_EXPORT:
        if (options or {}).get(name):
            raise ValueError(f"option {name!r} has no meaning for export")
    return config


def _rewrite(gm: fx.GraphModule, config, report, dump) -> None:
    """The backend's passes, in its order and with its options, then the layout binding. Unlike the
    backend there is no fallback: an export that fails says so."""
    from mmcompile import passes
    from mmcompile.report import entries_from_sites

    passes.state(gm)["op_options"] = config.runtime_options(report.tag).op_kwargs()
    if config.plan is not None:
        from mmcompile.plans import load_plan

        passes.state(gm)["plan"] = load_plan(config.plan)
    dump.code("exported", gm)
    for name in passes.PIPELINE:
        report.passes.append(getattr(passes, name)(gm, config))
        dump.code(f"after_{name}", gm)
    bound = bind_layout(gm, passes.state(gm)["sites"])
    dump.code("after_bind_layout", gm)
    report.entries = entries_from_sites(passes.state(gm)["sites"])
    dump.table(report)
    if not bound:
        reasons = sorted({e.reason for e in report.skipped}) or ["no scaled_dot_product_attention in the graph"]
        raise ExportError("no attention was rewritten to mminference ops (the program would be dense): "
                          + "; ".join(reasons) + ". Build the model with attn_implementation='sdpa'.")


def bind_layout(gm: fx.GraphModule, sites) -> int:
    """Make every rewritten op read the layout input (its ``modality_ids`` argument); returns the
    number of ops bound. The backend leaves that argument None (the layout arrives at run time)."""
    layout = next((n for n in gm.graph.nodes if n.op == "placeholder" and n.name == LAYOUT_INPUT), None)
    if layout is None:
        raise ExportError(f"the exported graph has no {LAYOUT_INPUT} input")
    bound = 0
    for site in sites:
        if site.status != "rewritten":
            continue
        args = list(site.node.args)
        if args[3] is not None:
            raise ExportError(f"{site.name}: the rewrite already gave this op a modality input ({args[3]})")
        args[3] = layout
        site.node.args = tuple(args)
        site.modality, site.modality_source = layout, f"export input {LAYOUT_INPUT}"
        bound += 1
    gm.recompile()
    return bound


def prefill_ops(program: torch.export.ExportedProgram) -> list:
    """The ``mminference::prefill_attention`` nodes of a program."""
    op = torch.ops.mminference.prefill_attention.default
    return [n for n in program.graph.nodes if n.op == "call_function" and n.target is op]


def _check_ops_kept(program, expected: int) -> None:
    found = len(prefill_ops(program))
    if found != expected:
        raise ExportError(f"re-export kept {found} of {expected} mminference ops")


def save_program(exported: ExportedPrefill, path) -> None:
    """``torch.export.save`` with the metadata (signature, tag) beside the program."""
    torch.export.save(exported.program, path, extra_files={META_FILE: json.dumps(exported.metadata())})


def read_metadata(text: str) -> dict:
    meta = json.loads(text)
    if meta.get("format") != FORMAT:
        raise ValueError(f"mminference metadata format {meta.get('format')!r}, this mmcompile reads {FORMAT}")
    return meta
