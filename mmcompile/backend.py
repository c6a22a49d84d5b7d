"""The ``mminference`` torch.compile backend, registered through the ``torch_dynamo_backends``
entry point (``pyproject.toml``), so ``torch.compile(model, backend="mminference")`` needs no import.

Per graph Dynamo hands over:
  1. ``options`` -> one ``BackendConfig`` (unknown keys rejected, with the valid ones listed);
  2. a copy of the graph (the original is never mutated: it is what we fall back to);
  3. the passes of ``mmcompile.passes.PIPELINE`` in order, each ``(gm, config) -> PassResult``;
     an exception in one warns, naming the pass, and the unmodified graph is compiled instead
     (``strict=True`` re-raises);
  4. dumps (``dump_dir`` / ``MMINFERENCE_DUMP_DIR``, structured trace) and a ``GraphReport``;
  5. Inductor (``compile_fx``), or the rewritten ``gm.forward`` with ``debug_uncompiled=True``.

``MMInferenceBackend(options)`` is the same backend as an object with its own ``report``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import warnings
from typing import Any, Optional

import torch
import torch.fx as fx
from torch._dynamo.exc import RestartAnalysis

from mmcompile.config import BackendConfig, config_from_options
from mmcompile.report import GraphDump, GraphReport, Report, entries_from_sites, last_report
from mmcompile.spelling import GENERATE_HINT, in_compiled_wrapper

log = logging.getLogger(__name__)
_serial = itertools.count()


def _compile_id() -> str:
    compile_id = torch._guards.CompileContext.current_compile_id()
    return str(compile_id) if compile_id is not None else "eager"


def _inductor(gm: fx.GraphModule, example_inputs, mode: Optional[str]):
    from torch._inductor.compile_fx import compile_fx

    # Mode options go in as per-compile config patches, never as global Inductor config.
    patches = torch._inductor.list_mode_options(mode) if mode not in (None, "default") else None
    return compile_fx(gm, example_inputs, config_patches=patches)


class MMInferenceBackend:
    """The backend as an inspectable object: ``torch.compile(m, backend=MMInferenceBackend({...}))``,
    then ``backend.report``. ``options`` given to ``torch.compile`` take precedence."""

    def __init__(self, options: Optional[dict] = None, report: Optional[Report] = None):
        self.options = options
        self.report = report if report is not None else Report()

    def __call__(self, gm: fx.GraphModule, example_inputs, *, options: Optional[dict] = None,
                 mode: Optional[str] = None, **kwargs: Any):
        config = config_from_options(options if options is not None else self.options)
        return compile_graph(gm, example_inputs, config, self.report, mode)


def mminference_backend(gm: fx.GraphModule, example_inputs, *, options: Optional[dict] = None,
                        mode: Optional[str] = None, **kwargs: Any):
    """Dynamo backend: (graph, example inputs) -> compiled callable. Reports go to ``last_report()``."""
    return compile_graph(gm, example_inputs, config_from_options(options), last_report(), mode)


def compile_graph(gm: fx.GraphModule, example_inputs, config: BackendConfig, report: Report,
                  mode: Optional[str] = None):
    """Rewrite a copy of ``gm`` (falling back to ``gm`` itself on an internal error), record it in
    ``report``, then compile it with Inductor or return it as is (``debug_uncompiled``)."""
    import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference.* for the compiled graph)
    from mmcompile.runtime import track

    tag = f"mminference-{next(_serial)}"  # routes the statistics of this graph's ops to its report
    graph = GraphReport(index=len(report.graphs), compile_id=_compile_id(), tag=tag, stats=track(tag))
    report.graphs.append(graph)
    dump = GraphDump(config.dump_dir, graph)
    work = _rewrite(gm, config, graph, dump)
    dump.table(graph)
    log.info("mminference graph %s: %d attention nodes, %d rewritten", graph.compile_id,
             len(graph.entries), len(graph.rewritten))
    log.info("mminference: %s", report.summary())
    if graph.rewritten and in_compiled_wrapper():
        report.note(GENERATE_HINT)
    for entry in graph.skipped:
        if entry.kind is not None and entry.kind.name == "GRAPH_VALUE":  # dynamic shapes we cannot rewrite
            report.note(f"attention left as SDPA: {entry.reason} (the report lists each call)")

    if config.debug_uncompiled:
        return _publishing_layout(gm, work.forward)
    try:
        if work is gm:
            return _publishing_layout(gm, _inductor(gm, example_inputs, mode))
        try:
            return _publishing_layout(gm, _inductor(work, example_inputs, mode))
        except RestartAnalysis:
            raise
        except Exception as e:  # noqa: BLE001 - Inductor choked on our rewrite: compile the original
            if config.strict:
                raise
            _fall_back(graph, "inductor on the rewritten graph", e)
            return _publishing_layout(gm, _inductor(gm, example_inputs, mode))
    except RestartAnalysis:
        # Dynamo's control flow, not a failure: with dynamic=True Inductor asks Dynamo to trace the
        # frame again with the scale floats specialised (TensorifyScalarRestartAnalysis); the new
        # trace comes back here as a new graph, so this attempt leaves the report.
        report.graphs.remove(graph)
        raise


def _publishing_layout(gm: fx.GraphModule, compiled):
    """Wrap the compiled graph so that, when its placeholders carry modality information
    (``modality_source.modality_inputs``: input_ids and its placeholder compares, mm_token_type_ids,
    grids, video frames, images, multimodal rotary positions), each call publishes it for the
    rewritten attention of later graphs (ARCHITECTURE "Where the modality layout comes from", source 2). The graph itself is not changed."""
    from mmcompile import annotate
    from mmcompile.passes.modality_source import modality_inputs

    found = modality_inputs(gm)
    if found is None:
        return compiled

    def run(*args):  # Dynamo calls the backend's callable with the graph inputs unpacked
        if found.input_ids is not None:  # first: a graph without compares begins a new forward
            annotate.publish_input_ids(args[found.input_ids], found.tokens)
        if found.mm_token_type_ids is not None:
            annotate.publish_mm_token_type_ids(args[found.mm_token_type_ids])
        for kind, position, merge in found.grids:
            annotate.publish_grid(kind, args[position], merge)
        if found.video_pixels is not None:
            annotate.publish_video_frames(args[found.video_pixels])
        if found.mrope_positions is not None:
            annotate.publish_mrope_positions(args[found.mrope_positions])
        if found.image_pixels is not None:
            annotate.publish_images(args[found.image_pixels].shape[0])
        if found.image_features:
            tokens = tuple(args[i].shape[0] for i in found.image_features)
            annotate.publish_images(len(tokens), tokens)
        return compiled(*args)
    return run


def _rewrite(gm: fx.GraphModule, config: BackendConfig, graph: GraphReport, dump: GraphDump) -> fx.GraphModule:
    """The passes of ``PIPELINE`` on a copy of ``gm``; ``gm`` itself when one of them fails."""
    from mmcompile import passes

    stage = "copy"
    try:
        work = _copy(gm)
        passes.state(work)["op_options"] = config.runtime_options(graph.tag).op_kwargs()
        if config.plan is not None:
            from mmcompile.search.retarget import load_for_target

            passes.state(work)["plan"] = load_for_target(config.plan, config.recall)
        dump.code("original", work)
        for stage in passes.PIPELINE:
            graph.passes.append(getattr(passes, stage)(work, config))
            dump.code(f"after_{stage}", work)
        graph.entries = entries_from_sites(passes.state(work)["sites"])
        return work
    except Exception as e:  # noqa: BLE001 - any internal error: fall back to the unmodified graph
        from mmcompile.plans import PlanError

        if config.strict or isinstance(e, PlanError):  # a plan that does not fit is the user's error
            raise
        _fall_back(graph, f"pass '{stage}'", e)
        return gm


def _fall_back(graph: GraphReport, stage: str, error: Exception) -> None:
    graph.fallback = f"{stage}: {type(error).__name__}: {error}"
    graph.entries = []  # nothing of ours is in the compiled graph
    warnings.warn(f"mminference: {stage} failed ({type(error).__name__}: {error}); compiling the unmodified "
                  "graph (options={'strict': True} re-raises)", RuntimeWarning, stacklevel=3)
    log.debug("%s failed", stage, exc_info=True)


def _copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule with a deep-copied graph (node meta dicts copied, fake values shared) over the
    same parameters and buffers: passes may edit it freely, ``gm`` stays the fallback."""
    from mmcompile.passes._types import META_KEY

    new = fx.GraphModule(gm, copy.deepcopy(gm.graph), class_name=type(gm).__name__)
    new.meta = {k: v for k, v in gm.meta.items() if k != META_KEY}
    return new
