"""Schema of ``leaderboard.csv``: the columns in their fixed order, cell formatting, row validation and sorting.

Documented column by column in ``docs/leaderboard.md``. A row in memory is a ``dict`` with every column name as a
key; numeric cells hold ``float`` or ``None``, text cells hold ``str`` (``""`` when unknown). Rows read from a file
hold strings; :func:`parse_row` turns them into typed rows.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lrs_plugin.data.lrs_vqa import SUBSETS
from lrs_plugin.errors import LrsPluginError

__all__ = [
    "ACCURACY_COLUMNS",
    "COLUMNS",
    "COLUMN_NAMES",
    "KEY_COLUMNS",
    "LRS_SUBSET_COLUMNS",
    "MAX_CELL_CHARS",
    "MAX_LINK_CHARS",
    "MME_CATEGORIES",
    "OPTIONAL_COLUMNS",
    "SCORING_VALUES",
    "SOURCES",
    "Column",
    "LeaderboardError",
    "category_column",
    "cell_limit",
    "describe_key",
    "format_cell",
    "parse_row",
    "row_key",
    "shown",
    "sort_rows",
    "validate_rows",
]


class LeaderboardError(LrsPluginError, ValueError):
    """A leaderboard row or file breaks the schema, or a results file cannot become a row (the message says why)."""


@dataclass(frozen=True)
class Column:
    """One column of ``leaderboard.csv``."""

    # Header name, exactly as written in the file.
    name: str
    # "text", "percent" (0-100, "%.2f") or "number" (>= 0, "%.6g").
    kind: str
    # "identity", "accuracy", "category", "efficiency" or "provenance".
    group: str
    # One-line description (the full one is in docs/leaderboard.md).
    doc: str

    def __post_init__(self) -> None:
        if self.kind not in ("text", "percent", "number"):
            raise ValueError(f"column {self.name!r}: kind {self.kind!r} is not one of text, percent, number")


LRS_SUBSET_COLUMNS: dict[str, str] = {"FAIR": "lrs_fair", "GLH-Bridge": "lrs_bridge", "STAR": "lrs_star"}
"""LRS-VQA source dataset (``lrs_plugin.data.lrs_vqa.SUBSETS`` key) -> accuracy column."""

MME_CATEGORIES: tuple[str, ...] = ("color", "count", "position")
"""MME-RealWorld Remote Sensing categories."""

SOURCES = ("paper", "measured")
"""Allowed values of ``source``."""

SCORING_VALUES = (
    "paper",
    "wordnet",
    "exact",
    "official",
    "strict",
    "wordnet+official",
    "wordnet+strict",
    "exact+official",
    "exact+strict",
)
"""Allowed values of ``scoring``: ``paper`` (the authors' own scorer) or ``<lrs synonyms>+<mme extraction>``."""


def category_column(prefix: str, category: str) -> str:
    """``("lrs_fair", "object category") -> "lrs_fair.object_category"``."""
    return f"{prefix}.{category.replace(' ', '_')}"


def _columns() -> tuple[Column, ...]:
    text, pct, num = "text", "percent", "number"
    cols = [
        Column("model", text, "identity", "model / checkpoint name"),
        Column("backbone", text, "identity", "architecture the method is applied to"),
        Column("vision_encoder", text, "identity", "vision encoder"),
        Column("llm", text, "identity", "language model"),
        Column("train_data", text, "identity", "size of the SFT data"),
        Column("method", text, "identity", "token reducer / method (none = vanilla)"),
        Column("setting", text, "identity", "resolution / tile / token budget or non-default model_args"),
        Column("max_size", text, "identity", "largest input resolution, WxH"),
        Column("avg_acc", pct, "accuracy", "mean of the four benchmark columns"),
        Column("mme_rw_rs", pct, "accuracy", "MME-RealWorld-RS accuracy (pooled)"),
    ]
    cols += [Column(c, pct, "accuracy", f"LRS-VQA {s} AA (mean of category accuracies)") for s, c in _lrs_items()]
    cols += [Column(category_column("mme_rw_rs", c), pct, "category", f"MME-RW-RS {c}") for c in MME_CATEGORIES]
    for subset, prefix in _lrs_items():
        cols += [Column(category_column(prefix, c), pct, "category", f"{subset} {c}") for c in SUBSETS[subset]]
    cols += [
        Column("vision_tokens_encoded", num, "efficiency", "vision tokens out of the vision encoder, per question"),
        Column("vision_tokens_to_llm", num, "efficiency", "vision tokens given to the LLM, per question"),
        Column("tflops", num, "efficiency", "TFLOPs per question"),
        Column("latency_s", num, "efficiency", "seconds per question"),
        Column("ttft_s", num, "efficiency", "seconds to the first generated token, per question (measured)"),
        Column("peak_memory_mib", num, "efficiency", "peak memory per question in MiB (measured; CUDA or CPU RSS)"),
        Column("fps", num, "efficiency", "questions per second (paper)"),
        Column("hardware", text, "efficiency", "device of latency_s / fps"),
        Column("source", text, "provenance", "paper or measured"),
        Column("scoring", text, "provenance", "scoring rules"),
        Column("plugin_version", text, "provenance", "lrs-plugin version"),
        Column("lmms_eval_version", text, "provenance", "lmms-eval version"),
        Column("config_hash", text, "provenance", "sha256 of the canonical model_args and task versions"),
        Column("date", text, "provenance", "date of the evaluation, YYYY-MM-DD"),
        Column("results_link", text, "provenance", "where the results file (or the paper) is"),
        Column("reference", text, "provenance", "what the numbers are taken from"),
    ]
    return tuple(cols)


def _lrs_items() -> list[tuple[str, str]]:
    return [(subset, LRS_SUBSET_COLUMNS[subset]) for subset in SUBSETS]


COLUMNS: tuple[Column, ...] = _columns()
"""Every column, in file order."""

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
"""Header of ``leaderboard.csv``."""

_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}

