"""The ``mminference`` torch.compile backend, registered through the ``torch_dynamo_backends``
entry point (``pyproject.toml``), so ``torch.compile(model, backend="mminference")`` needs no import.

Until the attention-rewriting passes land (issue 4) it hands the graph to Inductor unchanged.
"""

from __future__ import annotations

import torch


def mminference_backend(gm: torch.fx.GraphModule, example_inputs, **kwargs):
    """Dynamo backend: (graph, example inputs) -> compiled callable."""
    from torch._inductor.compile_fx import compile_fx

    import mmcompile.ops  # noqa: F401  (registers torch.ops.mminference.* for the compiled graph)

    return compile_fx(gm, example_inputs)
