"""Statistics of the op's calls, routed by the op's ``tag`` argument.

The backend (or ``hf_attention.register``) creates one ``RuntimeStats`` per compiled graph and
``track``s it under the tag it writes into the graph's ops; the report holds the strong reference.
The registry holds weak ones: stats nobody reads vanish, and a graph loaded in another process
(an unknown tag) just records into stats no one tracks. Statistics never change a result.
"""

from __future__ import annotations

import collections
import threading
import weakref
from typing import Optional

from .records import CallRecord

_MAX_RECORDS = 4096


class RuntimeStats:
    """Counters of the calls under one tag (thread-safe, bounded history)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.sparse_calls = 0
        self.dense_calls = 0
        self.reasons: collections.Counter = collections.Counter()  # DenseReason -> calls
        self.records: collections.deque = collections.deque(maxlen=_MAX_RECORDS)

    def record(self, rec: CallRecord) -> None:
        with self._lock:
            if rec.path == "sparse":
                self.sparse_calls += 1
            else:
                self.dense_calls += 1
                self.reasons[rec.reason] += 1
            self.records.append(rec)

    def reset(self) -> None:
        with self._lock:
            self.sparse_calls = self.dense_calls = 0
            self.reasons.clear()
            self.records.clear()

    def mean_sparse_density(self) -> Optional[float]:
        dens = [r.density for r in self.records if r.path == "sparse"]
        return sum(dens) / len(dens) if dens else None


class _Registry:
    """tag -> RuntimeStats, weakly held; the one process-wide table of the run time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_tag: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def track(self, tag: str, stats: RuntimeStats) -> RuntimeStats:
        with self._lock:
            self._by_tag[tag] = stats
        return stats

    def get(self, tag: str) -> Optional[RuntimeStats]:
        with self._lock:
            return self._by_tag.get(tag)


_REGISTRY = _Registry()


def track(tag: str, stats: Optional[RuntimeStats] = None) -> RuntimeStats:
    """Route the calls tagged ``tag`` into ``stats`` (new if None); the caller keeps it alive."""
    return _REGISTRY.track(tag, stats if stats is not None else RuntimeStats())


def stats_for(tag: str) -> Optional[RuntimeStats]:
    """The stats tracked under ``tag``, or None (untracked calls are not recorded)."""
    return _REGISTRY.get(tag) if tag else None
