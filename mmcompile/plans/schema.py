"""The plan file: a versioned JSON written from dataclasses, checked when loaded and against the
model it is applied to. Every error names what does not fit.

    {"version": 1,
     "model": {"model_type": "qwen2_5_vl", "layers": 28, "heads_q": 28, "heads_kv": 4, "head_dim": 128,
               "fingerprint": "<sha256 of the attention config>"},
     "created": "2026-12-01T21:00:00Z", "search": {...settings...}, "calibration": [{...}, ...],
     "layers": [{"layer": 0, "heads": [{"head": 0, "inter": "q-boundary",
                                        "intra": [["text", {"type": "ashape", "sink": 128, "local": 2048}], ...],
                                        "scores": {...candidate: [[budget, recall, cost], ...]}}, ...]}, ...],
     "content_hash": "<sha256 of everything above>"}

``scores`` keeps each candidate's recall and cost at several budgets, so a recall target can be
chosen when loading (``mmcompile.search.retarget``).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from typing import Optional

from .codec import PatternError, head_from_dict, head_to_dict, layer_arg

PLAN_VERSION = 1


class PlanError(ValueError):
    """A plan that cannot be used: malformed, tampered with, too new, or made for another model."""


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The attention shape a plan was made for."""

    model_type: str
    layers: int
    heads_q: int
    heads_kv: int
    head_dim: int

    @property
    def fingerprint(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def of_config(cls, config) -> "ModelShape":
        """From a transformers config (its text config for a VLM)."""
        text = getattr(config, "text_config", None) or config
        heads = text.num_attention_heads
        return cls(config.model_type, text.num_hidden_layers, heads, getattr(text, "num_key_value_heads", heads),
                   getattr(text, "head_dim", None) or text.hidden_size // heads)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per layer, one HeadPattern per query head, for the model of ``model``."""

    model: ModelShape
    layers: dict  # layer index -> tuple of HeadPattern (one per query head)
    created: str = ""
    search: dict = dataclasses.field(default_factory=dict)
    calibration: list = dataclasses.field(default_factory=list)
    scores: dict = dataclasses.field(default_factory=dict)  # (layer, head) -> candidate scores

    def __post_init__(self):
        for layer, heads in self.layers.items():
            if not 0 <= layer < self.model.layers:
                raise PlanError(f"plan lists layer {layer}, but its model has {self.model.layers} layers")
            if len(heads) != self.model.heads_q:
                raise PlanError(f"plan layer {layer} has {len(heads)} heads, "
                                f"its model {self.model.heads_q} query heads")

    def op_arg(self, layer: int) -> str:
        """The op's ``plan`` argument for ``layer`` ("" when the plan leaves it to the online policy)."""
        return layer_arg(self.layers[layer]) if layer in self.layers else ""

    def check_fits(self, layer: int, heads_q: int, heads_kv: int, head_dim: int) -> None:
        """Raise PlanError unless one rewritten attention call fits this plan."""
        m = self.model
        if (heads_q, heads_kv, head_dim) != (m.heads_q, m.heads_kv, m.head_dim):
            raise PlanError(f"the plan was made for {m.model_type} ({m.heads_q} query / {m.heads_kv} KV heads, "
                            f"head dim {m.head_dim}); attention layer {layer} has {heads_q} / {heads_kv} heads, "
                            f"head dim {head_dim}")
        if not 0 <= layer < m.layers:
            raise PlanError(f"attention layer {layer} is outside the plan's {m.layers} layers ({m.model_type})")

    def for_call(self, layer: int, heads_q: int, heads_kv: int, head_dim: int, rank_world=None) -> "Plan":
        """The plan one rewritten attention call runs: this one, or this rank's slice of it under
        tensor parallelism (``ranks.plan_for_call``); PlanError when neither fits."""
        from .ranks import plan_for_call

        return plan_for_call(self, layer, heads_q, heads_kv, head_dim, rank_world)

    def check_depth(self, layers) -> None:
        """Raise PlanError if the model has another number of decoder layers (None: unknown)."""
        if layers is not None and int(layers) != self.model.layers:
            raise PlanError(f"the plan was made for {self.model.model_type} with {self.model.layers} decoder layers; "
                            f"the model has {int(layers)}")

    def to_json(self) -> dict:
        model = {**dataclasses.asdict(self.model), "fingerprint": self.model.fingerprint}
        body = {"version": PLAN_VERSION, "model": model,
                "created": self.created or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "search": self.search, "calibration": self.calibration,
                "layers": [{"layer": layer, "heads": [dict(head_to_dict(p), head=h,
                                                           scores=self.scores.get((layer, h), {}))
                                                      for h, p in enumerate(heads)]}
                           for layer, heads in sorted(self.layers.items())]}
        return dict(body, content_hash=_hash(body))


def _hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_plan(plan: Plan, path) -> None:
    with open(path, "w") as f:
        json.dump(plan.to_json(), f, indent=1, sort_keys=True)


def load_plan(path, expect: Optional[ModelShape] = None) -> Plan:
    """Read and check a plan file (and, with ``expect``, that it was made for that model)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PlanError(f"cannot read plan {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), int):
        raise PlanError(f"{path} is not a plan file (no integer 'version')")
    if data["version"] > PLAN_VERSION:
        raise PlanError(f"{path} has plan version {data['version']}; this mmcompile reads up to {PLAN_VERSION}")
    body = {k: v for k, v in data.items() if k != "content_hash"}
    if data.get("content_hash") != _hash(body):
        raise PlanError(f"{path}: content hash does not match its contents (edited by hand or truncated?)")
    try:
        model = dict(data["model"])
        fingerprint = model.pop("fingerprint", None)
        shape = ModelShape(**model)
        if fingerprint != shape.fingerprint:
            raise PlanError(f"{path}: model fingerprint {fingerprint} does not match its model fields")
        layers, scores = {}, {}
        for entry in data["layers"]:
            layer = int(entry["layer"])
            heads = sorted(entry["heads"], key=lambda h: h["head"])
            if [h["head"] for h in heads] != list(range(len(heads))):
                raise PlanError(f"{path}: layer {layer} heads are not 0..{len(heads) - 1}")
            layers[layer] = tuple(head_from_dict(h, f"{path} layer {layer} head {h['head']}") for h in heads)
            scores.update({(layer, h["head"]): h.get("scores", {}) for h in heads})
        plan = Plan(shape, layers, data.get("created", ""), data.get("search", {}), data.get("calibration", []), scores)
    except PatternError as e:
        raise PlanError(str(e)) from None
    except (KeyError, TypeError) as e:
        raise PlanError(f"{path}: malformed plan ({type(e).__name__}: {e})") from None
    if expect is not None and expect != shape:
        raise PlanError(f"{path} was made for {shape}, not for this model ({expect})")
    return plan
