"""Source-pixel cells of LLaVA / LLaVA-NeXT vision tokens: which part of the image each token shows.

A *cell* is ``(x1, y1, x2, y2)`` in source-image pixels (the frame of a doc's ``hbox``), clipped to the image. A token
that shows no single region (an ``image_newline``, a [CLS] state) or lies wholly in the processor's padding gets a NaN
row. Arrays are float64 numpy ``[..., 4]``. Pure functions over sizes; no model, no image.

The pixel layouts are transformers' image processors':

* an **image tile** (LLaVA-1.5's only tile, LLaVA-NeXT's base image) shows the whole image ``fit`` into ``S x S``:
  ``"squash"`` (resized to ``S x S``: LLaVA-NeXT's base image), ``"center_crop"`` (CLIP: shortest edge resized to
  ``S``, long edge ``int(S * long / short)``, the centre ``S x S`` cut at ``int((side - S) / 2)``) or ``"pad"``
  (``LlavaImageProcessor(do_pad=True)``: padded to a centred square, ``(M - side) // 2`` before, then resized);
* the **anyres grid** (LLaVA-NeXT) shows the image resized into the pinpoint ``rows*S x cols*S`` keeping its aspect
  ratio (``get_patch_output_size``: the limiting side fills the canvas, the other is ``ceil``-ed), padded equally on
  both ends (``(canvas - side) // 2`` before), cut into ``S x S`` tiles in raster order.

Inside a tile, a ``side x side`` token grid splits the tile's pixels evenly (``side = S / patch`` for CLIP patches,
fewer after a 2x2 pooling), so a token's cell is an even share of the tile's source-pixel extent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lrs_plugin.backbone.anyres import unpad_bounds
from lrs_plugin.errors import ConfigError

__all__ = ["TILE_FITS", "anyres_extent", "split_extent", "stock_token_cells", "tile_extent", "tile_patch_cells"]

Box = tuple[float, float, float, float]

TILE_FITS = ("squash", "center_crop", "pad")
"""How an image tile shows the whole image (module doc)."""


def tile_extent(image_wh: tuple[int, int], tile: int, fit: str) -> Box:
    """Source-pixel rectangle one ``S x S`` tile of the whole image shows (may reach outside the image when padded).

    Args:
        image_wh: ``(W, H)`` of the source image.
        tile: ``S``, the tile side in pixels.
        fit: One of :data:`TILE_FITS`.

    Raises:
        ConfigError: unknown ``fit``.
    """
    w, h = int(image_wh[0]), int(image_wh[1])
    if fit == "squash":
        return (0.0, 0.0, float(w), float(h))
    if fit == "center_crop":
        short, long = min(w, h), max(w, h)
        resized_long = int(tile * long / short)
        rw, rh = (tile, resized_long) if w <= h else (resized_long, tile)
        left, top = (rw - tile) // 2, (rh - tile) // 2
        sx, sy = rw / w, rh / h
        return (left / sx, top / sy, (left + tile) / sx, (top + tile) / sy)
    if fit == "pad":
        m = max(w, h)
        px, py = (m - w) // 2, (m - h) // 2
        return (float(-px), float(-py), float(m - px), float(m - py))
    raise ConfigError(f"tile fit {fit!r} is not valid; valid: {', '.join(TILE_FITS)}")


def anyres_extent(image_wh: tuple[int, int], grid: tuple[int, int], tile: int) -> Box:
    """Source-pixel rectangle the padded ``rows*S x cols*S`` anyres canvas shows (it holds the whole image).

    Args:
        image_wh: ``(W, H)`` of the source image.
        grid: ``(rows, cols)`` of the tile grid.
        tile: ``S``, the tile side in pixels.
    """
    import math

    w, h = int(image_wh[0]), int(image_wh[1])
    canvas_h, canvas_w = int(grid[0]) * tile, int(grid[1]) * tile
    scale_w, scale_h = canvas_w / w, canvas_h / h
    if scale_w < scale_h:
        new_w, new_h = canvas_w, min(math.ceil(h * scale_w), canvas_h)
    else:
        new_w, new_h = min(math.ceil(w * scale_h), canvas_w), canvas_h
    paste_x, paste_y = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
    sx, sy = new_w / w, new_h / h
    return (-paste_x / sx, -paste_y / sy, (canvas_w - paste_x) / sx, (canvas_h - paste_y) / sy)


def split_extent(extent: Sequence[float], shape_hw: tuple[int, int], image_wh: tuple[int, int]) -> np.ndarray:
    """Cells of an even ``rows x cols`` split of a source-pixel rectangle, clipped to the image.

    Args:
        extent: ``(x1, y1, x2, y2)`` the token grid shows (may reach outside the image).
        shape_hw: ``(rows, cols)`` of the token grid.
        image_wh: ``(W, H)`` of the source image.

    Returns:
        ``[rows * cols, 4]`` float64 in raster order; NaN rows for cells with nothing inside the image.
    """
    rows, cols = int(shape_hw[0]), int(shape_hw[1])
    x1, y1, x2, y2 = (float(v) for v in extent)
    xs = np.clip(x1 + (x2 - x1) * np.arange(cols + 1) / cols, 0.0, float(image_wh[0]))
    ys = np.clip(y1 + (y2 - y1) * np.arange(rows + 1) / rows, 0.0, float(image_wh[1]))
    cells = np.empty((rows, cols, 4), dtype=np.float64)
    cells[..., 0], cells[..., 2] = xs[None, :-1], xs[None, 1:]
    cells[..., 1], cells[..., 3] = ys[:-1, None], ys[1:, None]
    cells = cells.reshape(rows * cols, 4)
    cells[(cells[:, 2] <= cells[:, 0]) | (cells[:, 3] <= cells[:, 1])] = np.nan
    return cells


def _grid_map(image_wh: tuple[int, int], grid: tuple[int, int], tile: int, side: int) -> np.ndarray:
    """``[rows*side, cols*side, 4]`` cells of the whole padded anyres token map (tiles stitched)."""
    rows, cols = int(grid[0]), int(grid[1])
    cells = split_extent(anyres_extent(image_wh, grid, tile), (rows * side, cols * side), image_wh)
    return cells.reshape(rows * side, cols * side, 4)


def tile_patch_cells(
    image_wh: tuple[int, int], side: int, *, tile: int, grid: tuple[int, int] | None = None, fit: str = "squash"
) -> np.ndarray:
    """Cells of every patch of every tile the processor cuts, in :meth:`Backbone.image_crops` order.

    Args:
        image_wh: ``(W, H)`` of the source image.
        side: Patches per tile side ``g``.
        tile: ``S``, the tile side in pixels.
        grid: ``(rows, cols)`` of the LLaVA-NeXT anyres grid; ``None`` for LLaVA-1.5 (one tile).
        fit: How the first tile (LLaVA-1.5's tile, LLaVA-NeXT's base image) shows the image (:data:`TILE_FITS`);
            ``"squash"`` for LLaVA-NeXT.

    Returns:
        ``[1 + rows*cols, g*g, 4]`` (``[1, g*g, 4]`` without a grid): the whole-image tile first, then the grid tiles
        in raster order, each tile's patches in raster order (CLIP's patch order, [CLS] excluded).
    """
    base = split_extent(tile_extent(image_wh, tile, fit), (side, side), image_wh)[None]
    if grid is None:
        return base
    rows, cols = int(grid[0]), int(grid[1])
    # [rows*g, cols*g, 4] -> [rows, g, cols, g, 4] -> [rows, cols, g, g, 4]: one raster block per tile.
    tiles = _grid_map(image_wh, grid, tile, side).reshape(rows, side, cols, side, 4).transpose(0, 2, 1, 3, 4)
    return np.concatenate([base, tiles.reshape(rows * cols, side * side, 4)])


def stock_token_cells(
    image_wh: tuple[int, int],
    side: int,
    *,
    tile: int,
    grid: tuple[int, int] | None = None,
    grid_side: int | None = None,
    newline: bool = True,
    fit: str = "squash",
    prefix_tokens: int = 0,
) -> np.ndarray:
    """Cells of the vision tokens the stock model inserts, in its order (:func:`.anyres.pack_anyres`).

    LLaVA-1.5: the tile's tokens. LLaVA-NeXT: the base image's ``g x g`` tokens (coarse cells over the whole image),
    then the grid tiles' tokens stitched into one ``rows*g' x cols*g'`` map, cropped by the unpad rule
    (:func:`lrs_plugin.backbone.anyres.unpad_bounds`) and read row by row, each row followed by one ``image_newline``
    token.

    Args:
        image_wh: ``(W, H)`` of the source image.
        side: Tokens per side of the whole-image tile, ``g``.
        tile: ``S``, the tile side in pixels.
        grid: ``(rows, cols)`` of the anyres grid; ``None`` for LLaVA-1.5.
        grid_side: Tokens per side of a grid tile ``g'`` (``g // 2`` after a 2x2 pool); ``None``: ``side``.
        newline: Whether each row of the grid map ends with an ``image_newline`` token.
        fit: How the whole-image tile shows the image (:data:`TILE_FITS`).
        prefix_tokens: Tokens before the whole-image tile's patches (the [CLS] state with the ``full`` strategy).

    Returns:
        ``[prefix + g*g + H * (W' + newline), 4]`` where ``H x W'`` is the unpadded map; NaN rows for the prefix,
        the newline tokens and tokens wholly in the padding.
    """
    parts = [np.full((int(prefix_tokens), 4), np.nan), tile_patch_cells(image_wh, side, tile=tile, fit=fit)[0]]
    if grid is not None:
        gs = side if grid_side is None else int(grid_side)
        cells = _grid_map(image_wh, grid, tile, gs)
        row_span, col_span = unpad_bounds(cells.shape[:2], (int(image_wh[1]), int(image_wh[0])))
        cells = cells[row_span, col_span]
        if newline:
            cells = np.concatenate([cells, np.full((cells.shape[0], 1, 4), np.nan)], axis=1)
        parts.append(cells.reshape(-1, 4))
    return np.concatenate(parts)
