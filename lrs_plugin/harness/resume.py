"""Crash-safe resume for ``c2f_llava``: every finished answer is written to disk as soon as it exists.

lmms-eval 0.7.3 calls the model's ``generate_until`` once for all requests of all tasks, and its ``--use_cache``
writes nothing until that call returns (and is invalidated by any ``--model_args`` change), so a crash after hours
of generation loses everything. With ``resume_dir=PATH`` the model appends one JSON line per answer (text and the
per-sample record, TFLOPs included) to ``PATH/answers.rank<R>-of-<W>.jsonl`` and flushes + fsyncs it before moving
on; a rerun loads every ``answers.*.jsonl`` of the folder (so a store written with 4 processes serves a run with 2)
and generates only the answers it does not find.

An answer is found by :func:`answer_key` (:mod:`lrs_plugin.harness._resume_keys`): the task, document, prompt and
generation kwargs under :func:`settings_fingerprint`, so a change of any setting that can change an answer gives new
keys and stale answers are never served. Generation stops at the task's ``until`` stop strings, so each line also
records the ones it was generated with (``stop_strings``) and the model serves it only to a request with the same
ones; a line without that field (written when answers were generated to the end and cut afterwards) holds the whole
answer and serves any. The per-sample record is written as its JSON object
(:meth:`SampleRecord.to_dict <lrs_plugin.harness.record.SampleRecord.to_dict>`, field ``stats``). Failed samples
(e.g. an unreadable image, out of memory) are not stored, so a rerun retries them.

A line cut short by a kill (or written by another rank while this one reads) is skipped with a warning; before the
first append to its own file a rank truncates such a torn tail, so new lines never glue onto it. Every line also
carries :func:`record_checksum` of its own content (field ``line_sha256``): a line altered after it was written, or
one without a checksum (written before lines had one), is not served either; each file's count of such lines is
logged in one warning, and those answers are generated again.

A store that cannot be written (read-only or full disk, no permission: an ``OSError`` when the folder is created,
when this rank's file is opened, or on any write) does not end the run: one warning names the folder and the error,
the store stops writing (answers already loaded are still served), and :attr:`ResumeStore.disabled` tells the model
to mark each answer it generates from then on (record key :data:`RESUME_DISABLED_KEY`). With ``strict=True``
(``resume_strict=true``) a :class:`ResumeStoreError` naming the folder is raised instead.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loguru import logger

from lrs_plugin.errors import LrsPluginError, SampleRecordError
from lrs_plugin.harness._resume_keys import (
    RESUME_FORMAT,
    answer_key,
    checkpoint_fingerprint,
    digest,
    settings_fingerprint,
)
from lrs_plugin.harness.record import SampleRecord

__all__ = [
    "RESUME_DISABLED_KEY",
    "RESUME_FORMAT",
    "ResumeStoreError",
    "StoredAnswer",
    "ResumeStore",
    "answer_key",
    "checkpoint_fingerprint",
    "record_checksum",
    "settings_fingerprint",
]

#: Per-sample record key set to ``True`` on every answer generated while the store could not be written: the run
#: goes on, but a rerun would generate those answers again.
RESUME_DISABLED_KEY = "resume_disabled"

_CHECKSUM_FIELD = "line_sha256"
_CHECKSUM_HEX = 16  # 64 bits of SHA-256: catches any accidental or hand edit; not a signature

_PREFIX = "answers."
_SUFFIX = ".jsonl"


class ResumeStoreError(LrsPluginError, OSError):
    """The resume folder cannot be created, read or written (the message names the path)."""


@dataclass(frozen=True)
class StoredAnswer:
    """One finished answer as the model produced it.

    Attributes:
        raw_text: The answer text as generated: cut before the first of ``stop_strings``; the whole decoded answer
            when ``stop_strings`` is ``None``.
        record: The per-sample record handed to the task (:class:`~lrs_plugin.harness.record.SampleRecord`).
        stop_strings: The stop strings generation ended at; ``None`` for a line written before they were applied
            during generation (its text still holds everything after them).
    """

    raw_text: str
    record: SampleRecord
    stop_strings: tuple[str, ...] | None = None


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy / torch scalars in a record."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"record value {value!r} ({type(value).__name__}) is not JSON serializable")


def _stop_strings(value: Any) -> tuple[str, ...] | None:
    """A line's ``stop_strings`` (absent / ``null``: ``None``)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise TypeError(f"stop_strings={value!r} is not a list of strings")
    return tuple(value)


