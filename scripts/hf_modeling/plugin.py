"""pytest plugin that runs Hugging Face's modeling tests in one of mmcompile's modes.

Loaded with ``-p plugin`` (run.py puts this folder on PYTHONPATH); the mode comes from ``MMC_HF_MODE``:

  plain          nothing patched.
  attention      ``mmcompile.hf_attention.register({})``; every model whose attention implementation was
                 not requested (config ``_attn_implementation`` None, i.e. transformers would pick its
                 default "sdpa") gets "mminference" instead. Explicit requests ("eager", "sdpa",
                 ``set_attn_implementation``) are honoured, so the tests that switch implementations
                 run as written. Hook: ``PreTrainedModel.get_correct_attn_implementation``.
  attention-sdpa as ``attention``, and an explicit "sdpa" request becomes "mminference" too (so
                 ``test_eager_matches_sdpa_inference`` compares eager against ours). Tests asserting
                 ``_attn_implementation == "sdpa"`` then fail by construction: use it with -k.
  backend        the outermost ``PreTrainedModel.__call__`` of every model runs through
                 ``torch.compile(model._call_impl, backend=MMInferenceBackend(OPTIONS))`` (the
                 ``mminference`` backend as an object, so each test gets its own report); OPTIONS =
                 {"debug_uncompiled": True, "strict": True} (no Inductor: C++ builds on 2 cores are
                 too slow; strict: a pass error fails the test instead of silently falling back).
  backend-dense  as ``backend`` with "force_dense": True.
  eager-control  the same compilation with ``backend="eager"``: the control for backend modes.

``MMC_HF_BACKEND_OPTIONS`` (JSON) overrides OPTIONS. Dynamo is reset before each test and its
recompile limits raised, since every test builds fresh models (the shared ``_call_impl`` code object
would otherwise hit the limit and silently run eagerly).

Per test, junit properties: ``mmc_attn_calls`` / ``mmc_attn_fallback`` (calls into our attention
function / of those, handed to SDPA) and ``mmc_graphs`` / ``mmc_rewritten`` / ``mmc_fallbacks``
(graphs the backend saw / attention sites rewritten / passes that fell back).
"""

from __future__ import annotations

import json
import os
import threading
import weakref

import pytest

def _pin_mmcompile_root() -> None:
    """``--mmcompile-root`` puts a snapshot first on PYTHONPATH, which gives its ``mmcompile/``; but the editable
    install maps ``mmcompile.passes`` and ``mmcompile.kernels`` to top-level ``passes/`` and ``kernels/`` of the
    live checkout (pyproject ``package-dir``). Searching the snapshot root as part of the package makes those two
    come from the snapshot as well (run.py sets ``MMC_HF_ROOT``)."""
    root = os.environ.get("MMC_HF_ROOT")
    if not root:
        return
    import mmcompile

    if os.path.dirname(os.path.abspath(mmcompile.__file__)) != os.path.join(os.path.abspath(root), "mmcompile"):
        raise pytest.UsageError(f"mmcompile imported from {mmcompile.__file__}, not from MMC_HF_ROOT={root}")
    if any(os.path.isfile(os.path.join(root, sub, "__init__.py")) for sub in ("passes", "kernels")):
        mmcompile.__path__.append(os.path.abspath(root))


_pin_mmcompile_root()

MODE = os.environ.get("MMC_HF_MODE", "plain")
MODES = ("plain", "attention", "attention-sdpa", "backend", "backend-dense", "eager-control")
if MODE not in MODES:
    raise pytest.UsageError(f"MMC_HF_MODE={MODE!r}: one of {MODES}")

_counts = {"attn_calls": 0, "attn_fallback": 0}
_reports: list = []


def _install_attention(replace_sdpa: bool) -> None:
    import torch
    import transformers.integrations.sdpa_attention as sdpa_mod
    from transformers import AttentionInterface
    from transformers.modeling_utils import PreTrainedModel

    import mmcompile.hf_attention as hfa

    hfa.register({})
    ours = AttentionInterface._global_mapping[hfa.NAME]
    inside = threading.local()

    def counting(*args, **kwargs):  # same contract; counts calls and SDPA fallbacks
        if torch.compiler.is_compiling():
            # counted only when run eagerly: a counter bumped inside a traced frame becomes a dynamo guard on its
            # value, so every later call recompiles (test_generate_compile_model_forward_fullgraph fails on that)
            return ours(*args, **kwargs)
        _counts["attn_calls"] += 1
        inside.on = True
        try:
            return ours(*args, **kwargs)
        finally:
            inside.on = False

    real_sdpa = sdpa_mod.sdpa_attention_forward

    def sdpa_counting(*args, **kwargs):
        if not torch.compiler.is_compiling() and getattr(inside, "on", False):
            _counts["attn_fallback"] += 1
        return real_sdpa(*args, **kwargs)

    sdpa_mod.sdpa_attention_forward = sdpa_counting  # hf_attention imports it at call time
    AttentionInterface._global_mapping[hfa.NAME] = counting

    original = PreTrainedModel.get_correct_attn_implementation

    def get_correct_attn_implementation(self, requested_attention, is_init_check=False):
        if requested_attention is None or (replace_sdpa and requested_attention == "sdpa"):
            chosen = original(self, requested_attention, is_init_check)
            # transformers' default is sdpa, falling back to eager where the model can't do sdpa: keep that
            return hfa.NAME if chosen == "sdpa" else chosen
        return original(self, requested_attention, is_init_check)

    PreTrainedModel.get_correct_attn_implementation = get_correct_attn_implementation


