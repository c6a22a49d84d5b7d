"""SHIM (scripts/hf_modeling): the one name tests/test_configuration_common.py imports from
tests/utils/test_configuration_utils.py (values as in transformers v5), used when that file is missing."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
