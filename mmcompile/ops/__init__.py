"""``torch.ops.mminference.*``: the only door from graphs to the run time and the kernels.

Importing this package registers every op (one import, whoever needs them: the backend, the
rewrite pass, the HF attention function, a process that loads an exported graph):

* ``mminference::sparse_attention`` / ``sparse_attention_reference`` / ``dense_attention``:
  the attention kernels over a ``SparseIndex`` (``kernel_ops``);
* ``mminference::prefill_attention``: the op the backend's rewrite inserts, every behaviour knob
  an argument (``prefill``).
"""

from .kernel_ops import dense_attention, sparse_attention, sparse_attention_op, sparse_attention_ref
from .prefill import prefill_attention

__all__ = ["sparse_attention", "sparse_attention_ref", "dense_attention", "sparse_attention_op", "prefill_attention"]
