"""Random-weight language models of known shapes to export without downloads: the CLI's
``--model tiny|standard`` and the export benchmark. Qwen2-style decoders (the language model of
Qwen2-VL / Qwen2.5-VL without M-RoPE)."""

from __future__ import annotations

import torch

PRESETS = {
    # The standard shape of BENCHMARKING.md (Qwen2.5-VL-7B's language model).
    "standard": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4),
    # CPU-sized: head dim 32, GQA 2.
    "tiny": dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2),
}


def language_model(preset: str, layers: int, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0):
    """A ``transformers.Qwen2Model`` of ``preset`` with ``layers`` decoder layers, random weights
    drawn from ``seed`` (the same weights for the same arguments and device), SDPA attention."""
    import transformers

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    config = transformers.Qwen2Config(vocab_size=256, num_hidden_layers=layers, max_position_embeddings=1 << 20,
                                      rope_parameters=dict(rope_type="default", rope_theta=1e6),
                                      attn_implementation="sdpa", bos_token_id=1, eos_token_id=2, **PRESETS[preset])
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.Qwen2Model(config)
    return model.to(dtype).eval()
