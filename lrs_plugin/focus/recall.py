"""Focus recall: did a method look where the answer is? Pure functions over boxes, tiles and token cells.

Two figures per sample whose document carries a target box (LRS-VQA's ``hbox``, the testbed's ``hbox``):

* **tile recall** (:func:`tile_recall`): 1.0 when the centre of the target box lies in a tile that was encoded at
  the finest level the method visited, else 0.0;
* **token recall** (:func:`token_recall`): the share of the box's area covered by the source-pixel cells of the
  vision tokens sent to the LLM (0.0-1.0; cells of several tokens that overlap count once).

Both are 1.0 when every tile and every token is kept. Boxes are clipped to the image first (some LRS-VQA boxes
overflow it); a box with nothing inside the image gives ``None``.

Reducers on the stock layout (whose finest level, the anyres grid, covers the whole image) report both through
:func:`recall_stats`, with :func:`region_recall` as the tile recall and the cells of
:mod:`lrs_plugin.backbone.token_cells`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lrs_plugin.c2f.pyramid import LevelGeometry
from lrs_plugin.data.lrs_vqa import clip_box
from lrs_plugin.harness.record import FocusRecall

__all__ = ["box_center_tile", "clipped_box", "doc_box", "recall_stats", "region_recall", "tile_recall", "token_recall"]

Box = tuple[float, float, float, float]


def clipped_box(box: Sequence[float], image_wh: tuple[int, int]) -> Box | None:
    """``box`` ``(x1, y1, x2, y2)`` clipped to ``[0, W] x [0, H]`` in float pixels; ``None`` when nothing is inside.

    :func:`lrs_plugin.data.lrs_vqa.clip_box` (the one clipping rule) without widening to whole pixels.

    Raises:
        DatasetSchemaError: ``box`` is not 4 finite numbers (a :class:`ValueError`).
    """
    return clip_box(box, image_wh, whole_pixels=False)


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


def doc_box(doc: Mapping[str, Any] | None, image_wh: tuple[int, int]) -> Box | None:
    """The document's ``hbox`` clipped to the image (:func:`clipped_box`).

    Returns:
        ``None`` when ``doc`` has no 4-number ``hbox``, a malformed one, or one with nothing inside the image.
    """
    box = doc.get("hbox") if isinstance(doc, Mapping) else None
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    try:
        return clipped_box(box, image_wh)
    except ValueError:
        return None


def region_recall(
    box: Sequence[float], image_wh: tuple[int, int], region: Sequence[float] | None = None
) -> float | None:
    """Tile recall of a method whose finest encoded tiles show ``region``: 1.0 when the box centre lies in it.

    Args:
        box: Target ``(x1, y1, x2, y2)`` in source pixels (clipped to the image first, as :func:`tile_recall`).
        image_wh: ``(W, H)`` of the source image.
        region: ``(x1, y1, x2, y2)`` source pixels the finest encoded tiles show (edges included); ``None``: the
            whole image (an anyres grid always holds it: every grid tile is encoded at the stock resolution).

    Returns:
        1.0 or 0.0; ``None`` when the box lies outside the image.
    """
    clipped = clipped_box(box, image_wh)
    if clipped is None:
        return None
    if region is None:
        return 1.0
    cx, cy = (clipped[0] + clipped[2]) / 2, (clipped[1] + clipped[3]) / 2
    return 1.0 if region[0] <= cx <= region[2] and region[1] <= cy <= region[3] else 0.0


def recall_stats(
    doc: Mapping[str, Any] | None,
    image_wh: tuple[int, int],
    cells: np.ndarray,
    region: Sequence[float] | None = None,
) -> FocusRecall:
    """Tile and token recall of the doc's ``hbox`` (``focus_tile_recall`` / ``focus_token_recall`` of the record).

    Args:
        doc: The task document; its ``hbox`` is ``[x1, y1, x2, y2]`` in source pixels.
        image_wh: ``(W, H)`` of the source image.
        cells: ``[K, 4]`` source-pixel cells of the vision tokens sent to the LLM (NaN rows: tokens without one).
        region: Source pixels the finest encoded tiles show (:func:`region_recall`); ``None``: the whole image.

    Returns:
        Both figures; both ``None`` when the doc has no 4-number box, a malformed one, or one outside the image.
    """
    target = doc_box(doc, image_wh)
    if target is None:
        return FocusRecall(tile=None, token=None)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 4)
    # Only the cells meeting the box matter (NaN comparisons are False): keeps the exact union small.
    meets = (
        (cells[:, 0] < target[2]) & (cells[:, 2] > target[0]) & (cells[:, 1] < target[3]) & (cells[:, 3] > target[1])
    )
    return FocusRecall(
        tile=region_recall(target, image_wh, region), token=token_recall(target, image_wh, cells[meets].tolist())
    )
