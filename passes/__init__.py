"""FX passes of the ``mminference`` backend (installed as ``mmcompile.passes``).

Passes analyse and rewrite FX graphs and reach the kernels only through ``torch.ops.mminference.*``.
Each is ``(gm, config) -> PassResult``, runs on the backend's copy of the graph and hands its
findings to the next through ``gm.meta["mminference"]`` (``_types.state``). Invariants every pass
keeps: node values (``meta["val"]``/``["example_value"]``) stay consistent (new nodes get fresh fake
values, never the replaced node's), no new aliasing or mutation, and only nodes a pass made dead
are erased.
"""

from ._types import AttentionSite, PassResult, SkipKind, state
from .chunk_sequence import chunk_sequence
from .find_attention import find_attention
from .modality_source import modality_source
from .rewrite_attention import rewrite_attention

# The pipeline, in order. The backend looks each name up in this module when it runs, so a test (or a
# debugging session) can replace one pass with ``monkeypatch.setattr(mmcompile.passes, name, fn)``.
PIPELINE = ("find_attention", "modality_source", "rewrite_attention", "chunk_sequence")

__all__ = ["AttentionSite", "PassResult", "SkipKind", "state", "PIPELINE",
           "find_attention", "modality_source", "rewrite_attention", "chunk_sequence"]
