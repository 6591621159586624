"""Crash-safe resume for ``c2f_llava``: every finished answer is written to disk as soon as it exists.

lmms-eval 0.7.3 calls the model's ``generate_until`` once for all requests of all tasks, and its ``--use_cache``
writes nothing until that call returns (and is invalidated by any ``--model_args`` change), so a crash after hours
of generation loses everything. With ``resume_dir=PATH`` the model appends one JSON line per answer (text and the
per-sample stats, TFLOPs included) to ``PATH/answers.rank<R>-of-<W>.jsonl`` and flushes + fsyncs it before moving
on; a rerun loads every ``answers.*.jsonl`` of the folder (so a store written with 4 processes serves a run with 2)
and generates only the answers it does not find.

An answer is found by :func:`answer_key`: a SHA-256 of the task, split, document id, question id, image name,
prompt, generation kwargs (except ``until``, applied when serving) and :func:`settings_fingerprint` (checkpoint path
and ``config.json`` hash, reducer and all its options, dtype, attention implementation, ``max_new_tokens``,
``trust_remote_code``, plugin version). Any change of those gives new keys: stale answers are never served.
Failed samples (e.g. an unreadable image, out of memory) are not stored, so a rerun retries them.

A line cut short by a kill (or written by another rank while this one reads) is skipped with a warning; before the
first append to its own file a rank truncates such a torn tail, so new lines never glue onto it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loguru import logger

from lrs_plugin.errors import LrsPluginError

__all__ = [
    "RESUME_FORMAT",
    "ResumeStoreError",
    "StoredAnswer",
    "ResumeStore",
    "answer_key",
    "checkpoint_fingerprint",
    "settings_fingerprint",
]

#: Version of the line layout; part of every key, so a layout change never reads old lines as new ones.
RESUME_FORMAT = 1

_PREFIX = "answers."
_SUFFIX = ".jsonl"


class ResumeStoreError(LrsPluginError, OSError):
    """The resume folder cannot be created, read or written (the message names the path)."""


@dataclass(frozen=True)
class StoredAnswer:
    """One finished answer as the model produced it.

    Attributes:
        raw_text: The decoded answer before the task's ``until`` stop strings are applied.
        stats: The per-sample stats handed to the task (:mod:`lrs_plugin.sample_stats`).
    """

    raw_text: str
    stats: dict[str, Any]


def _digest(obj: Any) -> str:
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def checkpoint_fingerprint(pretrained: str) -> dict[str, str | None]:
    """Identify a checkpoint by its path and the SHA-256 of its ``config.json``.

    Args:
        pretrained: A local checkpoint folder or a Hub id.

    Returns:
        ``{"path": ..., "config_sha256": ...}``; the path is absolute for a local folder, and the hash is ``None``
        when there is no local ``config.json`` (a Hub id: the id itself identifies it). Weights replaced in place
        under an unchanged path and config are not detected: use a new ``resume_dir`` then.
    """
    path = Path(pretrained).expanduser()
    config = path / "config.json"
    if config.is_file():
        return {"path": str(path.resolve()), "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()}
    return {"path": pretrained, "config_sha256": None}


def settings_fingerprint(settings: Any, *, plugin_version: str) -> str:
    """Hash of every model-wide setting that can change an answer.

    Args:
        settings: A :class:`lrs_plugin.model_args.ModelSettings`.
        plugin_version: ``lrs_plugin.__version__``.

    Returns:
        A hex SHA-256. Device, device map, tile batch size and the resume options themselves are left out: they do
        not change answers, and leaving the device out lets stores move between world sizes.
    """
    return _digest(
        {
            "format": RESUME_FORMAT,
            "plugin_version": plugin_version,
            "checkpoint": checkpoint_fingerprint(settings.pretrained),
            "reducer": settings.reducer,
            "reducer_options": dict(settings.reducer_options),
            "dtype": settings.dtype,
            "attn_implementation": settings.attn_implementation,
            "trust_remote_code": settings.trust_remote_code,
            "max_new_tokens": settings.max_new_tokens,
            # Only when set, so stores written before the option existed keep their hash.
            **({"vision_dtype": settings.vision_dtype} if settings.vision_dtype is not None else {}),
        }
    )


def answer_key(
    *,
    settings_hash: str,
    task: str,
    split: str,
    doc_id: int,
    doc: Mapping[str, Any],
    context: str,
    gen_kwargs: Mapping[str, Any],
) -> str:
    """Key of one answer in the store.

    Args:
        settings_hash: :func:`settings_fingerprint` of the model.
        task: lmms-eval task name.
        split: Dataset split.
        doc_id: Index of the document in the split.
        doc: The document (its ``question_id`` and ``image`` name are part of the key when they are plain values;
            a decoded image in the document, as in lmms-eval's built-in tasks, is not).
        context: The prompt text.
        gen_kwargs: The task's generation kwargs; ``until`` is left out (the store keeps the text before it is
            applied).

    Returns:
        A hex SHA-256.
    """
    kwargs = {k: v for k, v in gen_kwargs.items() if k != "until"}
    return _digest(
        {
            "settings": settings_hash,
            "task": task,
            "split": split,
            "doc_id": int(doc_id),
            "question_id": _plain(doc.get("question_id")),
            "image": _plain(doc.get("image")),  # a file name in this plugin's tasks; pixels elsewhere: left out
            "context": context,
            "gen_kwargs": kwargs,
        }
    )


def _plain(value: Any) -> Any:
    """``value`` when it is a JSON scalar, else ``None`` (a PIL image or bytes held by the document)."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else None


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy / torch scalars in stats."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"stats value {value!r} ({type(value).__name__}) is not JSON serializable")


