"""Package an exported prefill with AOTInductor into a ``.pt2``.

``torch._inductor.aoti_compile_and_package`` compiles every op but ours to C++ (CPU) or to Triton
kernels and a C++ wrapper (CUDA) inside the package, with the weights; each ``mminference``
op stays a call by name through the dispatcher (AOTInductor's proxy executor), with its arguments
(the run-time options) recorded in the package. The metadata travels in the package's AOTI metadata
(``aot_inductor.metadata``), readable with ``get_metadata()`` after loading.

Traps (compiler notes, section 3.3): on some images every ``aoti_load_package`` segfaults in
``std::regex`` inside the generated ``wrapper.so`` unless the system ``libstdc++`` is preloaded
(``preload_env``); while kernels change, stale Inductor caches can survive
(``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``). Kernel binaries are per GPU architecture: a package
built on an H200 serves H100s and H200s (sm_90), nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Optional

import torch

from .program import META_FILE, ExportedPrefill


def package(exported: ExportedPrefill, path, inductor_configs: Optional[dict] = None) -> str:
    """Compile ``exported`` with AOTInductor into the package ``path`` (returned). ``inductor_configs``
    are per-call Inductor settings (no global config is touched)."""
    configs = dict(inductor_configs or {})
    metadata = dict(configs.pop("aot_inductor.metadata", {}) or {})
    metadata[META_FILE] = json.dumps(exported.metadata())
    configs["aot_inductor.metadata"] = metadata
    return torch._inductor.aoti_compile_and_package(exported.program, package_path=os.fspath(path),
                                                    inductor_configs=configs)


def preload_env(env: Optional[dict] = None) -> dict:
    """``env`` (default: this process's) with the system libstdc++ in ``LD_PRELOAD`` when g++ can
    name it: the workaround for the ``aoti_load_package`` segfault above, for a child process."""
    env = dict(os.environ if env is None else env)
    gxx = shutil.which("g++")
    if gxx is None:
        return env
    try:
        lib = subprocess.run([gxx, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return env
    if os.path.isabs(lib) and os.path.exists(lib) and lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = " ".join(filter(None, [lib, env.get("LD_PRELOAD", "")]))
    return env
