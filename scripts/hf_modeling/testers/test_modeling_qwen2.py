"""SUBSTITUTE for transformers' tests/models/qwen2/test_modeling_qwen2.py (see _causal_lm.py): the common
ModelTesterMixin suite on Qwen2's task heads, with a tiny config. Model-specific tests of HF's file are absent."""

import unittest

from transformers import Qwen2Config, is_torch_available
from transformers.testing_utils import require_torch

from ...generation.test_utils import GenerationTesterMixin
from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin
from .._causal_lm import CausalLMTester

if is_torch_available():
    from transformers import (Qwen2ForCausalLM, Qwen2ForQuestionAnswering, Qwen2ForSequenceClassification,
                              Qwen2ForTokenClassification, Qwen2Model)


class Qwen2ModelTester(CausalLMTester):
    config_class = Qwen2Config


@require_torch
class Qwen2ModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = ((Qwen2Model, Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen2ForQuestionAnswering,
                          Qwen2ForTokenClassification) if is_torch_available() else ())

    def setUp(self):
        self.model_tester = Qwen2ModelTester(self)
        self.config_tester = ConfigTester(self, config_class=Qwen2Config, hidden_size=32)

    def test_config(self):
        self.config_tester.run_common_tests()
