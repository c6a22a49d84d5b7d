"""mmcompile: modality-aware sparse attention for long-context VLM prefill, as a torch.compile backend.

``import mmcompile`` registers the ``torch.ops.mminference.*`` ops. The ``mminference`` backend is
found by ``torch.compile`` through the ``torch_dynamo_backends`` entry point, with no import.
"""

from mmcompile import ops  # noqa: F401  (registers torch.ops.mminference.*)
from mmcompile.kernels import SparseIndex

__all__ = ["SparseIndex", "ops"]
__version__ = "0.1.0"
