"""SUBSTITUTE tester base (scripts/hf_modeling), used only when the given transformers tests tree has no
tests/models/<name>/test_modeling_<name>.py (the PyPI sdist ships none). It supplies what HF's own
ModelTester provides (a tiny config and inputs, sizes as in HF's testers), so that the common suite
`ModelTesterMixin` of the given tree's tests/test_modeling_common.py runs against the model."""

from transformers import is_torch_available
from transformers.testing_utils import torch_device

from ..test_modeling_common import ids_tensor

if is_torch_available():
    import torch


class CausalLMTester:
    config_class = None  # set by subclasses

    def __init__(self, parent, batch_size=13, seq_length=7, is_training=True, use_input_mask=True,
                 use_labels=True, vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=37, hidden_act="gelu", max_position_embeddings=512,
                 type_sequence_label_size=2, initializer_range=0.02, num_labels=3, num_choices=4,
                 pad_token_id=0, bos_token_id=1, eos_token_id=2):
        self.parent = parent
        for k, v in dict(locals()).items():
            if k not in ("self", "parent"):
                setattr(self, k, v)
        self.head_dim = hidden_size // num_attention_heads

    def get_config(self):
        return self.config_class(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size, hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings, initializer_range=self.initializer_range,
            pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids).to(torch_device)) if self.use_input_mask else None
        sequence_labels = token_labels = choice_labels = None
        if self.use_labels:
            sequence_labels = ids_tensor([self.batch_size], self.type_sequence_label_size)
            token_labels = ids_tensor([self.batch_size, self.seq_length], self.num_labels)
            choice_labels = ids_tensor([self.batch_size], self.num_choices)
        return self.get_config(), input_ids, None, input_mask, sequence_labels, token_labels, choice_labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, _, input_mask, *_ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}