def record_checksum(record: Mapping[str, Any]) -> str:
    """Checksum of one store line: truncated SHA-256 of the canonical JSON of ``record`` without its checksum field.

    Args:
        record: The line's JSON object (plain JSON values, as read back).

    Returns:
        16 lowercase hex digits.
    """
    return digest({k: v for k, v in record.items() if k != _CHECKSUM_FIELD})[:_CHECKSUM_HEX]


def _read_file(path: Path, answers: dict[str, StoredAnswer]) -> int:
    """Add the answers of one store file; return how many lines were skipped.

    Raises:
        ResumeStoreError: the file cannot be read.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ResumeStoreError(f"cannot read resume file {path}: {exc}") from exc
    skipped = altered = unchecked = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines)  # no newline after it: the write was cut short
        try:
            line_obj = json.loads(line)
            key, raw_text, stats = line_obj["key"], line_obj["raw_text"], line_obj["stats"]
            if not isinstance(key, str) or not isinstance(raw_text, str) or not isinstance(stats, dict):
                raise TypeError("key/raw_text/stats have the wrong types")
            stops = _stop_strings(line_obj.get("stop_strings"))
            answer = StoredAnswer(raw_text, SampleRecord.from_dict(stats), stops)
        except (ValueError, KeyError, TypeError, SampleRecordError) as exc:
            skipped += 1
            what = "torn last line (a run was killed while writing it)" if torn else "malformed line"
            logger.warning("resume: {}, line {}: {} skipped ({}); it will be regenerated", path, number, what, exc)
            continue
        check = line_obj.get(_CHECKSUM_FIELD)
        if check is None:
            unchecked += 1
            continue
        if check != record_checksum(line_obj):
            altered += 1
            continue
        answers[key] = answer
    if altered:
        logger.warning(
            "resume: {}: {} lines skipped: their content does not match their checksum (changed after they were "
            "written); they are not served and will be regenerated",
            path,
            altered,
        )
    if unchecked:
        logger.warning(
            "resume: {}: {} lines skipped: they carry no checksum (written by an older lrs-plugin), so they are not "
            "trusted and will be regenerated",
            path,
            unchecked,
        )
    return skipped + altered + unchecked


class ResumeStore:
    """Answers of earlier (possibly killed) runs, and an append-only file for this rank's new ones.

    Args:
        folder: The resume folder (created if missing).
        rank: This process's global rank.
        world_size: Number of processes.
        strict: Raise :class:`ResumeStoreError` when the folder cannot be created, read or written, instead of
            warning once and going on without saving (:attr:`disabled`).

    Raises:
        ResumeStoreError: with ``strict``, the folder cannot be created, a store file cannot be read, or this rank's
            file cannot be opened for appending (the message names the folder and the OS error).
    """

    def __init__(self, folder: str | Path, *, rank: int, world_size: int, strict: bool = False) -> None:
        self.folder = Path(folder).expanduser()
        self.path = self.folder / f"{_PREFIX}rank{rank}-of-{world_size}{_SUFFIX}"
        self.strict = strict
        #: Why the store stopped writing (the OS error), or ``None`` while it writes.
        self.disabled_reason: str | None = None
        self._lock = threading.Lock()
        self._handle: IO[bytes] | None = None
        self._answers: dict[str, StoredAnswer] = {}
        self.skipped_lines = 0
        self.written = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._fail(f"cannot create resume_dir {self.folder}: {exc}", exc)
            self.loaded = 0
            return
        for path in sorted(self.folder.glob(f"{_PREFIX}*{_SUFFIX}")):
            try:
                self.skipped_lines += _read_file(path, self._answers)
            except ResumeStoreError as exc:
                if strict:
                    raise
                logger.warning("resume: {}; its answers will be regenerated", exc)
        self.loaded = len(self._answers)
        with self._lock:
            self._open()  # fail now, not hours later, when the folder cannot be written

    @property
    def disabled(self) -> bool:
        """``True`` once the store could not be written: nothing more is written, answers loaded are still served."""
        return self.disabled_reason is not None

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> StoredAnswer | None:
        """The stored answer for ``key`` (a copy of its record), or ``None``."""
        found = self._answers.get(key)
        return None if found is None else dataclasses.replace(found, record=copy.deepcopy(found.record))

    def put(
        self,
        key: str,
        raw_text: str,
        record: SampleRecord,
        *,
        stop_strings: Sequence[str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> bool:
        """Append one answer to this rank's file, flushed and fsync'd before returning.

        Args:
            key: :func:`answer_key` of the request.
            raw_text: The answer text as generated (cut before the first of ``stop_strings``).
            record: Its per-sample record (values JSON-serializable; numpy / torch scalars are converted).
            stop_strings: The stop strings generation ended at (the request's ``until``), recorded with the line.
            meta: Readable context stored with the line (task, doc id, question id); not used for lookups.

        Returns:
            ``True`` when the answer is on disk; ``False`` when the store is :attr:`disabled` (this write failed, or
            an earlier one did: no further write is attempted).

        Raises:
            ResumeStoreError: with ``strict``, the write failed (names the file and the OS error).
            TypeError: a record value is not JSON serializable (nothing is written; the store stays enabled).
            SampleRecordError: a record value does not fit its field (nothing is written).
        """
        line_obj: dict[str, Any] = {**(meta or {}), "key": key, "raw_text": raw_text, "stats": record.to_dict()}
        if stop_strings is not None:
            line_obj["stop_strings"] = list(stop_strings)
        line_obj = json.loads(json.dumps(line_obj, ensure_ascii=False, default=_jsonable))  # plain JSON, as read back
        line_obj[_CHECKSUM_FIELD] = record_checksum(line_obj)
        stored = StoredAnswer(
            line_obj["raw_text"], SampleRecord.from_dict(line_obj["stats"]), _stop_strings(line_obj.get("stop_strings"))
        )
        line = (json.dumps(line_obj, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            handle = self._open()
            if handle is None:
                return False
            try:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                self._fail(f"cannot write resume file {self.path}: {exc}", exc)
                return False
            self._answers[key] = stored
            self.written += 1
            return True

    def _open(self) -> IO[bytes] | None:
        """This rank's file, opened for appending on first use; ``None`` when the store is disabled."""
        if self._handle is None and not self.disabled:
            try:
                self._truncate_torn_tail()
                self._handle = open(self.path, "ab")  # noqa: SIM115 - kept open for the run, closed by close()
            except OSError as exc:
                self._fail(f"cannot open resume file {self.path} for appending: {exc}", exc)
        return self._handle

    def _fail(self, what: str, exc: OSError) -> None:
        """Raise (``strict``) or switch the store off with one loud warning."""
        if self.strict:
            raise ResumeStoreError(f"resume_dir {self.folder}: {what} (resume_strict=true stops the run)") from exc
        self.disabled_reason = f"{type(exc).__name__}: {exc}"
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:
                pass  # the buffered bytes cannot be written either; the next run cuts the torn tail
            self._handle = None
        logger.warning(
            "resume: RESUME DISABLED: {}. The run CONTINUES WITHOUT SAVING ANSWERS to resume_dir {}: answers "
            "generated from now on are not stored (their records carry {}=true) and a rerun would generate them again. "
            "Free space or fix the folder's permissions and rerun to complete the store, or set resume_strict=true "
            "to stop the run instead.",
            what,
            self.folder,
            RESUME_DISABLED_KEY,
        )

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
                try:
                    self._handle.close()
                except OSError as exc:
                    self._fail(f"cannot close resume file {self.path}: {exc}", exc)
                self._handle = None
