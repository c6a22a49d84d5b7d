"""Proves that a boolean SDPA mask built in the graph is the plain causal mask, optionally AND a 2-D
key-padding input: the analysis that lets the rewrite drop HF's materialized [B,1,S,S] mask.

Under torch.compile, transformers' ``sdpa_mask`` (non-vmap path) builds, for an all-ones or any
``attention_mask`` (Dynamo graph; ATen spellings in exported graphs)::

    pad = attention_mask.to(bool)                       # placeholder [B, Nk]
    q_idx = (arange(Nq) + q_off)[None, None, :, None]   # kv_idx likewise on the last axis
    m = new_ones((), bool) & (kv_idx <= q_idx) & pad[b_idx, kv_idx]
    mask = m.expand(B, -1, Nq, Nk)

The proof is an abstract interpretation over symbolic index values, not a sample: every tensor in
the mask's cone must be an index ramp ``idx[axis] + offset``, the padding input, or a conjunction of
atoms ``ramp <= ramp`` / ``pad[ramp, ramp]``. It holds for every size (SymInts included) and costs
nothing at 1M tokens. Anything else (sliding windows, chunked or packed masks, vmap-built masks,
float masks) is "not provably causal", with the op that stopped the proof.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Optional

import torch
import torch.fx as fx

from ._fx import ancestors, fake, same

aten = torch.ops.aten


class NotProvable(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Ramp:  # integer tensor whose value at a multi-index I is I[axis] + offset (axis < 0)
    axis: int
    offset: Any
    length: Any
    ndim: int


@dataclasses.dataclass(frozen=True)
class Pad:  # the 2-D key-padding placeholder, possibly converted to bool
    node: fx.Node
    is_bool: bool


@dataclasses.dataclass(frozen=True)
class Pred:  # boolean tensor: the conjunction of atoms ("le", a, b) and ("pad", node, b, k)
    atoms: tuple


@dataclasses.dataclass
class CausalMaskProof:
    key_padding: Optional[fx.Node]  # the [B, Nk] placeholder to check at run time, or None
    cone: list  # the nodes building the mask (dead once every SDPA user is rewritten)


_KIND = {
    torch.arange: "arange", aten.arange.default: "arange", aten.arange.start: "arange",
    aten.arange.start_step: "arange", operator.add: "add", aten.add.Tensor: "add",
    aten.add.Scalar: "add", operator.sub: "sub", aten.sub.Tensor: "sub", operator.getitem: "getitem",
    aten.index.Tensor: "index", aten.unsqueeze.default: "unsqueeze", torch.unsqueeze: "unsqueeze",
    aten.expand.default: "expand", aten.new_ones.default: "new_ones", operator.le: "le",
    operator.lt: "lt", operator.ge: "ge", operator.gt: "gt", aten.le.Tensor: "le", aten.lt.Tensor: "lt",
    aten.ge.Tensor: "ge", aten.gt.Tensor: "gt", operator.and_: "and", aten.__and__.Tensor: "and",
    aten.bitwise_and.Tensor: "and", aten.logical_and.default: "and", torch.logical_and: "and",
    aten.to.device: "to", aten.to.dtype: "to", aten.to.dtype_layout: "to", aten._to_copy.default: "to",
    aten.alias.default: "same", aten.clone.default: "same",
}
_METHOD_KIND = {"to": "to", "expand": "expand", "new_ones": "new_ones", "unsqueeze": "unsqueeze",
                "add": "add", "__and__": "and", "logical_and": "and", "bitwise_and": "and",
                "contiguous": "same", "clone": "same", "bool": "to", "le": "le", "lt": "lt",
                "ge": "ge", "gt": "gt",
                # torch 2.11's Dynamo records operators on tensors as dunder methods (``x <= y``)
                "__add__": "add", "__le__": "le", "__lt__": "lt", "__ge__": "ge", "__gt__": "gt"}


def _dtype_of(node: fx.Node):
    for a in list(node.args[1:]) + list(node.kwargs.values()):
        if isinstance(a, torch.dtype):
            return a
    return torch.bool if node.op == "call_method" and node.target == "bool" else None


def _unsqueeze(r: Ramp, dim: int) -> Ramp:
    dim = dim + r.ndim + 1 if dim < 0 else dim
    pos = r.axis + r.ndim  # positive axis
    pos = pos + 1 if dim <= pos else pos
    return Ramp(pos - (r.ndim + 1), r.offset, r.length, r.ndim + 1)


def _index_tuple(r: Ramp, items) -> Ramp:
    if not all(i is None or i is Ellipsis or i == slice(None) for i in items):
        raise NotProvable("a ramp indexed by something other than full slices and None")
    consumed = sum(1 for i in items if isinstance(i, slice))
    expanded = []
    for i in items:
        expanded.extend([slice(None)] * (r.ndim - consumed) if i is Ellipsis else [i])
    expanded += [slice(None)] * (r.ndim - sum(1 for i in expanded if isinstance(i, slice)))
    pos, src, new_pos = r.axis + r.ndim, 0, None
    for out_pos, i in enumerate(expanded):
        if isinstance(i, slice):
            if src == pos:
                new_pos = out_pos
            src += 1
    return Ramp(new_pos - len(expanded), r.offset, r.length, len(expanded))


def _le(a, b, shift=0) -> Pred:  # a + shift <= b
    if not (isinstance(a, Ramp) and isinstance(b, Ramp)):
        raise NotProvable("a comparison that is not between two index ramps")
    return Pred((("le", dataclasses.replace(a, offset=a.offset + shift), b),))


class _Interpreter:
    def __init__(self):
        self.values: dict[fx.Node, Any] = {}

    def value(self, x):
        if isinstance(x, fx.Node):
            if x not in self.values:
                self.values[x] = self.eval(x)
            return self.values[x]
        return x

    def eval(self, node: fx.Node):
        val = fake(node)
        if node.op == "placeholder":
            if isinstance(val, torch.Tensor) and val.dim() == 2:
                return Pad(node, val.dtype == torch.bool)
            if isinstance(val, (int, torch.SymInt)):
                return val
            raise NotProvable(f"mask depends on input {node.name} that is not a 2-D padding mask")
        if isinstance(val, torch.SymInt) or (node.op != "placeholder" and isinstance(val, int)):
            return val
        kind = (_METHOD_KIND.get(node.target) if node.op == "call_method"
                else _KIND.get(node.target) if node.op == "call_function" else None)
        if kind is None:
            raise NotProvable(f"mask op {node.op} {getattr(node.target, '__name__', node.target)} ({node.name})")
        args = [fx.node.map_arg(a, self.value) for a in node.args]
        kwargs = {k: fx.node.map_arg(v, self.value) for k, v in node.kwargs.items()}
        return getattr(self, "_" + kind)(node, args, kwargs)

    def _arange(self, node, args, kwargs):
        start = args[0] if len(args) > 1 else kwargs.get("start", 0)
        if (args[2] if len(args) > 2 else kwargs.get("step", 1)) != 1:
            raise NotProvable(f"{node.name}: arange with a step")
        return Ramp(-1, start, fake(node).shape[0], 1)

    def _add(self, node, args, kwargs, sign=1):
        a, b = args[0], args[1]
        if kwargs.get("alpha", 1) != 1:
            raise NotProvable("add with alpha")
        if isinstance(a, Ramp) and isinstance(b, (int, torch.SymInt)):
            return dataclasses.replace(a, offset=a.offset + sign * b)
        if sign == 1 and isinstance(b, Ramp) and isinstance(a, (int, torch.SymInt)):
            return dataclasses.replace(b, offset=b.offset + a)
        raise NotProvable(f"{node.name}: arithmetic other than ramp + integer")

    def _sub(self, node, args, kwargs):
        return self._add(node, args, kwargs, sign=-1)

    def _getitem(self, node, args, kwargs):
        src, items = args
        items = items if isinstance(items, tuple) else (items,)
        if isinstance(src, Ramp):
            return _index_tuple(src, items)
        return self._index(node, [src, list(items)], kwargs)

    def _index(self, node, args, kwargs):
        src, items = args
        if not (isinstance(src, Pad) and src.is_bool and len(items) == 2
                and all(isinstance(i, Ramp) for i in items)):
            raise NotProvable(f"{node.name}: indexing other than pad[batch_ramp, kv_ramp]")
        return Pred((("pad", src.node, items[0], items[1]),))

    def _unsqueeze(self, node, args, kwargs):
        if not isinstance(args[0], Ramp):
            raise NotProvable(f"{node.name}: unsqueeze of a non-ramp")
        return _unsqueeze(args[0], args[1] if len(args) > 1 else kwargs["dim"])

    def _to(self, node, args, kwargs):
        src, dtype = args[0], _dtype_of(node)
        if isinstance(src, Pad):
            return Pad(src.node, src.is_bool or dtype == torch.bool)
        if isinstance(src, Pred) and dtype in (None, torch.bool):
            return src
        if isinstance(src, Ramp) and (dtype is None or not (dtype.is_floating_point or dtype == torch.bool)):
            return src
        raise NotProvable(f"{node.name}: conversion to {dtype}")

    def _same(self, node, args, kwargs):
        return args[0]

    def _expand(self, node, args, kwargs):
        if isinstance(args[0], (Pred, Ramp)):
            return args[0]  # right-aligned broadcasting keeps the negative axes
        raise NotProvable(f"{node.name}: expand of the raw padding mask")

    def _new_ones(self, node, args, kwargs):
        if fake(node).dtype != torch.bool:
            raise NotProvable(f"{node.name}: non-bool new_ones")
        return Pred(())

    def _le(self, node, args, kwargs):
        return _le(args[0], args[1])

    def _lt(self, node, args, kwargs):
        return _le(args[0], args[1], shift=1)

    def _ge(self, node, args, kwargs):
        return _le(args[1], args[0])

    def _gt(self, node, args, kwargs):
        return _le(args[1], args[0], shift=1)

    def _and(self, node, args, kwargs):
        if not all(isinstance(a, Pred) for a in args[:2]):
            raise NotProvable(f"{node.name}: '&' of a non-predicate")
        return Pred(args[0].atoms + args[1].atoms)


def prove_causal_mask(mask: fx.Node, q_val, k_val) -> CausalMaskProof:
    """Raise NotProvable unless ``mask[b, h, i, j] == (j <= i + Nk - Nq) & pad[b, j]`` for all
    indices (pad optional). q_val, k_val: fake q [B,Hq,Nq,D] and k [B,Hkv,Nk,D].

    The pad may be longer than Nk (only its first Nk columns are read): Dynamo gives the
    attention_mask length its own symbol, with no guard tying it to the sequence length."""
    batch, n_q, n_k = q_val.shape[0], q_val.shape[2], k_val.shape[2]
    m = fake(mask)
    if not 2 <= m.dim() <= 4 or not (same(m.shape[-2], n_q) and same(m.shape[-1], n_k)):
        raise NotProvable(f"mask shape {tuple(m.shape)} does not broadcast as [B, H, Nq, Nk]")
    pred = _Interpreter().value(mask)
    if not isinstance(pred, Pred):
        raise NotProvable("mask is not a boolean predicate of indices")
    causal = [a for a in pred.atoms if a[0] == "le"]
    pads = {a[1] for a in pred.atoms if a[0] == "pad"}
    if not causal:
        raise NotProvable("mask has no causal term")
    for _, kv, q in causal:
        if not (kv.axis == -1 and q.axis == -2 and same(kv.length, n_k) and same(q.length, n_q)
                and same(q.offset - kv.offset, n_k - n_q)):
            raise NotProvable("the index comparison is not the (bottom-right) causal diagonal")
    for _, node, b, kv in (a for a in pred.atoms if a[0] == "pad"):
        shape = fake(node).shape
        if not (len(pads) == 1 and b.axis == -4 and same(b.offset, 0) and same(b.length, batch)
                and kv.axis == -1 and same(kv.offset, 0) and same(shape[0], batch)):
            raise NotProvable("the padding term is not pad[b, kv] of a [B, >= Nk] mask")
    return CausalMaskProof(next(iter(pads)) if pads else None, ancestors(mask))
