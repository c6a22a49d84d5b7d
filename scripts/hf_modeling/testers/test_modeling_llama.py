"""SUBSTITUTE for transformers' tests/models/llama/test_modeling_llama.py (see _causal_lm.py): the common
ModelTesterMixin suite on Llama's task heads, with a tiny config. Model-specific tests of HF's file are absent."""

import unittest

from transformers import LlamaConfig, is_torch_available
from transformers.testing_utils import require_torch

from ...generation.test_utils import GenerationTesterMixin
from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin
from .._causal_lm import CausalLMTester

if is_torch_available():
    from transformers import (LlamaForCausalLM, LlamaForQuestionAnswering, LlamaForSequenceClassification,
                              LlamaForTokenClassification, LlamaModel)


class LlamaModelTester(CausalLMTester):
    config_class = LlamaConfig


@require_torch
class LlamaModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = ((LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification, LlamaForQuestionAnswering,
                          LlamaForTokenClassification) if is_torch_available() else ())

    def setUp(self):
        self.model_tester = LlamaModelTester(self)
        self.config_tester = ConfigTester(self, config_class=LlamaConfig, hidden_size=32)

    def test_config(self):
        self.config_tester.run_common_tests()
