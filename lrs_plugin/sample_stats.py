"""Per-sample information handed from a model to the task that scores it.

lmms-eval 0.7.3 passes only the answer text (and three token counters) from ``generate_until`` to the task's
``process_results``, and ``process_results`` receives the document but neither a ``doc_id`` nor the task name.
Both run in the same process (each rank scores its own documents), so a model of this plugin records what it knows
about one sample (failure reason, token counts, FLOPs, latency) here, keyed by the document's unique question id,
and the task reads it, then removes it once the sample is scored (lmms-eval retries a failed ``process_results``,
so reading must not consume the entry). This is the one process-level object of the plugin; it exists because the
harness offers no other channel, holds only pending samples, and is emptied as they are scored.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["SampleStatsStore", "STORE", "sample_key"]


def sample_key(doc: Mapping[str, Any]) -> str:
    """Key of one sample: the document's ``benchmark`` field and its question id (unique within a benchmark)."""
    return f"{doc.get('benchmark', '')}/{doc['question_id']}"


class SampleStatsStore:
    """Thread-safe mapping from sample key to the stats a model recorded for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = {}

    def put(self, key: str, stats: Mapping[str, Any]) -> None:
        """Record (or replace) the stats of one sample."""
        with self._lock:
            self._items[key] = dict(stats)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stats of one sample, left in the store (``None`` when the model recorded nothing)."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else dict(item)

    def pop(self, key: str) -> dict[str, Any] | None:
        """Take the stats of one sample out of the store; ``None`` when the model recorded nothing."""
        with self._lock:
            return self._items.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        """Forget every pending sample."""
        with self._lock:
            self._items.clear()


#: The store shared by this plugin's models and tasks within one process.
STORE = SampleStatsStore()
