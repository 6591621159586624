"""``leaderboard.csv``: build rows from lmms-eval results, validate, submit under a lock, render.

The schema (fixed column order, formats, sort) is documented column by column in ``docs/leaderboard.md``. Typical
use::

    lrs-plugin leaderboard submit results/<model>/<date>_results.json --hardware "1x H100-80GB" --link URL
    lrs-plugin leaderboard validate leaderboard.csv
    lrs-plugin leaderboard render --readme README.md --plot docs/leaderboard.png

Writes are atomic (a temporary file ``.<csv name>.<random>.tmp`` in the same folder, then ``os.replace``) and
serialised by a ``filelock.FileLock`` on ``<csv>.lock``, so concurrent submissions neither corrupt the file nor lose
rows. A process killed between the two leaves the previous file and a stale temporary file, which the next
``submit`` / ``seed`` of that file removes (under the lock, where no live writer can own one). The command-line face
(``add_cli``, ``run_cli``, ``main``) is :mod:`lrs_plugin.commands.leaderboard`, re-exported here.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_plugin.commands.leaderboard import add_cli, main, run_cli
from lrs_plugin.leaderboard.paper import paper_rows
from lrs_plugin.leaderboard.render import markdown_table, plot_png, replace_between_markers
from lrs_plugin.leaderboard.results import build_row
from lrs_plugin.leaderboard.schema import (
    COLUMN_NAMES,
    COLUMNS,
    KEY_COLUMNS,
    MAX_CELL_CHARS,
    MAX_LINK_CHARS,
    OPTIONAL_COLUMNS,
    LeaderboardError,
    describe_key,
    format_cell,
    parse_row,
    row_key,
    shown,
    sort_rows,
    validate_rows,
)

__all__ = [
    "COLUMNS",
    "COLUMN_NAMES",
    "KEY_COLUMNS",
    "LeaderboardError",
    "MAX_CELL_CHARS",
    "MAX_LINK_CHARS",
    "RenderReport",
    "add_cli",
    "build_row",
    "main",
    "paper_rows",
    "read_rows",
    "render",
    "run_cli",
    "seed",
    "submit",
    "validate_file",
    "validate_rows",
]

LOCK_TIMEOUT_S = 120.0
"""How long a submission waits for another one to finish before giving up."""


def _lock(csv_path: Path) -> Any:
    from filelock import FileLock

    return FileLock(str(csv_path) + ".lock", timeout=LOCK_TIMEOUT_S)


def _read_raw(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and records of a CSV file.

    Every failure to read it is a :class:`LeaderboardError` naming the file, and the line for CSV errors such as a
    cell over the csv module's field size limit (131,072 characters).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's "CSV UTF-8" starts with a BOM
    except FileNotFoundError as exc:
        raise LeaderboardError(f"leaderboard file {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise LeaderboardError(f"leaderboard file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise LeaderboardError(f"leaderboard file {path} is not readable: {exc}") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    records = []
    try:
        header = next(reader, [])
        for cells in reader:
            if len(cells) != len(header):
                raise LeaderboardError(f"{path}:{reader.line_num}: {len(cells)} cells, the header has {len(header)}")
            records.append(dict(zip(header, cells, strict=True)))
    except csv.Error as exc:
        raise LeaderboardError(
            f"{path}:{reader.line_num}: not readable as CSV ({exc}); cells hold at most {MAX_CELL_CHARS} characters "
            f"({MAX_LINK_CHARS} for results_link): fix or remove that line"
        ) from exc
    return header, records


def validate_file(path: str | Path = "leaderboard.csv") -> list[str]:
    """Every problem of a leaderboard file: its header (exact columns in order) and :func:`validate_rows`.

    A header without some of :data:`OPTIONAL_COLUMNS` (a file from before they existed) is valid; those cells are empty.
    """
    path = Path(path)
    try:
        header, records = _read_raw(path)
    except LeaderboardError as exc:
        return [str(exc)]
    errors = []
    expected = tuple(c for c in COLUMN_NAMES if c in header or c not in OPTIONAL_COLUMNS)  # older files lack those
    if tuple(header) != expected:
        missing = [c for c in COLUMN_NAMES if c not in header]
        unknown = [c for c in header if c not in COLUMN_NAMES]
        errors.append(
            f"{path}: header is not the schema's columns in order (missing {missing}, unknown {shown(unknown, 200)}); "
            f"expected: {','.join(COLUMN_NAMES)}"
        )
        if missing or unknown:
            return errors
    errors += [f"{path}: {e}" for e in validate_rows(records)]
    return errors


def read_rows(path: str | Path = "leaderboard.csv") -> list[dict[str, Any]]:
    """The typed rows of a valid leaderboard file.

    Raises:
        LeaderboardError: the file is missing or invalid (every problem listed).
    """
    errors = validate_file(path)
    if errors:
        raise LeaderboardError("\n".join(errors))
    _, records = _read_raw(Path(path))
    return [parse_row(r)[0] for r in records]


def _to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMN_NAMES)
    for row in rows:
        writer.writerow([format_cell(c, row[c]) for c in COLUMN_NAMES])
    return buffer.getvalue()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _file_mode(path: Path) -> int:
    """Permission bits for a rewrite of ``path``: its own, or (new file) what ``open`` would give under the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # elsewhere: set and restore (briefly process-wide; 077 is the safe side)
    os.umask(umask)
    return umask


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, fsync it, and ``os.replace`` it over ``path``.

    The file keeps its permission bits (``mkstemp`` creates 0600 files); the folder is fsynced after the rename
    where the platform allows, so the new name survives a power cut too.
    """
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            if hasattr(os, "fchmod"):  # not on Windows
                os.fchmod(f.fileno(), _file_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Delete the temporary files of killed writes of ``path``. Call with its lock held: no live writer has one."""
    for stale in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass  # not ours to fight over (permissions); it never blocks a write, mkstemp picks a new name


