"""SUBSTITUTE for transformers' tests/models/llava_next_video/test_modeling_llava_next_video.py (see _causal_lm.py): the common
ModelTesterMixin suite on LLaVA-NeXT-Video (llama text, clip_vision_model vision) with a tiny config: one 16x16 image per
sample (anyres grid [[16, 16]]: base + 1 tile), its image tokens at the start of a 7-token text. The
number of image tokens is measured once from the model itself. HF's model-specific tests are absent."""

import unittest

from transformers import LlavaNextVideoConfig, is_torch_available
from transformers.testing_utils import require_torch, torch_device

from ...generation.test_utils import GenerationTesterMixin
from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

if is_torch_available():
    import torch

    from transformers import LlavaNextVideoForConditionalGeneration, LlavaNextVideoModel

_IMAGE_TOKENS = {}


class LlavaNextVideoVisionText2TextModelTester:
    def __init__(self, parent, batch_size=3, text_length=7, vocab_size=99, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, image_size=16, num_channels=3, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2, image_token_index=3, video_token_index=4, is_training=True):
        self.parent = parent
        for k, v in dict(locals()).items():
            if k not in ("self", "parent"):
                setattr(self, k, v)

    def get_config(self):
        return LlavaNextVideoConfig(
            text_config={"model_type": "llama", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
                         "intermediate_size": 37, "num_hidden_layers": self.num_hidden_layers,
                         "num_attention_heads": self.num_attention_heads,
                         "num_key_value_heads": self.num_key_value_heads, "max_position_embeddings": 512,
                         "pad_token_id": self.pad_token_id, "bos_token_id": self.bos_token_id,
                         "eos_token_id": self.eos_token_id},
            vision_config={"model_type": "clip_vision_model", "image_size": self.image_size, "patch_size": 4,
                           "num_channels": self.num_channels, "hidden_size": 32, "intermediate_size": 37,
                           "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": 32},
            image_token_index=self.image_token_index, video_token_index=self.video_token_index,
            vision_feature_select_strategy="default", vision_feature_layer=-1,
            image_grid_pinpoints=[[16, 16]])

    def num_image_tokens(self, config, pixel_values, image_sizes):
        if "n" not in _IMAGE_TOKENS:
            with torch.no_grad():
                model = LlavaNextVideoModel(config).eval()
                feats = model.get_image_features(pixel_values=pixel_values[:1], image_sizes=image_sizes[:1])
                feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
                feats = feats[0] if isinstance(feats, (list, tuple)) else feats
                _IMAGE_TOKENS["n"] = int(feats.reshape(-1, feats.shape[-1]).shape[0])
        return _IMAGE_TOKENS["n"]

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, 2, self.num_channels, self.image_size, self.image_size])
        image_sizes = torch.tensor([[self.image_size, self.image_size]] * self.batch_size)
        n_img = self.num_image_tokens(config, pixel_values, image_sizes)
        self.seq_length = self.text_length + n_img
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 5) + 5  # no special ids
        input_ids[:, :n_img] = self.image_token_index
        return config, {"input_ids": input_ids, "pixel_values": pixel_values, "image_sizes": image_sizes,
                        "attention_mask": torch.ones(input_ids.shape, dtype=torch.long, device=torch_device)}


@require_torch
class LlavaNextVideoModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (LlavaNextVideoModel, LlavaNextVideoForConditionalGeneration) if is_torch_available() else ()
    _is_composite = True
    # the LLaVA features are taken from a vision hidden state (vision_feature_layer=-1), so the SigLIP
    # post_layernorm (and, for SigLIP, its pooling head) gets no gradient by design; the gradient-checkpointing
    # tests still compare the set of non-zero gradients with and without checkpointing
    test_all_params_have_gradient = False
    # get_image_features returns one row per anyres patch (base + tiles) and get_video_features one per frame,
    # so neither keeps pixel_values' leading (batch) dimension
    skip_test_image_features_output_shape = True
    skip_test_video_features_output_shape = True

    def setUp(self):
        self.model_tester = LlavaNextVideoVisionText2TextModelTester(self)
        self.model_tester.prepare_config_and_inputs_for_common()  # sets seq_length
        self.config_tester = ConfigTester(self, config_class=LlavaNextVideoConfig, has_text_modality=False)

    def test_config(self):
        self.config_tester.run_common_tests()
