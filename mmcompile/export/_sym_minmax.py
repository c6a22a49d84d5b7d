"""Provable ``min``/``max`` of SymInts folded while ``torch.export`` traces: a workaround for torch
2.11 (pytorch/pytorch#165480, fixed in torch 2.13 by PR #185092).

The failure it prevents (torch 2.11, a GQA model, ``export_prefill``)::

    ConstraintViolationError: Not all values of seq ... 16 <= seq <= 8192 satisfy the generated guard
    min(64*seq, 256*seq) == 64*seq

How the guard arises, in order:

1. HF's ``repeat_kv`` (``transformers/integrations/sdpa_attention.py``; used whenever
   ``attention_mask`` is given, which an export always does) reshapes the
   ``[B, Hkv, g, S, D]`` expansion to ``[B, Hkv*g, S, D]``. Its fake value comes from
   ``torch._prims._collapse_view_helper``, whose merged stride is Python's
   ``min(stride, strides[idx])`` = ``min(D*S, g*D*S)``.
2. Non-strict ``torch.export`` replaces ``builtins.min``/``max`` for the whole trace
   (``torch/_export/non_strict_utils.py::_override_builtin_ops``), so even that torch-internal
   ``min`` of two SymInts becomes ``torch.sym_min``: a symbolic ``Min(D*S, g*D*S)``.
3. torch 2.11's sympy ``Min`` does not fold ``Min(a*x, b*x)`` for a size ``x`` (2.13's
   ``MinMaxBase._collapse_known_multiplicative_terms`` does).
4. Recording the node's ``tensor_meta`` asks whether the reshape is contiguous
   (``_prims_common.check_contiguous_sizes_strides``): ``Min(D*S, g*D*S) != D*S`` is decided from
   the example length, leaving the guard ``Eq(Min(D*S, g*D*S), D*S)``.
5. It is true for every length, but ``produce_guards`` checks a strict ``Dim("seq", min, max)`` by
   value ranges, where both sides span the same interval: not provable, so a violation.

No bound or multiple of the Dim makes 5 provable (any affine ``seq`` keeps both sides on one
interval). So during the export ``torch.sym_min``/``sym_max`` return an argument whenever it is
the minimum (maximum) for every length the program accepts (``statically_known_true``: decided on
the symbols' ranges, no guard added), else the symbolic expression as before; the value is the
same, only its spelling changes. Nothing is patched where torch's ``Min`` already folds
(``symbolic_minmax_folds``).
"""

from __future__ import annotations

import contextlib

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true


def symbolic_minmax_folds() -> bool:
    """True when this torch's symbolic Min/Max fold scaled terms of one size (torch >= 2.13)."""
    import sympy
    from torch.utils._sympy.functions import Max, Min

    x = sympy.Symbol("x", integer=True, positive=True)
    return Min(2 * x, 3 * x) == 2 * x and Max(2 * x, 3 * x) == 3 * x


def _provable(condition) -> bool:
    try:
        return statically_known_true(condition)
    except Exception:  # noqa: BLE001 - what cannot be decided is left to torch, as before
        return False


def _folding(original, pick_first):
    def fold(a, b):
        if _provable(pick_first(a, b)):
            return a
        if _provable(pick_first(b, a)):
            return b
        return original(a, b)

    fold.__wrapped__ = original
    return fold


@contextlib.contextmanager
def provable_minmax_folded():
    """While inside, ``torch.sym_min``/``torch.sym_max`` fold the provable cases (see the module
    docstring); a no-op on a torch that folds them itself."""
    if symbolic_minmax_folds():
        yield
        return
    saved = torch.sym_min, torch.sym_max
    torch.sym_min = _folding(saved[0], lambda a, b: a <= b)
    torch.sym_max = _folding(saved[1], lambda a, b: a >= b)
    try:
        yield
    finally:
        torch.sym_min, torch.sym_max = saved
