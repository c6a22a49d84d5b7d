"""Offline per-head pattern search (MMInference's third part): candidates scored on captured q, k, v
of each layer against dense attention (V included), the cheapest that reaches the recall target
kept per head and query modality, written as a plan file (``mmcompile.plans``).

    from mmcompile.search import search_layer
    patterns, scores = search_layer(q, k, v, ctx, target=0.95)

``capture`` collects each layer's q, k, v from a model forward one layer at a time; the
``mminference search`` command (``cli``) runs the whole thing with a progress bar.
"""

from .candidates import candidates_for
from .layer_search import search_layer
from .retarget import retarget

__all__ = ["candidates_for", "search_layer", "retarget"]
