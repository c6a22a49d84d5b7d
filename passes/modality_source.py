"""Decides where each matched attention call gets its modality layout from (no rewrite yet).

Only the text-only fallback exists so far in the graph: every call gets ``modality_ids=None`` and the
report says "none (text-only)". At run time the op still reads an explicit annotation
(``mmcompile.annotate.modality``) and records "layout: annotation" in its call records. Graph
placeholders (``mm_token_type_ids``, placeholder-token masks, grids) and layouts published by
earlier graphs land here (issue 4, item 3).
"""

from __future__ import annotations

import torch.fx as fx

from ._types import PassResult, state

TEXT_ONLY = "none (text-only)"


def modality_source(gm: fx.GraphModule, config) -> PassResult:
    matched = [s for s in state(gm)["sites"] if s.status == "matched"]
    for site in matched:
        site.modality, site.modality_source = None, TEXT_ONLY
    return PassResult("modality_source", changed=False, counts={TEXT_ONLY: len(matched)})
