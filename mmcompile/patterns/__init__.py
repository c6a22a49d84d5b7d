"""Modality-aware sparse patterns (MMInference): layouts, online estimation, SparseIndex builders.

Entry point: ``forward_context`` once per forward, then ``layer_attention`` per layer.
"""

from .context import DEFAULT_BLOCK, ForwardContext, forward_context
from .layer import LayerResult, layer_attention
from .layout import AUDIO, IMAGE, PAD, TEXT, VIDEO, ModalityLayout, check_layout, from_hf_inputs, from_segments
from .specs import AShape, BlockSparse, Dense, Grid, HeadPattern, VerticalSlash

__all__ = [
    "ModalityLayout", "from_segments", "from_hf_inputs", "check_layout", "TEXT", "IMAGE", "VIDEO", "AUDIO", "PAD",
    "AShape", "VerticalSlash", "Grid", "BlockSparse", "Dense", "HeadPattern",
    "ForwardContext", "forward_context", "layer_attention", "LayerResult", "DEFAULT_BLOCK",
]
