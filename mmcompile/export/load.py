"""Load an exported prefill (an ExportedProgram file or an AOTInductor package) as a callable that
checks its inputs, then runs it.

Both need ``torch.ops.mminference.prefill_attention`` registered in the loading process (``import
mmcompile.ops``, done here): the op is a Python ``custom_op`` (``mmcompile/export/__init__.py``).
"""

from __future__ import annotations

import os

import torch

from .program import META_FILE, read_metadata
from .signature import PrefillSignature


class LoadedPrefill:
    """``prefill(inputs_embeds, attention_mask, mm_token_type_ids[, position_ids])`` -> hidden states.
    ``stats`` counts the ops' sparse and dense calls (``mmcompile.runtime.RuntimeStats``), routed by
    the tag baked into the ops: when one process loads the same export twice, the latest load's
    ``stats`` receives them."""

    def __init__(self, run, metadata: dict):
        from mmcompile.runtime import track

        self._run = run
        self.metadata = metadata
        signature = metadata["signature"]
        self.signature = PrefillSignature(**dict(signature, dtypes=tuple(signature.get("dtypes", ()))))
        self.stats = track(metadata["tag"])  # kept alive here: the registry holds it weakly

    def __call__(self, inputs_embeds, attention_mask, mm_token_type_ids, position_ids=None):
        return self._run(*self.signature.arrange(inputs_embeds, attention_mask, mm_token_type_ids, position_ids))


def load_program(path) -> LoadedPrefill:
    """A program saved by ``save_program``, run by ``ExportedProgram.module()`` (Python)."""
    import mmcompile.ops  # noqa: F401  (the program's ops must be registered to deserialize it)

    extra = {META_FILE: ""}
    program = torch.export.load(os.fspath(path), extra_files=extra)
    if not extra[META_FILE]:
        raise ValueError(f"{path} is not an mminference export (no {META_FILE})")
    return LoadedPrefill(program.module(), read_metadata(extra[META_FILE]))


def load_package(path, device_index: int = -1) -> LoadedPrefill:
    """An AOTInductor package written by ``package``: compiled C++/CUDA code for everything but the
    mminference ops, which the package calls through the dispatcher into this process's Python."""
    import mmcompile.ops  # noqa: F401  (the package calls the op by name; it must be registered)

    extra = {} if device_index == -1 else {"device_index": device_index}  # the default, in every torch
    runner = torch._inductor.aoti_load_package(os.fspath(path), **extra)
    if not hasattr(runner, "get_metadata"):
        raise RuntimeError(f"torch {torch.__version__} cannot read the metadata of an AOTInductor package")
    text = runner.get_metadata().get(META_FILE)
    if not text:
        raise ValueError(f"{path} is not an mminference package (no {META_FILE} in its metadata)")
    return LoadedPrefill(runner, read_metadata(text))
