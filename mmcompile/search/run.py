"""A whole search: per layer ``search_layer`` on captured or planted q, k, v, assembled into a
``Plan`` with the model's shape, the settings, the calibration inputs and every candidate's scores."""

from __future__ import annotations

import time

from mmcompile.patterns.context import forward_context
from mmcompile.plans import ModelShape, Plan

from .layer_search import search_layer


class PlanBuilder:
    """Collects layers as they are searched (``on_layer`` is a ``capture.capturing`` callback)."""

    def __init__(self, shape: ModelShape, layout, target: float, rows: int, seed: int, progress=None,
                 block=None):
        self.shape, self.layout, self.target, self.rows, self.seed = shape, layout, target, rows, seed
        self.progress, self.block = progress, block
        self.layers, self.scores, self.seconds = {}, {}, {}

    def on_layer(self, layer: int, q, k, v, scale: float) -> None:
        start = time.perf_counter()
        extra = () if self.block is None else self.block
        ctx = forward_context(self.layout, q.shape[2], q.shape[0], q.device, *extra)
        patterns, scores = search_layer(q, k, v, ctx, self.target, self.rows, self.seed, scale)
        self.layers[layer] = tuple(patterns)
        self.scores.update({(layer, h): s for h, s in scores.items()})
        self.seconds[layer] = time.perf_counter() - start
        if self.progress is not None:
            self.progress(layer)

    def plan(self, calibration: list) -> Plan:
        search = dict(target_recall=self.target, rows=self.rows, seed=self.seed,
                      seconds=round(sum(self.seconds.values()), 2))
        return Plan(self.shape, dict(self.layers), search=search, calibration=calibration, scores=self.scores)