def _checked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    errors = validate_rows(rows)
    if errors:
        raise LeaderboardError("\n".join(errors))
    return sort_rows([parse_row(r)[0] for r in rows])


def submit(
    results: str | Path | Mapping[str, Any],
    csv_path: str | Path = "leaderboard.csv",
    *,
    replace: bool = False,
    **identity: Any,
) -> dict[str, Any]:
    """Add one measured row to ``csv_path`` (created if missing), atomically and under a file lock.

    Args:
        results: an lmms-eval results file (the row is built by :func:`build_row` with ``identity``), or a row.
        csv_path: the leaderboard file.
        replace: replace the row with the same key (:data:`KEY_COLUMNS`) instead of refusing it.
        **identity: keyword arguments of :func:`build_row` (``samples``, ``model``, ``method``, ``setting``,
            ``hardware``, ``link``, ``backbone``, ``vision_encoder``, ``llm``, ``train_data``).

    Returns:
        The row as written (typed).

    Raises:
        LeaderboardError: the row or the existing file is invalid, the row is not ``source=measured``, or its key
            is already in the file and ``replace`` is false.
    """
    if isinstance(results, Mapping):
        if identity:
            raise LeaderboardError(f"identity options {sorted(identity)} apply to a results file, not to a row")
        row = dict(results)
    else:
        row = build_row(results, **identity)
    errors = validate_rows([row])
    if errors:
        raise LeaderboardError("\n".join(errors))
    row = parse_row(row)[0]
    if row["source"] != "measured":
        raise LeaderboardError(f"submit adds source=measured rows only, not source={shown(row['source'])}; see seed()")
    path = Path(csv_path)
    with _lock(path):
        _remove_stale_temps(path)
        rows = read_rows(path) if path.exists() else []
        key = row_key(row)
        if any(row_key(r) == key for r in rows) and not replace:
            raise LeaderboardError(
                f"{path} already has a row with key {describe_key(key)}; pass replace=True (--replace) to replace it"
            )
        rows = _checked([r for r in rows if row_key(r) != key] + [row])
        _write_atomic(path, _to_csv(rows))
    return row


def seed(csv_path: str | Path = "leaderboard.csv") -> int:
    """Write the paper's rows into ``csv_path``, replacing its ``source=paper`` rows and keeping measured ones.

    Returns:
        The number of rows in the file.
    """
    path = Path(csv_path)
    with _lock(path):
        _remove_stale_temps(path)
        kept = [r for r in read_rows(path) if r["source"] != "paper"] if path.exists() else []
        rows = _checked(paper_rows() + kept)
        _write_atomic(path, _to_csv(rows))
    return len(rows)


@dataclass(frozen=True)
class RenderReport:
    """What :func:`render` did."""

    # The markdown table (also written into the README when it has the markers).
    markdown: str
    # True: written between the markers; False: the README has no markers (nothing written); None: no README.
    readme_updated: bool | None
    # The PNG written, if any.
    plot: Path | None
    # Accuracy column on the plot's y axis (None when no row has both an accuracy and TFLOPs).
    plot_metric: str | None
    # Rows drawn on the plot.
    plot_points: int


def render(
    csv_path: str | Path = "leaderboard.csv", *, readme: str | Path | None = None, plot: str | Path | None = None
) -> RenderReport:
    """Render the leaderboard as markdown (into ``readme`` between the markers) and as a PNG plot.

    The README is rewritten (atomically) only when it contains ``<!-- leaderboard:start -->`` followed by
    ``<!-- leaderboard:end -->``; otherwise it is left untouched and ``readme_updated`` is False.
    """
    rows = read_rows(csv_path)
    table = markdown_table(rows)
    updated: bool | None = None
    if readme is not None:
        readme_path = Path(readme)
        new = replace_between_markers(readme_path.read_text(encoding="utf-8"), table)
        updated = new is not None
        if new is not None:
            _write_atomic(readme_path, new)
    metric, points = (None, 0)
    if plot is not None:
        metric, points = plot_png(rows, plot)
    return RenderReport(table, updated, Path(plot) if plot is not None else None, metric, points)
