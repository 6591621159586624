"""Reading JSON-lines files with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["iter_json_objects"]


def iter_json_objects(
    path: str | Path, *, error: type[Exception], what: str = "file"
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Yield ``(where, line_number, object)`` for each non-blank line of a JSONL file.

    Args:
        path: The file.
        error: Exception class raised for an unreadable file, a malformed line or a line that is not an object.
        what: What the file is, for the message of an unreadable file (``"answers file"``).

    Yields:
        ``where`` is ``"<path>, line <n>"`` (1-based), for messages about that line.

    Raises:
        error: With the file, the line and what is wrong.
    """
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below, after the check
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise error(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise error(f"{where}: expected a JSON object, got {type(obj).__name__}")
                yield where, number, obj
        except UnicodeDecodeError as exc:
            raise error(f"cannot read {what} {path}: {exc}") from exc
