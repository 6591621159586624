"""Per-sample information handed from a model to the task that scores it.

lmms-eval 0.7.3 passes only the answer text (and three token counters) from ``generate_until`` to the task's
``process_results``, and ``process_results`` receives the document but neither a ``doc_id`` nor the task name.
Both run in the same process (each rank scores its own documents), so a model of this plugin records what it knows
about one sample (failure reason, token counts, FLOPs, latency) here, keyed by :func:`sample_key`, and the task
reads it, then removes it once the sample is scored (lmms-eval retries a failed ``process_results``, so reading must
not consume the entry). Only tasks that declare ``metadata: {lrs_plugin_sample_stats: true}`` in their YAML
(:data:`STATS_METADATA_KEY`; lmms-eval copies task metadata into every request) get entries: a task that never reads
the store must not make it grow. This is the one process-level object of the plugin; it exists because the
harness offers no other channel, holds only pending samples, and is emptied as they are scored.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["SampleStatsStore", "STORE", "STATS_METADATA_KEY", "sample_key"]

#: Task metadata flag (YAML ``metadata:``) saying that the task's ``process_results`` reads :data:`STORE`.
STATS_METADATA_KEY = "lrs_plugin_sample_stats"


def sample_key(
    doc: Mapping[str, Any], *, task: str | None = None, split: str | None = None, doc_id: int | None = None
) -> str:
    """Key of one sample.

    A document with a ``question_id`` (this plugin's tasks) is keyed by its ``benchmark`` field and that id, which
    the task's ``process_results`` can rebuild from the document alone. Any other document is keyed by where it
    comes from, ``task/split/doc_id``.

    Raises:
        KeyError: the document has no ``question_id`` and ``task`` / ``doc_id`` are not given.
    """
    question_id = doc.get("question_id")
    if question_id is not None:
        return f"{doc.get('benchmark', '')}/{question_id}"
    if task is None or doc_id is None:
        raise KeyError("a document without question_id needs task, split and doc_id to name its sample")
    return f"{task}/{split}/{doc_id}"


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