def _read_file(path: Path, answers: dict[str, StoredAnswer]) -> int:
    """Add the answers of one store file; return how many lines were skipped."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ResumeStoreError(f"cannot read resume file {path}: {exc}") from exc
    skipped = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines)  # no newline after it: the write was cut short
        try:
            record = json.loads(line)
            key, raw_text, stats = record["key"], record["raw_text"], record["stats"]
            if not isinstance(key, str) or not isinstance(raw_text, str) or not isinstance(stats, dict):
                raise TypeError("key/raw_text/stats have the wrong types")
        except (ValueError, KeyError, TypeError) as exc:
            skipped += 1
            what = "torn last line (a run was killed while writing it)" if torn else "malformed line"
            logger.warning("resume: {}, line {}: {} skipped ({}); it will be regenerated", path, number, what, exc)
            continue
        answers[key] = StoredAnswer(raw_text=raw_text, stats=stats)
    return skipped


class ResumeStore:
    """Answers of earlier (possibly killed) runs, and an append-only file for this rank's new ones.

    Args:
        folder: The resume folder (created if missing).
        rank: This process's global rank.
        world_size: Number of processes.
    """

    def __init__(self, folder: str | Path, *, rank: int, world_size: int) -> None:
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResumeStoreError(f"cannot create resume_dir {self.folder}: {exc}") from exc
        self.path = self.folder / f"{_PREFIX}rank{rank}-of-{world_size}{_SUFFIX}"
        self._lock = threading.Lock()
        self._handle: IO[bytes] | None = None
        self._answers: dict[str, StoredAnswer] = {}
        self.skipped_lines = 0
        for path in sorted(self.folder.glob(f"{_PREFIX}*{_SUFFIX}")):
            self.skipped_lines += _read_file(path, self._answers)
        self.loaded = len(self._answers)
        self.written = 0

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> StoredAnswer | None:
        """The stored answer for ``key`` (a copy of its stats), or ``None``."""
        found = self._answers.get(key)
        return None if found is None else StoredAnswer(found.raw_text, json.loads(json.dumps(found.stats)))

    def put(self, key: str, raw_text: str, stats: Mapping[str, Any], *, meta: Mapping[str, Any] | None = None) -> None:
        """Append one answer to this rank's file, flushed and fsync'd before returning.

        Args:
            key: :func:`answer_key` of the request.
            raw_text: The answer before ``until`` is applied.
            stats: Its per-sample stats (JSON-serializable; numpy / torch scalars are converted).
            meta: Readable context stored with the line (task, doc id, question id); not used for lookups.
        """
        record = {**(meta or {}), "key": key, "raw_text": raw_text, "stats": dict(stats)}
        line = (json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n").encode("utf-8")
        with self._lock:
            handle = self._open()
            try:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise ResumeStoreError(f"cannot write resume file {self.path}: {exc}") from exc
            self._answers[key] = StoredAnswer(raw_text=raw_text, stats=json.loads(json.dumps(record["stats"])))
            self.written += 1

    def _open(self) -> IO[bytes]:
        if self._handle is None:
            try:
                self._truncate_torn_tail()
                self._handle = open(self.path, "ab")  # noqa: SIM115 - kept open for the run, closed by close()
            except OSError as exc:
                raise ResumeStoreError(f"cannot open resume file {self.path}: {exc}") from exc
        return self._handle

    def _truncate_torn_tail(self) -> None:
        """Cut an incomplete last line (left by a kill) so the next line starts on a line of its own."""
        if not self.path.exists():
            return
        with open(self.path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            end = handle.read().rfind(b"\n") + 1
            logger.warning("resume: dropping the torn last line of {} ({} bytes)", self.path, size - end)
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        """Close this rank's file (further :meth:`put` calls reopen it)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
