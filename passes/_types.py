"""Typed results the passes hand to each other (through ``gm.meta["mminference"]``) and to the report."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional

import torch.fx as fx

META_KEY = "mminference"


@dataclasses.dataclass
class PassResult:
    """What one pass did to one graph: the contract between a pass, the report and the tests."""

    name: str
    changed: bool = False
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


class SkipKind(enum.Enum):
    """Why an SDPA node is left alone (``AttentionSite.kind``; the detail is ``AttentionSite.reason``)."""

    NOT_4D = "not 4-D"
    DTYPE = "dtype"
    HEAD_DIM = "head dim"
    REQUIRES_GRAD = "requires grad"
    DROPOUT = "dropout"
    GRAPH_VALUE = "is_causal or scale is a graph value"
    TOP_LEFT_CAUSAL = "top-left causal"
    NON_CAUSAL = "non-causal"
    CAUSAL_AND_MASK = "is_causal with a mask"
    FLOAT_MASK = "float mask"
    MASK_NOT_PROVABLE = "mask not provably causal"
    GQA_WITHOUT_ENABLE = "GQA without enable_gqa"


@dataclasses.dataclass
class AttentionSite:
    """One SDPA node of the graph and what the passes decided about it."""

    node: fx.Node
    name: str
    layer: Optional[int]
    heads_q: Any = None
    heads_kv: Any = None
    head_dim: Any = None
    n_q: Any = None
    n_k: Any = None
    # Set by find_attention when the node is causal attention the op can compute.
    causal_form: Optional[str] = None  # "is_causal" | "hf_bool_mask" | "single_query"
    gqa_form: Optional[str] = None  # "enable_gqa" | "repeat_kv undone" | "none (MHA)"
    q: Optional[fx.Node] = None
    k: Optional[fx.Node] = None  # K/V with the KV heads (repeat_kv undone)
    v: Optional[fx.Node] = None
    scale: Any = None  # a float, or the node of a SymFloat (``dynamic=True``: see find_attention)
    key_padding: Optional[fx.Node] = None
    dead_candidates: list = dataclasses.field(default_factory=list)  # mask cone, repeat_kv nodes
    # Set by modality_source.
    modality: Optional[fx.Node] = None
    modality_source: str = "none (text-only)"
    # Outcome.
    status: str = "skipped"  # "matched" | "rewritten" | "skipped"
    kind: Optional[SkipKind] = None  # why skipped
    reason: str = ""  # the detail


def state(gm: fx.GraphModule) -> dict:
    """The per-graph scratch space of the pipeline: the rewritten ops' keyword arguments (the
    run-time options, ``RuntimeOptions.op_kwargs``; defaults when absent), attention sites."""
    return gm.meta.setdefault(META_KEY, {"op_options": {}, "sites": []})
