"""mmcompile: modality-aware sparse attention for long-context VLM prefill, as a torch.compile backend.

``torch.compile(model, backend="mminference")`` finds the backend through the
``torch_dynamo_backends`` entry point, with no import. ``import mmcompile.ops`` registers the
``torch.ops.mminference.*`` ops. Importing this package itself loads no kernel, so a caller (the
``mminference`` command, a test's conftest) can still choose ``TRITON_INTERPRET`` first.
"""

__version__ = "0.1.0"