ACCURACY_COLUMNS: tuple[str, ...] = ("mme_rw_rs", "lrs_fair", "lrs_bridge", "lrs_star")
"""The four benchmark columns averaged into ``avg_acc``."""

OPTIONAL_COLUMNS: tuple[str, ...] = ("ttft_s", "peak_memory_mib")
"""Columns added after the first schema: a file or row without them reads them as empty (the next write adds them)."""

_MEASURED_ON_HARDWARE = ("latency_s", "fps", "ttft_s", "peak_memory_mib")

KEY_COLUMNS: tuple[str, ...] = ("model", "method", "setting", "source", "scoring")
"""Columns that identify a row: two rows with equal keys are duplicates."""

_REQUIRED = {
    "paper": ("model", "method", "setting", "source", "scoring", "reference", "results_link"),
    "measured": (
        "model",
        "method",
        "setting",
        "source",
        "scoring",
        "plugin_version",
        "lmms_eval_version",
        "config_hash",
        "date",
        "results_link",
    ),
}
MAX_CELL_CHARS = 1000
"""Longest cell (characters) of every column but ``results_link``; the longest paper cell has 81."""

MAX_LINK_CHARS = 2048
"""Longest ``results_link`` (a URL; browsers and servers commonly stop near 2,000 characters)."""

SHOWN_CHARS = 80
"""Characters of a user value quoted in an error message before it is cut with ``...``."""

# OWASP's CSV-injection prefixes: a spreadsheet runs a cell starting with one of them as a formula.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Invisible text-direction controls: they make a rendered name read as another ("Trojan Source").
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ROUND_TOLERANCE = 0.02  # two cells rounded to 0.01 each: their mean may differ from the rounded mean by this much


