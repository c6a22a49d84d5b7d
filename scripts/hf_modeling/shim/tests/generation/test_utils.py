"""SHIM (scripts/hf_modeling): stands in for transformers' tests/generation/test_utils.py only when the
tests tree given to run.py lacks it (the PyPI sdist ships tests/*.py but not tests/generation/).
An empty mixin: NO generation tests run through it."""


class GenerationTesterMixin:
    pass
