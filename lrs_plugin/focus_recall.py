"""Focus recall: did a method look where the answer is? Pure functions over boxes, tiles and token cells.

Two figures per sample whose document carries a target box (LRS-VQA's ``hbox``, the testbed's ``hbox``):

* **tile recall** (:func:`tile_recall`): 1.0 when the centre of the target box lies in a tile that was encoded at
  the finest level the method visited, else 0.0;
* **token recall** (:func:`token_recall`): the share of the box's area covered by the source-pixel cells of the
  vision tokens sent to the LLM (0.0-1.0; cells of several tokens that overlap count once).

Both are 1.0 when every tile and every token is kept. Boxes are clipped to the image first (some LRS-VQA boxes
overflow it); a box with nothing inside the image gives ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from lrs_plugin.pyramid import LevelGeometry

__all__ = ["box_center_tile", "clipped_box", "tile_recall", "token_recall"]

Box = tuple[float, float, float, float]


def clipped_box(box: Sequence[float], image_wh: tuple[int, int]) -> Box | None:
    """``box`` ``(x1, y1, x2, y2)`` clipped to ``[0, W] x [0, H]``; ``None`` when nothing of it is inside."""
    if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
        raise ValueError(f"box must be 4 finite numbers (x1, y1, x2, y2); got {list(box)!r}")
    w, h = image_wh
    x1, y1 = max(0.0, float(min(box[0], box[2]))), max(0.0, float(min(box[1], box[3])))
    x2, y2 = min(float(w), float(max(box[0], box[2]))), min(float(h), float(max(box[1], box[3])))
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def box_center_tile(box: Sequence[float], level: LevelGeometry) -> tuple[int, int] | None:
    """``(row, col)`` of the tile of ``level`` holding the centre of the source-pixel ``box`` (``None``: outside)."""
    (h, w), (rh, rw) = level.image_hw, level.resize_hw
    clipped = clipped_box(box, (w, h))
    if clipped is None:
        return None
    cx, cy = (clipped[0] + clipped[2]) / 2, (clipped[1] + clipped[3]) / 2
    row = min(int(cy * rh / h // level.tile), level.grid_hw[0] - 1)
    col = min(int(cx * rw / w // level.tile), level.grid_hw[1] - 1)
    return (row, col)


def tile_recall(box: Sequence[float], level: LevelGeometry, encoded_tiles: Iterable[Sequence[int]]) -> float | None:
    """1.0 when the box centre's tile at ``level`` is among ``encoded_tiles`` (``(row, col)`` pairs), else 0.0.

    Returns:
        ``None`` when the box lies outside the image.
    """
    tile = box_center_tile(box, level)
    if tile is None:
        return None
    return 1.0 if tile in {(int(r), int(c)) for r, c in encoded_tiles} else 0.0


def token_recall(box: Sequence[float], image_wh: tuple[int, int], cells: Iterable[Sequence[float]]) -> float | None:
    """Share of the (clipped) box area covered by the union of token ``cells`` (source-pixel ``x1, y1, x2, y2``).

    Cells with NaN coordinates (newline tokens, padding) are ignored. The union is computed exactly on the grid of
    the cells' and box's edges.

    Returns:
        A value in ``[0, 1]``; ``None`` when the box lies outside the image.
    """
    target = clipped_box(box, image_wh)
    if target is None:
        return None
    bx1, by1, bx2, by2 = target
    inside = []
    for cell in cells:
        x1, y1, x2, y2 = (float(v) for v in cell)
        if any(math.isnan(v) for v in (x1, y1, x2, y2)):
            continue
        x1, y1, x2, y2 = max(x1, bx1), max(y1, by1), min(x2, bx2), min(y2, by2)
        if x2 > x1 and y2 > y1:
            inside.append((x1, y1, x2, y2))
    if not inside:
        return 0.0
    xs = sorted({bx1, bx2, *(c[0] for c in inside), *(c[2] for c in inside)})
    ys = sorted({by1, by2, *(c[1] for c in inside), *(c[3] for c in inside)})
    xi, yi = {x: i for i, x in enumerate(xs)}, {y: i for i, y in enumerate(ys)}
    covered = np.zeros((len(ys) - 1, len(xs) - 1), dtype=bool)
    for x1, y1, x2, y2 in inside:
        covered[yi[y1] : yi[y2], xi[x1] : xi[x2]] = True
    area = float((np.diff(ys)[:, None] * np.diff(xs)[None, :])[covered].sum())
    return min(1.0, area / ((bx2 - bx1) * (by2 - by1)))