def cell_limit(column: str) -> int:
    """The most characters a cell of ``column`` may hold (:data:`MAX_LINK_CHARS` or :data:`MAX_CELL_CHARS`)."""
    return MAX_LINK_CHARS if column == "results_link" else MAX_CELL_CHARS


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``value`` as an error message quotes it, escaped and cut.

    ``repr`` escapes control characters, ANSI escapes and line breaks, so nothing a user typed reaches the terminal
    raw; a value longer than ``limit`` characters is cut there, followed by ``...`` and its length.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def format_cell(column: str, value: Any) -> str:
    """The CSV text of one cell: ``%.2f`` for percent columns, ``%.6g`` for other numbers, text as is."""
    if value is None or value == "":
        return ""
    kind = _BY_NAME[column].kind
    if kind in ("percent", "number"):
        number = float(value) or 0.0  # -0.0 is written "0", not "-0"
        return f"{number:.2f}" if kind == "percent" else f"{number:.6g}"
    return str(value)


def _parse_number(column: str, value: Any, errors: list[str], where: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        errors.append(f"{where}: {column}={shown(value)} is not a number")
        return None
    if isinstance(value, str) and len(value) > cell_limit(column):
        errors.append(f"{where}: {_too_long(column, value)}")
        return None
    try:
        number = float(value)
    except ValueError:
        errors.append(f"{where}: {column}={shown(value)} is not a number")
        return None
    if not math.isfinite(number):
        errors.append(f"{where}: {column}={shown(value)} is not a finite number")
        return None
    return number


def _too_long(column: str, value: str) -> str:
    return f"{column} is {len(value)} characters long, the limit is {cell_limit(column)} ({shown(value, 40)})"


def parse_row(row: Mapping[str, Any], where: str = "row") -> tuple[dict[str, Any], list[str]]:
    """Type the cells of one row (strings from a CSV or typed values) and return it with the type errors found."""
    errors: list[str] = []
    unknown = [k for k in row if k not in _BY_NAME]
    if unknown:
        errors.append(f"{where}: unknown column(s) {shown(sorted(unknown, key=str), 200)}; known: {list(COLUMN_NAMES)}")
    missing = [c for c in COLUMN_NAMES if c not in row and c not in OPTIONAL_COLUMNS]
    if missing:
        errors.append(f"{where}: missing column(s) {missing}")
    typed: dict[str, Any] = {}
    for col in COLUMNS:
        value = row.get(col.name)
        if col.kind == "text":
            if value is None:
                value = ""
            if not isinstance(value, str):
                errors.append(f"{where}: {col.name}={shown(value)} must be text")
                value = str(value)
            typed[col.name] = value
        else:
            typed[col.name] = _parse_number(col.name, value, errors, where)
    return typed, errors


def row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The identity of a row (:data:`KEY_COLUMNS`)."""
    return tuple(str(row.get(c) or "") for c in KEY_COLUMNS)


def describe_key(key: tuple[str, ...]) -> str:
    """``model=... method=... setting=... source=... scoring=...`` for messages."""
    return " ".join(f"{c}={shown(v)}" for c, v in zip(KEY_COLUMNS, key, strict=True))


def _text_problem(column: str, value: str) -> str | None:
    """What is wrong with one text cell (the first problem found), or None."""
    if len(value) > cell_limit(column):
        return _too_long(column, value)
    # " =1+1" too: a spreadsheet that trims cells on import would run it.
    first = value[:1] if value.startswith(_FORMULA_PREFIXES) else value.lstrip()[:1]
    if first and first in _FORMULA_PREFIXES:
        allowed = " ".join(repr(p) if p in "\t\r" else p for p in _FORMULA_PREFIXES)
        return (
            f"{column}={shown(value)} starts with {first!r}; a spreadsheet would run it as a formula "
            f"(text cells may not start with {allowed}, even after white space)"
        )
    if any(ch in value for ch in "\r\n\u2028\u2029"):
        return f"{column}={shown(value)} contains a line break"
    if any(unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS for ch in value):
        return f"{column}={shown(value)} contains a control character (tab, escape, NUL, bidi override, ...)"
    return None


def _check_row(row: Mapping[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    for col in COLUMNS:
        value = row[col.name]
        if col.kind == "text":
            problem = _text_problem(col.name, value)
            if problem:
                errors.append(f"{where}: {problem}")
        elif value is not None:
            if col.kind == "percent" and not 0.0 <= value <= 100.0:
                errors.append(f"{where}: {col.name}={shown(value)} is outside 0-100 (accuracies are in percent)")
            if col.kind == "number" and value < 0:
                errors.append(f"{where}: {col.name}={shown(value)} is negative")
    source = row["source"]
    if source not in SOURCES:
        errors.append(f"{where}: source={shown(source)} is not one of {list(SOURCES)}")
    else:
        for name in _REQUIRED[source]:
            if not row[name]:
                errors.append(f"{where}: {name} is required for source={source} rows")
    if row["scoring"] and row["scoring"] not in SCORING_VALUES:
        errors.append(f"{where}: scoring={shown(row['scoring'])} is not one of {list(SCORING_VALUES)}")
    if source == "measured":
        if row["date"] and not _DATE.match(row["date"]):
            errors.append(f"{where}: date={shown(row['date'])} is not YYYY-MM-DD")
        if row["config_hash"] and not _SHA256.match(row["config_hash"]):
            errors.append(f"{where}: config_hash={shown(row['config_hash'])} is not a sha256 hex digest")
        if row["scoring"] == "paper":
            errors.append(f"{where}: scoring=paper is only for source=paper rows")
    if any(row[c] is not None for c in _MEASURED_ON_HARDWARE) and not row["hardware"]:
        errors.append(f"{where}: {' / '.join(_MEASURED_ON_HARDWARE)} need the hardware they were measured on")
    if source == "measured":  # paper rows keep the published numbers (docs/leaderboard.md lists the mismatch)
        errors += _check_means(row, where)
    return errors


def _check_means(row: Mapping[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    values = [row[c] for c in ACCURACY_COLUMNS]
    if all(v is not None for v in values):
        mean = sum(values) / len(values)
        if row["avg_acc"] is None or abs(row["avg_acc"] - mean) > _ROUND_TOLERANCE:
            errors.append(
                f"{where}: avg_acc={shown(row['avg_acc'])} but the mean of {list(ACCURACY_COLUMNS)} is {mean:.2f}"
            )
    elif row["avg_acc"] is not None:
        errors.append(f"{where}: avg_acc is set but not all of {list(ACCURACY_COLUMNS)} are")
    for subset, prefix in _lrs_items():
        cats = [row[category_column(prefix, c)] for c in SUBSETS[subset]]
        if row[prefix] is not None and all(v is not None for v in cats):
            mean = sum(cats) / len(cats)
            if abs(row[prefix] - mean) > _ROUND_TOLERANCE:
                errors.append(f"{where}: {prefix}={shown(row[prefix])} but the mean of its categories is {mean:.2f}")
    return errors


def validate_rows(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every schema violation of ``rows`` (empty list: valid).

    Checks columns (no unknown or missing ones: the per-category columns are the known subsets' categories), types,
    0-100 ranges of accuracies, non-negative efficiency numbers, allowed ``source`` / ``scoring`` values, the
    provenance required for the row's source, ``avg_acc`` and subset means, cell lengths (:func:`cell_limit`),
    spreadsheet-formula text cells (starting with ``= + - @``, tab or carriage return, also after white space),
    line breaks and other control characters in text cells, and duplicate keys (:data:`KEY_COLUMNS`). Messages
    quote values through :func:`shown`.
    """
    errors: list[str] = []
    seen: dict[tuple[str, ...], int] = {}
    for i, raw in enumerate(rows, start=1):
        names = " / ".join(shown(raw.get(c, "?"), 40) for c in ("model", "method", "setting"))
        where = f"row {i} ({names})"
        row, type_errors = parse_row(raw, where)
        errors += type_errors
        errors += _check_row(row, where)
        key = row_key(row)
        if key in seen:
            errors.append(f"{where}: duplicate key {describe_key(key)} (same as row {seen[key]})")
        else:
            seen[key] = i
    return errors


def sort_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Typed rows sorted by ``avg_acc`` descending (empty last), then model, method, setting, source, scoring."""

    def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        acc = row["avg_acc"]
        names = tuple((str(row[c]).casefold(), str(row[c])) for c in KEY_COLUMNS)
        return (acc is None, -(acc or 0.0), names)

    return [dict(r) for r in sorted(rows, key=key)]
