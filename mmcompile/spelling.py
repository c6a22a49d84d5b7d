"""Which ``torch.compile`` spelling reaches the backend from ``generate()``.

``torch.compile(model, ...)`` returns a wrapper (an ``OptimizedModule``) whose own call is compiled,
but whose other attributes are the original module's: ``wrapper.generate(...)`` is
``model.generate`` and calls the uncompiled ``model(...)``, so no graph ever reaches the backend.
``model.compile(...)`` compiles the module's own call in place, which ``generate()`` uses for the
prefill and every decode step. The backend cannot see ``generate`` being called on a wrapper (it is
never invoked); it can see a graph of a causal language model compiled through one, and says then,
once per report, which spelling ``generate()`` needs.
"""

from __future__ import annotations

import torch

GENERATE_HINT = ("torch.compile(model, backend='mminference') compiles model(...) only: "
                 "<compiled>.generate(...) is the original module's method and runs the uncompiled forward "
                 "(no graph reaches the backend). For generate(), compile in place: "
                 "model.compile(backend='mminference', options={...}); model.generate(...)")


def in_compiled_wrapper() -> bool:
    """True while Dynamo compiles a frame entered through the wrapper ``torch.compile(module)``
    returns. Reads a private flag of ``torch._dynamo.eval_frame`` (torch 2.13); False where absent."""
    probe = getattr(torch._dynamo.eval_frame, "_is_in_optimized_module", None)
    return bool(probe()) if callable(probe) else False
