"""The paper's published rows (``source=paper``), merged from the three reference tables into leaderboard rows.

:func:`paper_rows` reads the packaged ``lrs_plugin/data/paper_rows.csv``; :func:`paper_rows_from_reference` rebuilds
those rows from the transcribed tables (``paper_table2.csv``, ``paper_per_category.csv``, ``paper_efficiency.csv``),
which only a source checkout has (tests check that both agree). How names are matched is documented in
``docs/leaderboard.md``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from lrs_plugin.data.lrs_vqa import SUBSETS
from lrs_plugin.leaderboard.schema import (
    COLUMN_NAMES,
    LRS_SUBSET_COLUMNS,
    LeaderboardError,
    category_column,
    parse_row,
    row_key,
    sort_rows,
)

__all__ = ["PAPER_LINK", "normalize_name", "paper_rows", "paper_rows_from_reference"]

PAPER_LINK = "https://github.com/VisionXLab/LRS-VQA"
"""Where the paper's tables are published."""

_CITATION = "Luo et al. ICCV 2025"

# paper_per_category.csv subset -> SUBSETS key; column -> category.
_PER_CATEGORY_SUBSETS = {"LRS-FAIR": "FAIR", "LRS-Bridge": "GLH-Bridge", "LRS-STAR": "STAR"}
_PER_CATEGORY_COLUMNS = {
    "count": "count",
    "category": "object category",
    "shape": "object shape",
    "status": "object status",
    "reasoning": "reasoning",
    "rural_urban": "rural or urban",
    "background": "object background",
    "color": "object color",
}
# Table 2 rows whose printed name carries the method: printed name -> (model, method).
_OURS = {"Ours (LLaVA-1.5)": ("LLaVA-1.5*", "c2f"), "Ours (LLaVA-Next)": ("LLaVA-Next*", "c2f")}
_TILE_SUFFIX = re.compile(r"^(?P<model>.+)-p(?P<tiles>\d+)\*$")
# Efficiency table: reducer as printed after "w/ " -> method column.
_EFFICIENCY_METHODS = {
    "": "none",
    "PruMerge++": "prumerge",
    "VisionZip": "visionzip",
    "FastV": "fastv",
    "PDrop": "pdrop",
    "prune (Ours)": "c2f-prune",
}
_EFFICIENCY_IDENTITY = {
    "model": "LLaVA-Next*",
    "backbone": "LLaVA-NeXT",
    "vision_encoder": "CLIP-L14",
    "llm": "Qwen2-7B",
    "train_data": "1.04M",
}


def normalize_name(name: str) -> str:
    """Model name for matching across tables: case-folded, without ``-``, ``.``, ``_`` and spaces; ``*`` is kept.

    ``LLaVA1.5`` and ``LLaVA-1.5`` match, ``SLiME`` and ``SliME`` match, ``Gpt-4o`` and ``GPT-4o`` match; the
    re-trained ``LLaVA-1.5*`` does not match ``LLaVA-1.5``.
    """
    return re.sub(r"[\s._-]", "", name).casefold()


def _blank(value: str) -> str:
    """The paper's ``-`` (not applicable / not disclosed) becomes an empty cell."""
    value = value.strip()
    return "" if value == "-" else value


def _empty_row() -> dict[str, Any]:
    return {c: "" for c in COLUMN_NAMES}


def _table2_row(rec: Mapping[str, str]) -> dict[str, Any]:
    name = rec["method"]
    row = _empty_row()
    model, method, backbone = name, "none", ""
    max_size = _blank(rec["max_size"])
    if name in _OURS:
        model, method = _OURS[name]
        setting = "dynamic"
    elif match := _TILE_SUFFIX.match(name):
        model = f"{match['model']}*"
        setting = f"anyres-p{match['tiles']}"
    else:
        setting = f"max {max_size}" if max_size else "unspecified"
    if model.endswith("*"):
        backbone = {"LLaVA-1.5*": "LLaVA-1.5", "LLaVA-Next*": "LLaVA-NeXT"}.get(model, model[:-1])
    row.update(
        model=model,
        backbone=backbone,
        vision_encoder=_blank(rec["vision_encoder"]),
        llm=_blank(rec["llm"]),
        train_data=_blank(rec["data"]),
        method=method,
        setting=setting,
        max_size="" if max_size == "Dynamic" else max_size,
        source="paper",
        scoring="paper",
        results_link=PAPER_LINK,
        reference=f"{_CITATION}, Table 2 ({rec['section']}): {name}",
    )
    for col in ("mme_rw_rs", "lrs_fair", "lrs_bridge", "lrs_star", "avg_acc"):
        row[col] = rec[col]
    return row


