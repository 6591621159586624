"""Tell a local checkpoint folder from a Hub id before transformers sees ``pretrained``.

transformers hands every value that is not an existing folder to the Hub resolver, so a mistyped local path fails
with ``Repo id must use alphanumeric chars ...``. :func:`resolve_pretrained` refuses such values first, with a
message naming the path. The rule: a Hub id is exactly ``name`` or ``org/name``, each part made of
``[A-Za-z0-9._-]``, starting and ending with a letter, digit or ``_``, without ``--`` or ``..`` (the rule of
``huggingface_hub.utils.validate_repo_id``, ASCII only). Anything else (absolute, ``./``, ``../``, ``~``, more than
one ``/``, a backslash, a space) is a path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lrs_plugin.errors import CheckpointNotFoundError

__all__ = ["is_hub_id", "resolve_pretrained"]

_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?:{_PART}/)?{_PART}")
_EXPECTED = (
    "expected a folder holding config.json (a transformers checkpoint, e.g. written by save_pretrained or "
    "`lrs-plugin convert`) or a Hub id 'org/name' (letters, digits, '.', '_', '-'; "
    "e.g. 'lmms-lab/llava-onevision-qwen2-7b-ov')"
)


def is_hub_id(value: str) -> bool:
    """Whether ``value`` has the form of a Hub model id (``name`` or ``org/name``); nothing is looked up."""
    name = value.rsplit("/", 1)[-1]
    return bool(_HUB_ID.fullmatch(value)) and "--" not in value and ".." not in value and len(name) <= 96


def resolve_pretrained(value: str | os.PathLike[str]) -> str | Path:
    """Check a ``pretrained`` value: an existing checkpoint folder, or a Hub id left to transformers unchanged.

    A value is taken as a local path when it is a ``PathLike``, when it exists on disk, or when it is not of the Hub
    id form (:func:`is_hub_id`). A Hub-id-shaped value that does not exist locally is returned as given (the Hub
    resolver, or its cache offline, decides); ``~`` is expanded in local paths.

    Args:
        value: The ``pretrained`` setting (folder or Hub id).

    Returns:
        The Hub id unchanged (``str``), or the local folder as a :class:`~pathlib.Path`.

    Raises:
        CheckpointNotFoundError: A local path that does not exist, is not a folder, or holds no ``config.json``;
            names the path and what is expected.
    """
    text = os.fspath(value)
    path = Path(text).expanduser()
    if not isinstance(value, os.PathLike) and not path.exists() and is_hub_id(text):
        return text
    shown = str(path.absolute())
    if not path.exists():
        raise CheckpointNotFoundError(f"pretrained={text!r}: checkpoint folder {shown!r} not found; {_EXPECTED}")
    if not path.is_dir():
        raise CheckpointNotFoundError(f"pretrained={text!r}: {shown!r} is a file, not a checkpoint folder; {_EXPECTED}")
    if not (path / "config.json").is_file():
        raise CheckpointNotFoundError(
            f"pretrained={text!r}: folder {shown!r} holds no config.json, so it is not a checkpoint; {_EXPECTED}"
        )
    return path
