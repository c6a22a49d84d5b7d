"""How many decoder layers the compiled model has, read off a Dynamo graph's parameter inputs, so
a plan made for a model of another depth is refused by name (a 28-layer plan on a 4-layer model
would otherwise fit every layer it sees).

Dynamo names lifted parameters after their module path (``l_self_modules_model_modules_layers_
modules_3_modules_mlp_...``). A graph holding the decoder's final norm (a ``norm`` parameter outside
``layers``) holds its last layer, so its largest layer index + 1 is the depth. A graph without it
(a graph break inside the decoder, or another naming) says nothing: None.
"""

from __future__ import annotations

import re
from typing import Optional

import torch.fx as fx

_LAYER = re.compile(r"_layers_modules_(\d+)_")
_FINAL_NORM = re.compile(r"(^|_)modules_(norm|final_layernorm|ln_f)_parameters_weight")


def decoder_depth(gm: fx.GraphModule) -> Optional[int]:
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    layers = [int(m.group(1)) for name in names for m in [_LAYER.search(name)] if m]
    final = any(_FINAL_NORM.search(name) and not _LAYER.search(name) for name in names)
    return max(layers) + 1 if layers and final else None
