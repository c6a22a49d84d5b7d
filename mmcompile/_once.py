"""Log a message once per key: a fallback that repeats every layer of every forward must not flood
the log. The set of keys is the only state, guarded by a lock (safe under threads) and bounded."""

from __future__ import annotations

import logging
import threading

_MAX_KEYS = 1024


class Once:
    """``once.log(logger, level, key, msg, *args)`` logs only the first time ``key`` is seen."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: set = set()

    def first(self, key) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            if len(self._seen) < _MAX_KEYS:
                self._seen.add(key)
            return True

    def log(self, logger: logging.Logger, level: int, key, msg: str, *args, **kwargs) -> None:
        if self.first(key):
            logger.log(level, msg, *args, **kwargs)

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