def _merge_per_category(rows: list[dict[str, Any]], records: list[dict[str, str]]) -> None:
    by_name: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["reference"].split(": ", 1)[0].endswith("(leaderboard)"):
            by_name[normalize_name(row["model"])] = row
    for rec in records:
        subset = _PER_CATEGORY_SUBSETS[rec["subset"]]
        row = by_name.get(normalize_name(rec["method"]))
        if row is None:
            raise LeaderboardError(
                f"paper_per_category.csv: {rec['method']!r} matches no Table 2 leaderboard row; "
                f"known: {sorted(by_name)}"
            )
        prefix = LRS_SUBSET_COLUMNS[subset]
        filled = {_PER_CATEGORY_COLUMNS[k]: v for k, v in rec.items() if k in _PER_CATEGORY_COLUMNS and v}
        if set(filled) != set(SUBSETS[subset]):
            raise LeaderboardError(
                f"paper_per_category.csv: {rec['subset']} {rec['method']}: categories {sorted(filled)}, "
                f"expected {sorted(SUBSETS[subset])}"
            )
        if abs(float(rec["avg_acc"]) - float(row[prefix])) > 0.005:
            raise LeaderboardError(
                f"paper_per_category.csv: {rec['subset']} {rec['method']} avg {rec['avg_acc']} != Table 2 {row[prefix]}"
            )
        for category, value in filled.items():
            row[category_column(prefix, category)] = value
        if "per-category" not in row["reference"]:
            row["reference"] += "; per-category table"


def _efficiency_rows(rows: list[dict[str, Any]], records: list[dict[str, str]]) -> list[dict[str, Any]]:
    index = {row_key(r): r for r in rows}
    added: list[dict[str, Any]] = []
    for rec in records:
        setting, _, reducer = rec["setting"].partition(" w/ ")
        if reducer not in _EFFICIENCY_METHODS:
            raise LeaderboardError(
                f"paper_efficiency.csv: unknown reducer {reducer!r}; known: {list(_EFFICIENCY_METHODS)}"
            )
        method = _EFFICIENCY_METHODS[reducer]
        if setting.startswith("DIP-"):
            method = "c2f"
        probe = {"model": _EFFICIENCY_IDENTITY["model"], "method": method, "setting": setting}
        probe.update(source="paper", scoring="paper")
        row = index.get(row_key(probe))
        what = f"efficiency table ({rec['table']}): {rec['setting']}"
        if row is None:
            row = _empty_row()
            row.update(_EFFICIENCY_IDENTITY, method=method, setting=setting, source="paper", scoring="paper")
            row.update(results_link=PAPER_LINK, reference=f"{_CITATION}, {what}")
            index[row_key(row)] = row
            added.append(row)
        else:
            if rec["acc"] and row["mme_rw_rs"] and float(rec["acc"]) != float(row["mme_rw_rs"]):
                raise LeaderboardError(f"paper_efficiency.csv: {what} acc {rec['acc']} != Table 2 {row['mme_rw_rs']}")
            row["reference"] += f"; {what}"
        pairs = {
            "vis_tokens_total": "vision_tokens_encoded",
            "vis_tokens_to_llm": "vision_tokens_to_llm",
            "tflops": "tflops",
            "fps": "fps",
            "acc": "mme_rw_rs",
        }
        pairs.update({c: category_column("mme_rw_rs", c) for c in ("color", "count", "position")})
        for src, dst in pairs.items():
            if rec[src]:
                row[dst] = rec[src]
        if rec["fps"]:
            row["hardware"] = "A100"
    return added


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def paper_rows_from_reference(reference_dir: str | Path) -> list[dict[str, Any]]:
    """Merge the paper's three transcribed tables in ``reference_dir`` into typed, sorted leaderboard rows.

    Raises:
        LeaderboardError: a per-category or efficiency row matches no Table 2 row where it must, or the tables
            disagree on a number they share.
    """
    ref = Path(reference_dir)
    rows = [_table2_row(rec) for rec in _read_csv(ref / "paper_table2.csv")]
    _merge_per_category(rows, _read_csv(ref / "paper_per_category.csv"))
    rows += _efficiency_rows(rows, _read_csv(ref / "paper_efficiency.csv"))
    typed = []
    for i, row in enumerate(rows, start=1):
        parsed, errors = parse_row(row, f"paper row {i}")
        if errors:
            raise LeaderboardError("; ".join(errors))
        typed.append(parsed)
    return sort_rows(typed)


def paper_rows() -> list[dict[str, Any]]:
    """The paper's rows packaged with lrs-plugin (``lrs_plugin/data/paper_rows.csv``), typed and sorted."""
    text = resources.files("lrs_plugin.data").joinpath("paper_rows.csv").read_text(encoding="utf-8")
    rows = []
    for i, rec in enumerate(csv.DictReader(io.StringIO(text)), start=1):
        parsed, errors = parse_row(rec, f"paper_rows.csv row {i}")
        if errors:
            raise LeaderboardError("; ".join(errors))
        rows.append(parsed)
    return sort_rows(rows)
