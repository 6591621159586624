"""Markdown table and accuracy-vs-TFLOPs plot (Pareto front highlighted) of leaderboard rows, drawn with Pillow."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lrs_plugin.leaderboard.schema import ACCURACY_COLUMNS, COLUMNS, format_cell

__all__ = ["MARKER_END", "MARKER_START", "TABLE_COLUMNS", "pareto_front", "plot_png", "replace_between_markers"]

MARKER_START = "<!-- leaderboard:start -->"
MARKER_END = "<!-- leaderboard:end -->"

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "Model"),
    ("method", "Method"),
    ("setting", "Setting"),
    ("avg_acc", "Avg"),
    ("mme_rw_rs", "MME-RW-RS"),
    ("lrs_fair", "LRS-FAIR"),
    ("lrs_bridge", "LRS-Bridge"),
    ("lrs_star", "LRS-STAR"),
    ("vision_tokens_to_llm", "Vis. tokens to LLM"),
    ("tflops", "TFLOPs"),
    ("fps", "FPS"),
    ("latency_s", "Latency (s)"),
    ("hardware", "Hardware"),
    ("source", "Source"),
)
"""Columns of the rendered markdown table: (CSV column, header)."""


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub markdown table of ``rows`` (already sorted) with :data:`TABLE_COLUMNS`."""
    lines = ["| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |"]
    text = {c.name for c in COLUMNS if c.kind == "text"}
    lines.append("|" + "|".join("---" if c in text else "---:" for c, _ in TABLE_COLUMNS) + "|")
    for row in rows:
        cells = [format_cell(c, row[c]).replace("|", "\\|") for c, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def replace_between_markers(text: str, content: str) -> str | None:
    """``text`` with everything between the markers replaced by ``content``; ``None`` when the markers are missing."""
    start = text.find(MARKER_START)
    end = text.find(MARKER_END, start + len(MARKER_START)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[: start + len(MARKER_START)] + "\n" + content + text[end:]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the Pareto-optimal points among (cost, accuracy) pairs, sorted by cost.

    A point is dropped when another has lower-or-equal cost and higher-or-equal accuracy, one of them strictly.
    """
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any((c <= cost and a >= acc) and (c < cost or a > acc) for j, (c, a) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def choose_metric(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """``avg_acc`` if some row has it and TFLOPs, else the benchmark column with the most such rows (or None)."""
    best, best_count = None, 0
    for col in ("avg_acc", *ACCURACY_COLUMNS):
        count = sum(1 for r in rows if r[col] is not None and r["tflops"] is not None and r["tflops"] > 0)
        if count > best_count:
            best, best_count = col, count
        if col == "avg_acc" and count:
            return col
    return best


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def plot_png(rows: Sequence[Mapping[str, Any]], out: str | Path) -> tuple[str | None, int]:
    """Draw accuracy against TFLOPs (log scale when it spans > 20x) into ``out``; the Pareto front in red.

    Returns:
        The accuracy column plotted (``None`` when no row has both) and the number of points drawn.
    """
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 960, 640, 80, 30, 50, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    metric = choose_metric(rows)
    chosen = [r for r in rows if metric and r[metric] is not None and r["tflops"] is not None and r["tflops"] > 0]
    title = f"{metric or 'accuracy'} (%) vs TFLOPs per question; red: Pareto front"
    draw.text((left, 15), title, fill="black", font=_font(18))
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline="black")
    if not chosen:
        draw.text((x0 + 20, (y0 + y1) // 2), "no row has both an accuracy and TFLOPs", fill="gray", font=_font(18))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        image.save(out, format="PNG")
        return None, 0
    costs = [float(r["tflops"]) for r in chosen]
    accs = [float(r[metric]) for r in chosen]
    log = max(costs) / min(costs) > 20
    fx = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo_x, hi_x = fx(min(costs)), fx(max(costs))
    pad_x = (hi_x - lo_x) * 0.08 or 1.0
    lo_x, hi_x = lo_x - pad_x, hi_x + pad_x
    lo_y, hi_y = min(accs), max(accs)
    pad_y = (hi_y - lo_y) * 0.1 or 1.0
    lo_y, hi_y = max(0.0, lo_y - pad_y), min(100.0, hi_y + pad_y)

    def to_px(cost: float, acc: float) -> tuple[float, float]:
        px = x0 + (fx(cost) - lo_x) / (hi_x - lo_x) * (x1 - x0)
        py = y1 - (acc - lo_y) / ((hi_y - lo_y) or 1.0) * (y1 - y0)
        return px, py

    small = _font(13)
    for k in range(5):
        v = lo_x + (hi_x - lo_x) * k / 4
        px = x0 + (x1 - x0) * k / 4
        draw.line((px, y1, px, y1 + 5), fill="black")
        draw.text((px - 20, y1 + 8), f"{10**v if log else v:.3g}", fill="black", font=small)
        acc = lo_y + (hi_y - lo_y) * k / 4
        py = y1 - (y1 - y0) * k / 4
        draw.line((x0 - 5, py, x0, py), fill="black")
        draw.text((x0 - 50, py - 7), f"{acc:.1f}", fill="black", font=small)
    draw.text(((x0 + x1) // 2 - 80, height - 30), "TFLOPs" + (" (log scale)" if log else ""), fill="black", font=small)
    front = pareto_front(list(zip(costs, accs, strict=True)))
    pts = [to_px(c, a) for c, a in zip(costs, accs, strict=True)]
    if len(front) > 1:
        draw.line([pts[i] for i in front], fill="red", width=2)
    for i, (px, py) in enumerate(pts):
        on_front = i in front
        r = 6 if on_front else 4
        draw.ellipse((px - r, py - r, px + r, py + r), fill="red" if on_front else "steelblue")
        label = f"{chosen[i]['model']} / {chosen[i]['method']} / {chosen[i]['setting']}"
        at = (
            px + 8
            if px + 8 + draw.textlength(label, font=small) < width
            else px - 8 - draw.textlength(label, font=small)
        )
        draw.text((at, py - 8), label, fill="darkred" if on_front else "dimgray", font=small)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return metric, len(chosen)
