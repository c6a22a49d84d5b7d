"""HeadPattern <-> plain data, and one layer's patterns as the op's ``plan`` string argument.

The argument is compact JSON: ``[{"inter": "q-boundary", "intra": [["text", {"type": "ashape",
"sink": 128, "local": 2048}], ...]}, ...]``, one entry per query head. Carrying the layer's patterns
in the graph (not a path or a key) keeps an exported or cached graph self-contained.
"""

from __future__ import annotations

import dataclasses
import functools
import json

from mmcompile.patterns.specs import INTER_TYPES, INTRA_TYPES, HeadPattern


class PatternError(ValueError):
    """A pattern entry that names an unknown type or parameter, or a bad value."""


def intra_to_dict(pattern) -> dict:
    return {"type": type(pattern).__name__.lower(), **dataclasses.asdict(pattern)}


def intra_from_dict(entry: dict, where: str):
    entry = dict(entry)
    kind = entry.pop("type", None)
    cls = INTRA_TYPES.get(kind)
    if cls is None:
        raise PatternError(f"{where}: unknown pattern type {kind!r}; known: {sorted(INTRA_TYPES)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        raise PatternError(f"{where}: {kind} has no parameter(s) {unknown}; its parameters: {sorted(fields)}")
    for name, value in entry.items():
        default = fields[name].default
        if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, type(default)) or \
                (isinstance(value, int) and not isinstance(value, bool) and value < 0):
            raise PatternError(f"{where}: {kind}.{name} = {value!r} (expected a non-negative {type(default).__name__})")
    return cls(**entry)


def head_to_dict(head: HeadPattern) -> dict:
    out = {"inter": head.inter, "intra": [[selector, intra_to_dict(p)] for selector, p in head.intra]}
    if head.interchangeable:  # (absent when empty: plans and op arguments written before it read the same)
        out["interchangeable"] = list(head.interchangeable)
    return out


def head_from_dict(entry: dict, where: str) -> HeadPattern:
    if entry.get("inter") not in INTER_TYPES:
        raise PatternError(f"{where}: unknown inter-modality type {entry.get('inter')!r}; known: {INTER_TYPES}")
    intra = entry.get("intra")
    if not isinstance(intra, list) or not intra:
        raise PatternError(f"{where}: 'intra' must be a non-empty list of [selector, pattern] pairs")
    either = entry.get("interchangeable", [])
    if not isinstance(either, list) or not all(isinstance(m, str) for m in either):
        raise PatternError(f"{where}: 'interchangeable' must be a list of query modality names, got {either!r}")
    return HeadPattern(entry["inter"], tuple((str(selector), intra_from_dict(p, f"{where} {selector}"))
                                            for selector, p in intra), tuple(either))


def layer_arg(patterns) -> str:
    """The op's ``plan`` argument for one layer."""
    return json.dumps([head_to_dict(p) for p in patterns], separators=(",", ":"), sort_keys=True)


@functools.lru_cache(maxsize=256)
def patterns_from_arg(arg: str) -> tuple:
    """The layer's HeadPatterns from the op's ``plan`` argument (a pure function of the string,
    cached: every call of a layer passes the same string)."""
    try:
        entries = json.loads(arg)
    except json.JSONDecodeError as e:
        raise PatternError(f"plan argument is not JSON: {e}") from None
    if not isinstance(entries, list):
        raise PatternError("plan argument must be a list of head patterns")
    return tuple(head_from_dict(e, f"plan head {h}") for h, e in enumerate(entries))
