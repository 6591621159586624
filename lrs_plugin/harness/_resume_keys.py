"""Keys of the resume store: which answer a request asks for, under which model settings.

Plumbing of :mod:`lrs_plugin.harness.resume` (which re-exports every public name here). An answer is found by
:func:`answer_key`: a SHA-256 of the task, split, document id, question id, image name, prompt, generation kwargs
(except ``until``) and :func:`settings_fingerprint` (checkpoint path and ``config.json`` hash, plugin version and
every setting that can change an answer, as :func:`lrs_plugin.harness.settings.answer_settings` defines it: reducer
and all its options, dtype, vision dtype, device, device map, attention implementation, ``trust_remote_code``, tile
batch size, ``max_new_tokens``). Any change of those gives new keys: stale answers are never served. Stores written
before the fingerprint read ``answer_settings`` (when device, device map and tile batch size did not count) have
other keys: their answers are generated again, never served under the wider definition.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lrs_plugin.harness.settings import ModelSettings, answer_settings

__all__ = ["RESUME_FORMAT", "answer_key", "checkpoint_fingerprint", "digest", "settings_fingerprint"]

#: Version of the line layout; part of every key, so a layout change never reads old lines as new ones.
RESUME_FORMAT = 1


def digest(obj: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``obj`` (sorted keys, no spaces; ``repr`` for anything else)."""
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


def settings_fingerprint(settings: ModelSettings, *, plugin_version: str) -> str:
    """Hash of every model-wide setting that can change an answer.

    Args:
        settings: The model's settings.
        plugin_version: ``lrs_plugin.__version__``.

    Returns:
        A hex SHA-256 of :func:`lrs_plugin.harness.settings.answer_settings` (the settings whose metadata says they
        can change an answer; the leaderboard's ``config_hash`` reads the same), with the checkpoint identified by
        :func:`checkpoint_fingerprint`, the line format and the plugin version. ``image_cache`` and the resume
        options are left out; ``device`` counts as given (the default, each rank's own device, lets a store move
        between world sizes).
    """
    answers = answer_settings(settings)
    answers.pop("pretrained")
    return digest(
        {
            "format": RESUME_FORMAT,
            "plugin_version": plugin_version,
            "checkpoint": checkpoint_fingerprint(settings.pretrained),
            "settings": answers,
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
        gen_kwargs: The task's generation kwargs; ``until`` is left out (each answer records its stop strings, see
            :class:`StoredAnswer`).

    Returns:
        A hex SHA-256.
    """
    kwargs = {k: v for k, v in gen_kwargs.items() if k != "until"}
    return digest(
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
