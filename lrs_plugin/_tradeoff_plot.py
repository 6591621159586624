"""One drawing helper for accuracy-cost pictures: a line per method, error bars, the Pareto front marked (PIL only).

Used by ``lrs-plugin sweep`` (:mod:`lrs_plugin.harness.sweep`); the leaderboard and the testbed table draw their
single-point pictures themselves and can move onto it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Point", "draw_curves"]

#: ``(cost, accuracy %, ±error or None, label)`` of one point.
Point = tuple[float, float, "float | None", str]

_COLORS = (
    (31, 119, 180),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (140, 86, 75),
    (23, 190, 207),
    (127, 127, 127),
)
_FRONT = (214, 39, 40)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_curves(
    series: Mapping[str, Sequence[Point]],
    out: str | Path,
    *,
    title: str,
    x_label: str,
    y_label: str = "accuracy (%)",
    size: tuple[int, int] = (960, 640),
) -> Path:
    """Draw each series as a line through its points (sorted by cost) with vertical error bars; PNG at ``out``.

    The Pareto front over all points (lower cost, higher accuracy; :func:`lrs_plugin.leaderboard.render.pareto_front`)
    is joined by a red dashed line and its points ringed in red. The cost axis is logarithmic when it spans more than
    20x. Points with a non-positive or missing cost are left out.

    Args:
        series: Method name -> its points (:data:`Point`).
        out: PNG path (parent folders are created).
        title: Title line.
        x_label: Cost axis label.
        y_label: Accuracy axis label.
        size: Width and height in pixels.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.
    """
    from PIL import Image, ImageDraw

    from lrs_plugin.leaderboard.render import pareto_front

    width, height = size
    x0, y0, x1, y1 = 80, 64, width - 170, height - 70
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    small = _font(13)
    draw.text((x0, 15), title, fill="black", font=_font(17))
    draw.rectangle((x0, y0, x1, y1), outline="black")
    pts = {
        name: sorted((p for p in points if p[0] is not None and p[0] > 0), key=lambda p: p[0])
        for name, points in series.items()
    }
    flat = [p for points in pts.values() for p in points]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not flat:
        draw.text((x0 + 20, (y0 + y1) // 2), "no point has both a cost and an accuracy", fill="gray", font=_font(17))
        image.save(out, format="PNG")
        return out
    costs = [p[0] for p in flat]
    log = max(costs) / min(costs) > 20
    fx = math.log10 if log else (lambda v: v)
    lo_x, hi_x = fx(min(costs)), fx(max(costs))
    pad = (hi_x - lo_x) * 0.08 or 1.0
    lo_x, hi_x = lo_x - pad, hi_x + pad
    lows = [p[1] - (p[2] or 0.0) for p in flat]
    highs = [p[1] + (p[2] or 0.0) for p in flat]
    lo_y, hi_y = max(0.0, min(lows) - 5.0), min(100.0, max(highs) + 5.0)

    def px(cost: float, acc: float) -> tuple[float, float]:
        return (
            x0 + (fx(cost) - lo_x) / (hi_x - lo_x) * (x1 - x0),
            y1 - (min(max(acc, lo_y), hi_y) - lo_y) / ((hi_y - lo_y) or 1.0) * (y1 - y0),
        )

    for k in range(5):
        v, x = lo_x + (hi_x - lo_x) * k / 4, x0 + (x1 - x0) * k / 4
        draw.line((x, y1, x, y1 + 5), fill="black")
        draw.text((x - 20, y1 + 8), f"{10**v if log else v:.3g}", fill="black", font=small)
        acc, y = lo_y + (hi_y - lo_y) * k / 4, y1 - (y1 - y0) * k / 4
        draw.line((x0 - 5, y, x0, y), fill="black")
        draw.text((x0 - 45, y - 7), f"{acc:.1f}", fill="black", font=small)
    draw.text(((x0 + x1) // 2 - 90, height - 30), x_label + (" (log scale)" if log else ""), fill="black", font=small)
    draw.text((8, y0 - 26), y_label, fill="black", font=small)
    front = [flat[i] for i in pareto_front([(p[0], round(p[1], 9)) for p in flat])]  # 25.000000000000004 == 25
    for a, b in zip(front, front[1:], strict=False):  # dashed: 8 px on, 6 off
        (ax, ay), (bx, by) = px(a[0], a[1]), px(b[0], b[1])
        length = math.hypot(bx - ax, by - ay) or 1.0
        for t in range(0, int(length), 14):
            s, e = t / length, min(t + 8, length) / length
            draw.line(
                (ax + (bx - ax) * s, ay + (by - ay) * s, ax + (bx - ax) * e, ay + (by - ay) * e), fill=_FRONT, width=2
            )
    for i, (name, points) in enumerate(pts.items()):
        color = _COLORS[i % len(_COLORS)]
        xy = [px(p[0], p[1]) for p in points]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for p, (x, y) in zip(points, xy, strict=True):
            if p[2]:
                top, bottom = px(p[0], p[1] + p[2])[1], px(p[0], p[1] - p[2])[1]
                draw.line((x, top, x, bottom), fill=color, width=1)
                draw.line((x - 4, top, x + 4, top), fill=color)
                draw.line((x - 4, bottom, x + 4, bottom), fill=color)
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=color)
            if p in front:
                draw.ellipse((x - 8, y - 8, x + 8, y + 8), outline=_FRONT, width=2)
            draw.text((x + 7, y - 16), p[3], fill=color, font=small)
        ly = y0 + 10 + 20 * i
        draw.rectangle((x1 + 15, ly, x1 + 30, ly + 12), fill=color)
        draw.text((x1 + 36, ly - 1), name, fill="black", font=small)
    ly = y0 + 10 + 20 * len(pts)
    draw.ellipse((x1 + 15, ly, x1 + 29, ly + 14), outline=_FRONT, width=2)
    draw.text((x1 + 36, ly), "Pareto front", fill="black", font=small)
    image.save(out, format="PNG")
    return out
