"""SUBSTITUTE for transformers' tests/models/qwen2_vl/test_modeling_qwen2_vl.py (see _causal_lm.py): the common
ModelTesterMixin suite on Qwen2-VL, with the tiny config and inputs of HF's own tester (seq 7 + 32 slots, one
image of one 14x14 patch at position 32, vision start at 31). HF's model-specific tests are absent."""

import unittest

from transformers import Qwen2VLConfig, is_torch_available
from transformers.testing_utils import require_torch, torch_device

from ...generation.test_utils import GenerationTesterMixin
from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

if is_torch_available():
    import torch

    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLModel


class Qwen2VLVisionText2TextModelTester:
    def __init__(self, parent, batch_size=3, seq_length=7, num_channels=3, image_size=14, vocab_size=99,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 bos_token_id=0, eos_token_id=1, pad_token_id=2, vision_start_token_id=3, image_token_id=4,
                 video_token_id=5, is_training=True):
        self.parent = parent
        for k, v in dict(locals()).items():
            if k not in ("self", "parent"):
                setattr(self, k, v)
        self.num_image_tokens = 32
        self.seq_length = seq_length + self.num_image_tokens
        self.vision_config = {"depth": 2, "embed_dim": 32, "hidden_act": "quick_gelu", "hidden_size": 32, "mlp_ratio": 4, "num_heads": 4, "patch_size": 14, "spatial_merge_size": 1, "temporal_patch_size": 2}

    def get_config(self):
        return Qwen2VLConfig(
            text_config={
                "vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "intermediate_size": 37,
                "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads, "hidden_act": "silu",
                "max_position_embeddings": 512, "max_window_layers": 3,
                "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000},
                "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
                "pad_token_id": self.pad_token_id},
            vision_config=self.vision_config, vision_start_token_id=self.vision_start_token_id,
            image_token_id=self.image_token_id, video_token_id=self.video_token_id, tie_word_embeddings=True)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        patch, temporal = config.vision_config.patch_size, config.vision_config.temporal_patch_size
        pixel_values = floats_tensor([self.batch_size * (self.image_size**2) // (patch**2),
                                      self.num_channels * (patch**2) * temporal])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_ids[:, -1] = self.pad_token_id
        for t in (self.video_token_id, self.image_token_id, self.vision_start_token_id):
            input_ids[input_ids == t] = self.pad_token_id
        input_ids[:, self.num_image_tokens] = self.image_token_id
        input_ids[:, self.num_image_tokens - 1] = self.vision_start_token_id
        return config, {"pixel_values": pixel_values, "image_grid_thw": torch.tensor([[1, 1, 1]] * self.batch_size),
                        "input_ids": input_ids,
                        # v5 M-RoPE needs the processor's token types: 0 text, 1 image, 2 video
                        "mm_token_type_ids": (input_ids == self.image_token_id).long(),
                        "attention_mask": torch.ones(input_ids.shape, dtype=torch.long, device=torch_device)}


@require_torch
class Qwen2VLModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (Qwen2VLModel, Qwen2VLForConditionalGeneration) if is_torch_available() else ()
    _is_composite = True

    def setUp(self):
        self.model_tester = Qwen2VLVisionText2TextModelTester(self)
        self.config_tester = ConfigTester(self, config_class=Qwen2VLConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()
