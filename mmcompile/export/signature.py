"""What an exported prefill takes and returns, and the checks a loaded one runs before each call.

    (inputs_embeds [B, N, hidden], attention_mask [B, N], mm_token_type_ids [B, N] or [B, N, 3]
     [, position_ids [..., B, N]])  ->  last hidden state [B, N, hidden]

``mm_token_type_ids`` is the modality layout, explicit: ids per token (HF's convention: 0 text,
1 image, 2 video, 3 audio; -1 padding), or with frame geometry, (id, frame height, frame width) per
token (``mmcompile.patterns.token_table.token_table(layout)``). The sequence length ``N`` is one
dynamic dimension shared by every input.
``attention_mask`` is HF's 2-D padding mask (ones for an unpadded prefill): with it transformers
builds the causal mask the rewrite can prove and drop; without it, an exported HF model builds a
packed-sequence mask from the positions that no rewrite can prove causal.

The checks exist because AOTInductor checks no input at run time (only with
``AOTI_RUNTIME_CHECK_INPUTS=1``): a layout one token short would reach every layer's op, and a
package reads its inputs with the dtypes and strides of the export's examples (an expanded
``position_ids`` exported, a contiguous one given: every row read as the first). So inputs are
checked against the recorded dtypes and made contiguous, at export and at every call.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

BASE_INPUTS = ("inputs_embeds", "attention_mask", "mm_token_type_ids")
_MODALITY_IDS = (-1, 0, 1, 2, 3)  # mmcompile.patterns.layout: PAD, TEXT, IMAGE, VIDEO, AUDIO


class PrefillModule(torch.nn.Module):
    """A language model as the function that is exported. ``mm_token_type_ids`` is not read here:
    the export binds it to every rewritten attention op (``program.bind_layout``)."""

    def __init__(self, language_model: torch.nn.Module):
        super().__init__()
        self.language_model = language_model

    def forward(self, inputs_embeds, attention_mask, mm_token_type_ids, position_ids=None):
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, use_cache=False)
        return out[0]  # last_hidden_state


@dataclasses.dataclass(frozen=True)
class PrefillSignature:
    """The inputs of one exported prefill: stored with the program and checked on every call."""

    batch: int
    hidden: int
    device: str  # device type the program was exported for: "cuda" | "cpu"
    position_dims: Optional[int] = None  # ndim of position_ids, None when it is not an input
    layout_dims: int = 2  # of mm_token_type_ids: 2 (ids) or 3 (ids and frame geometry)
    dtypes: tuple = ()  # of every input, in ``names`` order (inputs_embeds' is the output's)

    @property
    def names(self) -> tuple:
        return BASE_INPUTS + (("position_ids",) if self.position_dims else ())

    @staticmethod
    def of(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, mm_token_type_ids: torch.Tensor,
           position_ids: Optional[torch.Tensor]) -> "PrefillSignature":
        given = [t for t in (inputs_embeds, attention_mask, mm_token_type_ids, position_ids) if t is not None]
        return PrefillSignature(batch=inputs_embeds.shape[0], hidden=inputs_embeds.shape[2],
                                device=inputs_embeds.device.type,
                                position_dims=None if position_ids is None else position_ids.dim(),
                                layout_dims=mm_token_type_ids.dim(), dtypes=tuple(str(t.dtype) for t in given))

    def dynamic_shapes(self, min_len: int, max_len: int) -> dict:
        """One sequence dimension for every input (torch.export then requires them equal). The
        maximum must be finite: with an unbounded one, transformers' full slices ``[..., :]`` stay
        in the mask graph as ``slice(0, 2**63 - 1)`` and the causal-mask proof fails."""
        seq = torch.export.Dim("seq", min=min_len, max=max_len)
        shapes = {"inputs_embeds": {1: seq}, "attention_mask": {1: seq}, "mm_token_type_ids": {1: seq}}
        if self.position_dims:
            shapes["position_ids"] = {self.position_dims - 1: seq}
        return shapes

    def arrange(self, inputs_embeds, attention_mask, mm_token_type_ids, position_ids=None) -> tuple:
        """The positional inputs of the program, checked (ValueError naming the input), contiguous."""
        if (position_ids is not None) != bool(self.position_dims):
            raise ValueError("this prefill was exported " + ("with" if self.position_dims else "without") +
                             " position_ids")
        args = (inputs_embeds, attention_mask, mm_token_type_ids) + ((position_ids,) if self.position_dims else ())
        for name, t in zip(self.names, args):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
            if t.device.type != self.device:
                raise ValueError(f"{name} is on {t.device}, the prefill was exported for {self.device}")
        for name, t, dtype in zip(self.names, args, self.dtypes):
            if str(t.dtype) != dtype:
                raise ValueError(f"{name} is {t.dtype}, the prefill was exported for {dtype}")
        if inputs_embeds.dim() != 3 or tuple(inputs_embeds.shape[::2]) != (self.batch, self.hidden):
            raise ValueError(f"inputs_embeds must be [{self.batch}, N, {self.hidden}], "
                             f"got {tuple(inputs_embeds.shape)}")
        n = inputs_embeds.shape[1]
        if tuple(attention_mask.shape) != (self.batch, n):
            raise ValueError(f"attention_mask must be [batch, tokens] = [{self.batch}, {n}] like inputs_embeds, "
                             f"got {tuple(attention_mask.shape)}")
        self._check_layout(mm_token_type_ids, n)
        if position_ids is not None and (position_ids.dim() != self.position_dims or position_ids.shape[-1] != n):
            raise ValueError(f"position_ids must be {self.position_dims}-D with {n} positions last, "
                             f"got {tuple(position_ids.shape)}")
        return tuple(t.contiguous() for t in args)

    def _check_layout(self, layout: torch.Tensor, n: int) -> None:
        shape = (self.batch, n) + ((3,) if self.layout_dims == 3 else ())
        if tuple(layout.shape) != shape:
            what = "[batch, tokens]" if self.layout_dims == 2 else "[batch, tokens, 3] (id, frame h, frame w)"
            raise ValueError(f"mm_token_type_ids must be {what} = {list(shape)} like inputs_embeds, "
                             f"got {tuple(layout.shape)}")
        if layout.is_floating_point() or layout.dtype == torch.bool:
            raise ValueError(f"mm_token_type_ids must be integer modality ids, got {layout.dtype}")
        ids = layout[..., 0] if self.layout_dims == 3 else layout
        unknown = ~torch.isin(ids, torch.tensor(_MODALITY_IDS, device=ids.device))
        bad_frames = self.layout_dims == 3 and bool((layout[..., 1:] < 0).any())
        if bool(unknown.any()) or bad_frames:  # host syncs, once per forward
            raise ValueError(f"mm_token_type_ids holds unknown modality ids {sorted(set(ids[unknown].tolist()))[:8]} "
                             f"(known: {_MODALITY_IDS}) or negative frame sizes")
