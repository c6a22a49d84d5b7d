"""``TORCH_LOGS=mminference`` (``+mminference`` for debug detail): mmcompile's loggers (every
``mmcompile.*`` module, the passes included) under PyTorch's log settings, next to ``dynamo``,
``graph_breaks`` and the rest.

PyTorch rejects an unknown ``TORCH_LOGS`` name while ``import torch`` parses it, so the name must be
registered before that: torch 2.13 loads the ``torch.backends`` entry points first (``pyproject.toml``
declares ``register`` there). Older torch parses ``TORCH_LOGS`` before its entry points, so there
the name is unknown; use ``logging.getLogger("mmcompile").setLevel(logging.INFO)`` instead.

The name is registered only when ``TORCH_LOGS`` asks for it: a registered log is handed to PyTorch's
handlers and stops propagating to the root logger, which would change mmcompile's logging for
everyone else.
"""

from __future__ import annotations

import os
import re

LOG_NAME = "mminference"
LOGGER = "mmcompile"


def wanted(settings: str) -> bool:
    """Whether a ``TORCH_LOGS`` value names ``mminference`` (with or without a +/- verbosity)."""
    return LOG_NAME in {re.sub(r"^[+-]", "", part.strip()) for part in settings.split(",")}


def register() -> None:
    """Register ``mminference`` with ``torch._logging`` if ``TORCH_LOGS`` names it. Runs inside
    ``import torch`` (the entry point): never raises."""
    try:
        if not wanted(os.environ.get("TORCH_LOGS", "")):
            return
        from torch._logging import _internal

        if LOG_NAME not in _internal.log_registry.log_alias_to_log_qnames:
            _internal.register_log(LOG_NAME, LOGGER)
    except Exception:  # noqa: BLE001 - a log name must never break `import torch`
        pass
