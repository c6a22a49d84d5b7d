"""AOT export of a VLM language model's prefill with modality-aware sparse attention.

    from mmcompile.export import export_prefill, package, load_package
    exported = export_prefill(vlm, inputs_embeds, mm_token_type_ids, options={"min_sparse_len": 32768})
    package(exported, "prefill.pt2")                 # AOTInductor; or save_program(exported, path)
    prefill = load_package("prefill.pt2")            # in the deployment process
    hidden = prefill(inputs_embeds, attention_mask, mm_token_type_ids)

The sequence length is dynamic; the layout (``mm_token_type_ids``) is an explicit input bound to
every rewritten attention op; the options are the backend's, carried as op arguments.

How the kernels reach the package (issue 13, item 1): ``mminference::prefill_attention`` stays ONE
opaque ``torch.library.custom_op``; it is not decomposed into ``triton_op`` kernels. Between its
inputs and its kernel launches lies data-dependent host work that a graph cannot hold without
changing what it computes: the layout's runs and frame geometry are read on the host
(``ModalityLayout`` from ids), the online policy chooses each head's pattern from the estimate,
heads are grouped into one launch per chosen pattern type (the number of launches depends on the
data), the recall check recomputes the heads that miss the target, and dense-or-sparse depends on
the length. So AOTInductor compiles everything around the op (projections, RoPE, MLPs, norms) into
the package and calls the op by name; the op's Python implementation launches the Triton kernels,
which Triton JIT-compiles (and caches) on the deployment GPU at first use.

What the loading process needs: ``import mmcompile.ops`` (``load_program``/``load_package`` do it)
with Triton installed; without it ``aoti_load_package`` fails ("Could not find schema for
mminference::prefill_attention"). No C++-only deployment. In exchange, the AOT traps of user
kernels inside a package do not apply: no ``tl.constexpr`` is fed a traced length, no launch
config is frozen at build time, no kernel capture depends on the Triton release.
"""

from .load import LoadedPrefill, load_package, load_program
from .package import package, preload_env
from .program import ExportedPrefill, ExportError, bind_layout, export_prefill, prefill_ops, save_program
from .signature import PrefillModule, PrefillSignature

__all__ = ["export_prefill", "ExportedPrefill", "ExportError", "save_program", "package", "load_program",
           "load_package", "LoadedPrefill", "PrefillModule", "PrefillSignature", "bind_layout", "prefill_ops",
           "preload_env"]
