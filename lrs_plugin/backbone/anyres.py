"""LLaVA-NeXT anyres geometry: grid pinpoints for the paper's ``anyres-pN`` settings, the chosen tile grid, packing.

Pure functions over sizes in pixels (and, for :func:`pack_anyres`, over token tensors); no model, no image. A
*pinpoint* is a resolution ``[height, width]`` (multiples of the tile side ``S``) that the processor may resize an
image to before cutting it into ``S x S`` tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "PINPOINT_MODES",
    "square_pinpoints",
    "limited_pinpoints",
    "anyres_pinpoints",
    "grid_shape",
    "unpad_bounds",
    "pack_anyres",
    "pool_tiles",
    "pooled_side",
    "TILE_POOLS",
]

PINPOINT_MODES = ("square", "checkpoint")
"""How ``max_tiles`` turns into pinpoints (see :func:`anyres_pinpoints`)."""


def _check_max_tiles(max_tiles: object) -> int:
    if isinstance(max_tiles, bool) or not isinstance(max_tiles, int) or max_tiles < 1:
        raise ConfigError(f"max_tiles must be an int >= 1; got {max_tiles!r}")
    return max_tiles


def square_pinpoints(max_tiles: int, tile: int) -> list[list[int]]:
    """Every ``rows x cols`` grid with ``rows, cols <= k`` where ``max_tiles = k * k`` (the paper's ``anyres-pN``).

    This is LLaVA-OneVision's ``"(1x1),...,(kxk)"`` pinpoint convention: ``anyres-p144`` allows grids up to 12x12
    (144 tiles), ``anyres-p25`` up to 5x5.

    Args:
        max_tiles: ``N``, a perfect square ``k * k``.
        tile: Tile side ``S`` in pixels.

    Returns:
        ``k * k`` pinpoints ``[rows * S, cols * S]``, rows-major.

    Raises:
        ConfigError: ``max_tiles`` is not a perfect square >= 1.
    """
    n = _check_max_tiles(max_tiles)
    k = math.isqrt(n)
    if k * k != n:
        raise ConfigError(
            f"pinpoints='square' needs max_tiles = k*k (e.g. 4, 9, 25, 144); got {max_tiles!r}. "
            "Use pinpoints='checkpoint' to cap the checkpoint's own grids at any count."
        )
    return [[r * tile, c * tile] for r in range(1, k + 1) for c in range(1, k + 1)]


def limited_pinpoints(pinpoints: Sequence[Sequence[int]], max_tiles: int, tile: int) -> list[list[int]]:
    """The given pinpoints whose grid has at most ``max_tiles`` tiles (order kept).

    Raises:
        ConfigError: no pinpoint has that few tiles (the smallest grid is named).
    """
    n = _check_max_tiles(max_tiles)
    kept = [[int(h), int(w)] for h, w in pinpoints if (int(h) // tile) * (int(w) // tile) <= n]
    if not kept:
        smallest = min((int(h) // tile) * (int(w) // tile) for h, w in pinpoints)
        raise ConfigError(f"max_tiles={n}: the checkpoint's smallest anyres grid has {smallest} tiles")
    return kept


def anyres_pinpoints(
    max_tiles: int, tile: int, *, mode: str = "square", checkpoint: Sequence[Sequence[int]] | None = None
) -> list[list[int]]:
    """Pinpoints allowing at most ``max_tiles`` grid tiles (the base image is not counted, as in the paper).

    Args:
        max_tiles: Grid tiles allowed.
        tile: Tile side ``S`` in pixels.
        mode: ``"square"`` (:func:`square_pinpoints`, may go beyond the checkpoint's grids) or ``"checkpoint"``
            (:func:`limited_pinpoints` over ``checkpoint``).
        checkpoint: The checkpoint's ``image_grid_pinpoints`` (needed for ``mode="checkpoint"``).

    Raises:
        ConfigError: unknown mode, or a bad ``max_tiles`` for it.
    """
    if mode == "square":
        return square_pinpoints(max_tiles, tile)
    if mode == "checkpoint":
        if not checkpoint:
            raise ConfigError("pinpoints='checkpoint' needs the checkpoint's image_grid_pinpoints")
        return limited_pinpoints(checkpoint, max_tiles, tile)
    raise ConfigError(f"pinpoints={mode!r} is not valid; valid: {', '.join(PINPOINT_MODES)}")


def grid_shape(image_hw: tuple[int, int], pinpoints: Sequence[Sequence[int]], tile: int) -> tuple[int, int]:
    """``(rows, cols)`` of the tile grid the processor picks for an image of ``(height, width)`` pixels.

    The choice is transformers' ``select_best_resolution`` (largest effective resolution, then least waste), the
    same call the processor and the model make.
    """
    from transformers.image_processing_utils import select_best_resolution

    h, w = select_best_resolution((int(image_hw[0]), int(image_hw[1])), [list(p) for p in pinpoints])
    return int(h) // tile, int(w) // tile


def unpad_bounds(grid_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of a padded patch grid that cover the image itself (LLaVA-NeXT's "unpad" rule).

    The processor resizes the image to fit the pinpoint keeping its aspect ratio and pads the short side equally on
    both ends; this finds the patches of the image part on the ``rows * g x cols * g`` patch grid. Same arithmetic
    as transformers' ``unpad_image`` (the image's side scaled by the grid's, rounded at 7 decimals, truncated; the
    padding floored on both ends).

    Args:
        grid_hw: ``(height, width)`` of the patch grid, in patches.
        image_hw: ``(height, width)`` of the original image, in pixels.

    Returns:
        ``(row_slice, col_slice)``; one of them keeps the whole axis.
    """
    grid_h, grid_w = int(grid_hw[0]), int(grid_hw[1])
    img_h, img_w = int(image_hw[0]), int(image_hw[1])
    if img_w / img_h > grid_w / grid_h:  # wider than the grid: padded above and below
        kept = int(round(img_h * (grid_w / img_w), 7))
        pad = (grid_h - kept) // 2
        return slice(pad, grid_h - pad), slice(0, grid_w)
    kept = int(round(img_w * (grid_h / img_h), 7))
    pad = (grid_w - kept) // 2
    return slice(0, grid_h), slice(pad, grid_w - pad)


TILE_POOLS = ("average", "max", "bilinear")
"""2x2 pooling of the grid tiles' tokens, as the C2F seed's LLaVA-NeXT models do (``mm_spatial_pool_mode``)."""


def pooled_side(side: int, mode: str) -> int:
    """Tokens per tile side after :func:`pool_tiles`: ``g // 2`` (average / max) or ``ceil(g / 2)`` (bilinear).

    Raises:
        ConfigError: unknown mode.
    """
    if mode not in TILE_POOLS:
        raise ConfigError(f"tile pooling {mode!r} is not valid; valid: {', '.join(TILE_POOLS)}")
    return math.ceil(side / 2) if mode == "bilinear" else side // 2


def pool_tiles(tiles: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool each tile's ``g x g`` token grid by 2, as the seed's ``get_2dPool`` (after the projector).

    Args:
        tiles: ``[n, g*g, C]`` tokens, patches in raster order.
        mode: ``"average"`` / ``"max"`` (2x2 windows, stride 2) or ``"bilinear"`` (``F.interpolate`` to
            ``ceil(g/2)`` per side, ``align_corners=False``, no antialias).

    Returns:
        ``[n, g'*g', C]`` with ``g' = g // 2`` (average / max) or ``ceil(g / 2)`` (bilinear).

    Raises:
        ConfigError: unknown mode, or not a square token grid.
    """
    import torch.nn.functional as F

    n, t, c = tiles.shape
    g = math.isqrt(t)
    if g * g != t:
        raise ConfigError(f"pool_tiles needs square g*g token tiles; got {t} tokens per tile")
    x = tiles.reshape(n, g, g, c).permute(0, 3, 1, 2)
    if mode == "average":
        x = F.avg_pool2d(x, 2)
    elif mode == "max":
        x = F.max_pool2d(x, 2)
    elif mode == "bilinear":
        x = F.interpolate(x, size=(math.ceil(g / 2), math.ceil(g / 2)), mode="bilinear")
    else:
        raise ConfigError(f"tile pooling {mode!r} is not valid; valid: {', '.join(TILE_POOLS)}")
    return x.permute(0, 2, 3, 1).reshape(n, -1, c)


def pack_anyres(
    base: torch.Tensor,
    tiles: torch.Tensor,
    grid: tuple[int, int],
    image_hw: tuple[int, int],
    newline: torch.Tensor | None,
    unpad: bool = True,
    tile_pool: str | None = None,
) -> torch.Tensor:
    """Lay out one image's LLaVA-NeXT vision tokens as the stock model does (``pack_image_features``).

    The grid tiles are stitched into one ``rows * g x cols * g`` patch map, cropped to the image (``unpad``), read
    in raster order over the whole map with ``newline`` appended after every patch row, and put after the base
    image's tokens.

    Args:
        base: ``[T, C]`` tokens of the base (whole-image) tile, kept as they are.
        tiles: ``[rows * cols, g * g, C]`` tokens of the grid tiles, tiles in raster order, patches of each tile in
            raster order.
        grid: ``(rows, cols)`` of the tile grid.
        image_hw: ``(height, width)`` of the original image in pixels (for unpadding).
        newline: ``[C]`` row-end vector (``image_newline``), or ``None`` for no row ends.
        unpad: Crop the patch map to the image part; ``False`` keeps the padding.
        tile_pool: Pool the grid tiles first (:func:`pool_tiles`; the base tile is kept whole), as the C2F seed's
            LLaVA-NeXT-Qwen2 does (``144`` tokens per 336-px tile: ``576 + 144 * 144 = 21,312`` at anyres-p144);
            ``None`` keeps every token (transformers' layout).

    Returns:
        ``[T + H * (W + 1), C]`` (``[T + H * W, C]`` without ``newline``), where ``H x W`` is the kept patch map;
        dtype and device of ``tiles``.

    Raises:
        ConfigError: ``tiles`` is not ``[rows * cols, g * g, C]`` or ``base`` not ``[T, C]`` with the same ``C``.
    """
    import torch

    rows, cols = int(grid[0]), int(grid[1])
    if tiles.ndim != 3 or base.ndim != 2 or tiles.shape[-1] != base.shape[-1]:
        raise ConfigError(
            f"pack_anyres needs base [T, C] and tiles [n, g*g, C]; got {list(base.shape)} and {list(tiles.shape)}"
        )
    if tile_pool is not None:
        tiles = pool_tiles(tiles, tile_pool)
    n, t, c = tiles.shape
    g = math.isqrt(t)
    if rows < 1 or cols < 1 or n != rows * cols or g * g != t:
        raise ConfigError(
            f"pack_anyres: tiles {list(tiles.shape)} do not fill a {rows}x{cols} grid of square g*g patch tiles"
        )
    # [rows, cols, g, g, C] -> [rows, g, cols, g, C] -> one [rows*g, cols*g, C] patch map.
    patch_map = tiles.reshape(rows, cols, g, g, c).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, c)
    if unpad:
        row_span, col_span = unpad_bounds((rows * g, cols * g), image_hw)
        patch_map = patch_map[row_span, col_span]
    if newline is not None:
        ends = newline.to(patch_map.device, patch_map.dtype).expand(patch_map.shape[0], 1, c)
        patch_map = torch.cat([patch_map, ends], dim=1)
    return torch.cat([base.to(patch_map.device, patch_map.dtype), patch_map.reshape(-1, c)], dim=0)