_compiled: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_depth = threading.local()


def _backend():
    if MODE == "eager-control":
        return "eager"
    from mmcompile.backend import MMInferenceBackend
    from mmcompile.report import Report

    options = {"debug_uncompiled": True, "strict": True}
    if MODE == "backend-dense":
        options["force_dense"] = True
    if os.environ.get("MMC_HF_BACKEND_OPTIONS"):
        options = json.loads(os.environ["MMC_HF_BACKEND_OPTIONS"])
    report = Report()
    _reports.append(report)
    return MMInferenceBackend(options, report=report)


def _install_compile() -> None:
    import torch
    from transformers.modeling_utils import PreTrainedModel

    import mmcompile.backend  # noqa: F401  (fail early if the backend doesn't import)

    def __call__(self, *args, **kwargs):
        if getattr(_depth, "n", 0) or torch.compiler.is_compiling():  # only the outermost model call
            return torch.nn.Module.__call__(self, *args, **kwargs)
        fn = _compiled.get(self)
        if fn is None:
            fn = _compiled[self] = torch.compile(self._call_impl, backend=_backend())
        _depth.n = getattr(_depth, "n", 0) + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _depth.n -= 1

    PreTrainedModel.__call__ = __call__

    if os.environ.get("MMC_HF_GENERATE_COMPILE") == "mode":  # set by run.py
        def get_compiled_call(self, compile_config):
            """generate()'s automatic compilation (the decode steps with a static cache, e.g.
            test_generate_compile_model_forward_fullgraph): compile the unpatched ``nn.Module.__call__`` with this
            mode's backend instead of ``compile_config.backend`` (Inductor), keeping its fullgraph/dynamic.
            Without this, generate compiles the patched ``__call__`` above with Inductor, and the test measures
            the harness (its guards on ``len(kwargs)``) rather than the mode."""
            compile_config = compile_config or self._default_compile_config()
            if getattr(self, "_compiled_call", None) is None or getattr(self, "_mmc_compile_config", None) != compile_config:
                self._mmc_compile_config = compile_config
                model = self

                def decode_call(*args, **kwargs):  # its own code object: the prefill's compiled frames aren't shared
                    return torch.nn.Module.__call__(model, *args, **kwargs)

                self._compiled_call = torch.compile(decode_call, backend=_backend(),
                                                    fullgraph=compile_config.fullgraph, dynamic=compile_config.dynamic)
            return self._compiled_call

        PreTrainedModel.get_compiled_call = get_compiled_call


def pytest_configure(config):
    config.addinivalue_line("markers", f"mmc_mode_{MODE.replace('-', '_')}: mmcompile HF mode")
    if MODE in ("attention", "attention-sdpa"):
        _install_attention(replace_sdpa=MODE == "attention-sdpa")
    elif MODE in ("backend", "backend-dense", "eager-control"):
        _install_compile()


def pytest_report_header(config):
    import mmcompile
    import mmcompile.kernels
    import mmcompile.passes

    where = ", ".join(os.path.dirname(m.__file__) for m in (mmcompile, mmcompile.passes, mmcompile.kernels))
    return f"mmcompile HF mode: {MODE} (mmcompile, passes, kernels from {where})"


@pytest.fixture(autouse=True)
def _mmc_per_test(record_property):
    if MODE in ("backend", "backend-dense", "eager-control"):
        import torch

        torch._dynamo.reset()
        _compiled.clear()
        for name, value in (("recompile_limit", 256), ("cache_size_limit", 256),
                            ("accumulated_recompile_limit", 4096), ("accumulated_cache_size_limit", 4096)):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, value)
    _counts.update(attn_calls=0, attn_fallback=0)
    _reports.clear()
    yield
    if MODE.startswith("attention"):
        record_property("mmc_attn_calls", _counts["attn_calls"])
        record_property("mmc_attn_fallback", _counts["attn_fallback"])
    if MODE in ("backend", "backend-dense"):
        graphs = [g for r in _reports for g in r.graphs]
        record_property("mmc_graphs", len(graphs))
        record_property("mmc_rewritten", sum(len(getattr(g, "rewritten", []) or []) for g in graphs))
        record_property("mmc_fallbacks", sum(1 for g in graphs if getattr(g, "fallback", None)))
