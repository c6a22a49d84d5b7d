"""Tiny checkpoint folders made locally, LLaVA and Qwen2.5-VL: what a user downloads, in miniature,
for tests and the demo (random weights; no hub, no downloads).

    folder = save_tiny_llava(tmp_dir)                      # model + processor, via save_pretrained
    processor, model = load(folder)                        # AutoProcessor / AutoModelForImageTextToText
    inputs = processor(images=synthetic_frames(8), text=prompt(8, "what moves?"), return_tensors="pt")

    folder = save_tiny_qwen2_5_vl(tmp_dir)                 # needs torchvision (video processor)
    inputs = processor(videos=[synthetic_frames(8)], text=qwen_video_prompt("what moves"), return_tensors="pt")

The tokenizer is a word-level ``tokenizers`` tokenizer built in code (a few English words, ``w0``..
``w179`` and the processor's ``<image>`` token). The image processor is the PIL one (no torchvision needed). Each
frame becomes 4 x 4 image tokens (56 x 56 pixels, 14-pixel patches).
"""

from __future__ import annotations

import os

import torch

IMAGE_TOKEN, IMAGE_SIZE, PATCH = "<image>", 56, 14
WORDS = "what moves in the video where does square go left right up down it a is".split() + \
    [f"w{i}" for i in range(180)]


def local_tokenizer(special_tokens: list[str]):
    """A fast word-level tokenizer (whitespace split) with ``special_tokens`` added."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>"] + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens})
    return tokenizer


def save_tiny_llava(folder: str, seed: int = 0) -> str:
    """Write a 2-layer LLaVA (CLIP vision tower, Llama text model, GQA 4/2) and its processor."""
    import transformers as tf
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tokenizer = local_tokenizer([IMAGE_TOKEN])
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                             crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = tf.LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH,
                           projection_dim=64),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    return _save(folder, tf.LlavaForConditionalGeneration, config, processor, seed)


QWEN_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def save_tiny_qwen2_5_vl(folder: str, seed: int = 0) -> str:
    """Write a 2-layer Qwen2.5-VL (GQA 4/2, M-RoPE) and its processor: the PIL image processor and
    Qwen2-VL's video processor. transformers' video processors import torchvision: without it this
    raises ImportError (the LLaVA folder needs none)."""
    import transformers as tf
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = local_tokenizer(list(QWEN_TOKENS))
    pixels = dict(min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE, patch_size=PATCH,
                  merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(size={"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]},
                                            patch_size=PATCH, merge_size=2, temporal_patch_size=2, do_sample_frames=False)
    processor = tf.Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessorPil(**pixels), tokenizer=tokenizer,
                                       video_processor=video_processor)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           zip(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"), QWEN_TOKENS)}
    config = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6])),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                           window_size=56, fullatt_block_indexes=[1], tokens_per_second=2, patch_size=PATCH,
                           spatial_merge_size=2, temporal_patch_size=2),
        **ids)
    return _save(folder, tf.Qwen2_5_VLForConditionalGeneration, config, processor, seed)


def qwen_video_prompt(question: str) -> str:
    """Qwen's text for one video: the processor expands ``<|video_pad|>`` to the video's tokens."""
    return "<|vision_start|><|video_pad|><|vision_end|> " + question


def _save(folder: str, model_class, config, processor, seed: int) -> str:
    """Random weights from ``seed``, greedy generation padded with the tokenizer's pad token, model
    and processor written with ``save_pretrained``."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def load(folder: str):
    """(processor, model) from a checkpoint folder, the way a user loads a downloaded one."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="sdpa").eval()
    return processor, model


def synthetic_frames(count: int, seed: int = 0) -> list:
    """``count`` RGB frames (uint8 [H, W, 3]) of a bright square moving over noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        frame = rng.integers(0, 64, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        x = (i * 5) % (IMAGE_SIZE - 16)
        frame[20:36, x:x + 16] = 255
        frames.append(frame)
    return frames


def prompt(frames: int, question: str) -> str:
    """The processor's text: one ``<image>`` per frame (it expands each to the frame's tokens), then
    the question in the tokenizer's words."""
    return " ".join([IMAGE_TOKEN] * frames) + " " + question
