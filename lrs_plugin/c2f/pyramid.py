"""Dynamic Image Pyramid (DIP) geometry of the C2F method, as pure functions (method.md §1, §2.3, §3.3).

Nothing here reads pixels: every function maps image sizes, scales and token indices to sizes, tile grids, boxes and
tile indices, with the released code's rounding reproduced exactly (Python ``round()`` is round-half-to-even,
``math.ceil``, ``int()`` truncation, and the float32 arithmetic of one torch expression, see :func:`vote_tiles`).

Conventions used throughout:

* Sizes are ``(height, width)`` (``*_hw``) unless a name ends in ``_wh``; boxes are ``(x0, y0, x1, y1)``, half-open.
* A *level* is the source image resized to ``resize_hw`` and zero-padded to ``padded_hw`` (a whole number of
  ``tile x tile`` tiles, ``grid_hw`` of them). Content is anchored at the **top-left**; padding is at the **bottom
  and right** only. Tiles are indexed ``(row, col)`` and enumerated row-major.
* Pixel ``i`` covers the interval ``[i, i + 1)``. Level point ``y`` shows source point ``y * H / rh`` (and ``x``
  shows ``x * W / rw``): the edge mapping of ``F.interpolate(..., size=(rh, rw), align_corners=False)``, which is how
  the released code renders every level from the full-resolution image.
* Level 0 is the coarsest tiled level ("base", long side 1008 px for images longer than that); higher indices are
  finer, the last one is the original resolution (scale 1.0). The thumbnail is kept apart.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from lrs_plugin.errors import ConfigError

__all__ = [
    "LevelGeometry",
    "Pyramid",
    "build_pyramid",
    "child_tiles",
    "dip_scales",
    "level_geometry",
    "newline_indices",
    "tile_box_in_level",
    "tile_source_box",
    "tiles",
    "unpadded_grid_hw",
    "vote_tiles",
    "vote_tiles_exact",
]

Box = tuple[float, float, float, float]
_ExactBox = tuple[Fraction, Fraction, Fraction, Fraction]


@dataclass(frozen=True)
class LevelGeometry:
    """Geometry of one pyramid level (or of the thumbnail), method.md §1.3.

    Build it with :func:`level_geometry`; the constructor only checks that the fields are consistent.
    """

    scale: float  # scale s relative to the source image (before the up-scale k)
    content_hw: tuple[int, int]  # (round(H*s), round(W*s)): nominal size at scale s, before the up-scale k
    resize_hw: tuple[int, int]  # (rh, rw) = (round(h0*k), round(w0*k)): the image content actually in the level
    padded_hw: tuple[int, int]  # grid_hw * tile: the level canvas, content top-left, zero padding bottom/right
    grid_hw: tuple[int, int]  # (ceil(rh/tile), ceil(rw/tile)): tile rows and columns
    image_hw: tuple[int, int]  # (H, W) of the source image the level was computed from
    tile: int = 336  # tile side in pixels (``slice_block_size``)

    def __post_init__(self) -> None:
        for axis in (0, 1):
            if self.resize_hw[axis] < 1 or self.grid_hw[axis] != math.ceil(self.resize_hw[axis] / self.tile):
                raise ConfigError(
                    f"inconsistent level: resize_hw={self.resize_hw} needs grid_hw=ceil(resize/tile) with "
                    f"tile={self.tile}, got grid_hw={self.grid_hw}"
                )
            if self.padded_hw[axis] != self.grid_hw[axis] * self.tile:
                raise ConfigError(f"inconsistent level: padded_hw={self.padded_hw} != grid_hw={self.grid_hw} * tile")

    @property
    def num_tiles(self) -> int:
        """Number of tiles, ``grid_h * grid_w`` (the original's ``image_num``)."""
        return self.grid_hw[0] * self.grid_hw[1]

    @property
    def resize_ratio_hw(self) -> tuple[float, float]:
        """``(rh / H, rw / W)``: level pixels per source pixel along each axis (the original's ``resize_ratio_hw``)."""
        return self.resize_hw[0] / self.image_hw[0], self.resize_hw[1] / self.image_hw[1]

    def token_grid_hw(self, per_tile: int = 12) -> tuple[int, int]:
        """Padded token grid of the whole level, ``grid_hw * per_tile`` (12 pooled tokens per tile side)."""
        return self.grid_hw[0] * per_tile, self.grid_hw[1] * per_tile


@dataclass(frozen=True)
class Pyramid:
    """The thumbnail and the tiled levels of one image, method.md §1."""

    image_hw: tuple[int, int]  # (H, W) of the source image
    thumbnail: LevelGeometry  # long side == tile, pasted top-left into one tile (576 unpooled tokens)
    levels: tuple[LevelGeometry, ...]  # coarse -> fine; levels[0] is the base level, levels[-1] has scale 1.0

    def next_level_index(self, index: int) -> int:
        """Index of the level a zoom from ``index`` fetches tiles from: ``index + 1`` clamped to the finest level.

        With a single tiled level (long side <= 1008 px) the "zoom" re-encodes tiles of that level (method.md §3.3.1).
        """
        if not 0 <= index < len(self.levels):
            raise IndexError(f"level index {index} out of range 0..{len(self.levels) - 1}")
        return min(index + 1, len(self.levels) - 1)


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int (pixels), got {value!r}")
    return value


def dip_scales(height: int, width: int, *, tile: int = 336, base_long_side: int = 1008) -> list[float]:
    """Scales of the pyramid, descending, thumbnail scale last (method.md §1.2).

    Powers of two ``1, 1/2, 1/4, ...`` down to ``min_scale = min(base_long_side / L, 1)`` (``L`` = long side),
    ``min_scale`` itself, then the thumbnail scale ``min(tile/H, tile/W)``; de-duplicated, sorted descending.

    Args:
        height: Source image height ``H`` in pixels.
        width: Source image width ``W`` in pixels.
        tile: Tile side in pixels (336 in the release).
        base_long_side: Long side of the base level (1008 = 3 tiles, hard-coded in the release).

    Returns:
        The scales, finest (1.0) first; all but the last are tiled levels, the last is the thumbnail.

    Raises:
        ConfigError: A size is not a positive int, or ``base_long_side <= tile``.

    An image whose long side is at most ``tile`` gets the single scale ``[1.0]``: one level of one tile (the image
    up-scaled to fill it) that is also the thumbnail, as the released slice mode (method.md §3.8) processes it.
    """
    height, width = _check_size("height", height), _check_size("width", width)
    tile, base_long_side = _check_size("tile", tile), _check_size("base_long_side", base_long_side)
    if base_long_side <= tile:
        raise ConfigError(f"base_long_side must be larger than tile ({tile} px), got {base_long_side}")
    long_side = max(height, width)
    if long_side <= tile:
        # The released pyramid code breaks here (the thumbnail scale reaches 1.0 and collides with the only level);
        # its slice mode (method.md §3.8) handles such an image as one tile, up-scaled to fill it, that serves as
        # both the thumbnail and the grid. That is what a single scale means here (see build_pyramid).
        return [1.0]
    min_scale = min(base_long_side / long_side, 1.0)
    scales: list[float] = []
    current = 1.0
    while current >= min_scale:
        scales.append(current)
        current /= 2
    if scales[-1] > min_scale:
        scales.append(min_scale)
    scales.append(min(tile / height, tile / width))
    return sorted(set(scales), reverse=True)


def level_geometry(height: int, width: int, scale: float, *, tile: int = 336) -> LevelGeometry:
    """Geometry of the level at ``scale`` (method.md §1.3, same rule for the thumbnail).

    ``h0 = round(H*s)``, ``w0 = round(W*s)``; ``k = min(ceil(h0/tile)*tile / h0, ceil(w0/tile)*tile / w0)`` up-scales
    the level until its limiting side fills its tile grid; ``resize_hw = (round(h0*k), round(w0*k))``;
    ``grid_hw = ceil(resize_hw / tile)``; ``padded_hw = grid_hw * tile``.

    Raises:
        ConfigError: Non-positive sizes or scale, or a side that rounds to 0 px at this scale (aspect ratio too
            extreme; the released code divides by zero there).
    """
    height, width, tile = _check_size("height", height), _check_size("width", width), _check_size("tile", tile)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale must be a positive finite number, got {scale!r}")
    h0, w0 = round(height * scale), round(width * scale)
    if h0 == 0 or w0 == 0:
        raise ConfigError(
            f"image of {width}x{height} px (W x H) at scale {scale} is {w0}x{h0} px: a side rounds to 0 px "
            "(aspect ratio too extreme for the Dynamic Image Pyramid)"
        )
    k = min(math.ceil(h0 / tile) * tile / h0, math.ceil(w0 / tile) * tile / w0)
    rh, rw = round(h0 * k), round(w0 * k)
    grid = (math.ceil(rh / tile), math.ceil(rw / tile))
    return LevelGeometry(
        scale=scale,
        content_hw=(h0, w0),
        resize_hw=(rh, rw),
        padded_hw=(grid[0] * tile, grid[1] * tile),
        grid_hw=grid,
        image_hw=(height, width),
        tile=tile,
    )


def build_pyramid(height: int, width: int, *, tile: int = 336, base_long_side: int = 1008) -> Pyramid:
    """Thumbnail and tiled levels (coarse -> fine) of an ``height x width`` image; see :func:`dip_scales`.

    Raises:
        ConfigError: an aspect ratio so extreme that the thumbnail's short side rounds to 0 px (names the size and
            the ratio), or invalid sizes.
    """
    scales = dip_scales(height, width, tile=tile, base_long_side=base_long_side)
    thumb_scale = scales[-1]
    if min(round(height * thumb_scale), round(width * thumb_scale)) < 1:
        ratio = max(height, width) / min(height, width)
        raise ConfigError(
            f"image of {width}x{height} px (W x H, aspect ratio {ratio:.0f}:1) cannot be tiled by the Dynamic Image "
            f"Pyramid: its short side rounds to 0 px in the {tile}-px thumbnail (the released code divides by zero "
            f"there); C2F needs an aspect ratio of at most about {2 * tile}:1"
        )
    if len(scales) == 1:  # long side <= tile: one tile, also the thumbnail
        only = level_geometry(height, width, 1.0, tile=tile)
        return Pyramid(image_hw=(height, width), thumbnail=only, levels=(only,))
    return Pyramid(
        image_hw=(height, width),
        thumbnail=level_geometry(height, width, scales[-1], tile=tile),
        levels=tuple(level_geometry(height, width, s, tile=tile) for s in reversed(scales[:-1])),
    )


def tiles(level: LevelGeometry) -> list[tuple[int, int]]:
    """All ``(row, col)`` tile indices of ``level``, row-major (the order of the original's tile tensor)."""
    return [(row, col) for row in range(level.grid_hw[0]) for col in range(level.grid_hw[1])]


def _check_tile(level: LevelGeometry, row: int, col: int) -> None:
    if not (0 <= row < level.grid_hw[0] and 0 <= col < level.grid_hw[1]):
        raise IndexError(f"tile ({row}, {col}) outside the {level.grid_hw[0]}x{level.grid_hw[1]} grid (rows x cols)")


def tile_box_in_level(level: LevelGeometry, row: int, col: int) -> tuple[int, int, int, int]:
    """Box ``(x0, y0, x1, y1)`` of tile ``(row, col)`` in level pixels; may extend into the bottom/right padding."""
    _check_tile(level, row, col)
    t = level.tile
    return col * t, row * t, (col + 1) * t, (row + 1) * t


def _source_box_exact(level: LevelGeometry, row: int, col: int) -> _ExactBox:
    _check_tile(level, row, col)
    (rh, rw), (h, w), t = level.resize_hw, level.image_hw, level.tile
    # Clip to the content (every tile holds some: grid = ceil(resize / tile)), then map level -> source pixels.
    y0, y1 = row * t, min((row + 1) * t, rh)
    x0, x1 = col * t, min((col + 1) * t, rw)
    return Fraction(x0 * w, rw), Fraction(y0 * h, rh), Fraction(x1 * w, rw), Fraction(y1 * h, rh)


def tile_source_box(level: LevelGeometry, row: int, col: int) -> Box:
    """Source-image window ``(x0, y0, x1, y1)`` that the content of tile ``(row, col)`` shows, in source pixels.

    The tile is clipped to the level content (padding shows nothing), then mapped with ``x * W / rw`` and
    ``y * H / rh``; the result is therefore inside ``[0, W] x [0, H]``. Floats, because level pixels do not fall on
    source pixel edges. Every tile of a level built by :func:`level_geometry` holds content (``grid = ceil(resize /
    tile)``), so there is always a box; adjacent tiles share their edge values exactly.
    """
    x0, y0, x1, y1 = _source_box_exact(level, row, col)
    return float(x0), float(y0), float(x1), float(y1)


def _overlapping(lo: Fraction, hi: Fraction, scale: Fraction, tile: int, count: int) -> range:
    """Tile indices along one axis overlapping ``[lo, hi)`` with positive length; ``scale`` maps it to level pixels."""
    lo_px, hi_px = lo * scale, hi * scale
    return range(max(math.floor(lo_px / tile), 0), min(math.ceil(hi_px / tile), count))


def _same_image(a: LevelGeometry, b: LevelGeometry) -> None:
    if a.image_hw != b.image_hw or a.tile != b.tile:
        raise ValueError(
            f"levels of different pyramids: image_hw {a.image_hw} / {b.image_hw}, tile {a.tile} / {b.tile}"
        )


def child_tiles(parent_level: LevelGeometry, row: int, col: int, child_level: LevelGeometry) -> list[tuple[int, int]]:
    """Tiles of ``child_level`` whose content overlaps the content of parent tile ``(row, col)`` (row-major).

    Computed exactly (rational arithmetic) through source coordinates, so a tile touching the parent's window only
    along an edge is not a child. Levels do not nest (each is up-scaled to its own grid), so a child may extend
    beyond its parent's window; together the children cover it, and every child tile has at least one parent.
    """
    _same_image(parent_level, child_level)
    x0, y0, x1, y1 = _source_box_exact(parent_level, row, col)
    (h, w), (rh, rw), (gh, gw) = child_level.image_hw, child_level.resize_hw, child_level.grid_hw
    rows = _overlapping(y0, y1, Fraction(rh, h), child_level.tile, gh)
    cols = _overlapping(x0, x1, Fraction(rw, w), child_level.tile, gw)
    return [(r, c) for r in rows for c in cols]


def unpadded_grid_hw(
    grid_hw_tokens: tuple[int, int], content_wh: tuple[int, int], *, per_tile: int = 12, floor: bool = True
) -> tuple[int, int]:
    """Token grid left after LLaVA's unpadding, cropping bottom/right only (method.md §2.3 step 3).

    With ``(W, H) = content_wh`` and the padded map ``(map_h, map_w)``: if ``W / H > map_w / map_h`` keep the first
    ``int(H * (map_w / W))`` rows, else the first ``int(W * (map_h / H))`` columns (float expressions as written,
    ``int()`` truncates). Truncation drops the last token row (column) that the content only partly fills: up to
    one token of the content's short side (1/36 of LRS-VQA's 1,008-px base level, 1/6 of the testbed's 96-px one).
    ``floor=False`` rounds up instead and keeps that partial row (never more than the padded map). Two call
    patterns, both in the original:

    * level 0 (``unpad_image``, §2.3): the **source image** size, ``unpadded_grid_hw(base.token_grid_hw(), (W, H))``;
    * level 1 (``unpad_image_hw``, §3.3.9): the level's **resize_hw**, reversed to (w, h):
      ``unpadded_grid_hw(lvl.token_grid_hw(), (lvl.resize_hw[1], lvl.resize_hw[0]))``.

    Args:
        grid_hw_tokens: Padded token grid ``(map_h, map_w)``, i.e. ``grid_hw * per_tile``.
        content_wh: ``(width, height)`` the crop is computed from (note the order).
        per_tile: Tokens per tile side; ``grid_hw_tokens`` must be a multiple (catches a tile grid passed by mistake).
        floor: ``True`` truncates as released; ``False`` keeps a partly filled last row / column (ceil).

    Returns:
        ``(rows, cols)`` of the unpadded grid, without the newline column.

    Raises:
        ConfigError: Non-positive sizes, a grid that is not a multiple of ``per_tile``, or a crop that leaves no
            token row or column (aspect ratio too extreme).
    """
    map_h, map_w = (
        _check_size("token grid height", grid_hw_tokens[0]),
        _check_size("token grid width", grid_hw_tokens[1]),
    )
    width, height = _check_size("content width", content_wh[0]), _check_size("content height", content_wh[1])
    if map_h % per_tile or map_w % per_tile:
        raise ConfigError(f"token grid {grid_hw_tokens} is not a multiple of per_tile={per_tile} (a tile grid?)")
    if width / height > map_w / map_h:
        kept = height * (map_w / width)
        rows, cols = (int(kept) if floor else min(math.ceil(kept), map_h)), map_w
    else:
        kept = width * (map_h / height)
        rows, cols = map_h, (int(kept) if floor else min(math.ceil(kept), map_w))
    if rows == 0 or cols == 0:
        raise ConfigError(f"unpadding a {map_h}x{map_w} token grid for {width}x{height} content leaves {rows}x{cols}")
    return rows, cols


def newline_indices(grid_hw_with_newline: tuple[int, int]) -> list[int]:
    """Flat indices of the newline tokens (last column of every row) of a ``(rows, cols + 1)`` token grid."""
    rows, width = grid_hw_with_newline
    return list(range(width - 1, rows * width, width))


def _f32(value: float) -> float:
    """Round a Python float to the nearest float32 (what torch does to a float scalar times an int64 tensor)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _rows_cols(indices: Iterable[int], grid_hw_with_newline: tuple[int, int]) -> list[tuple[int, int]]:
    rows, width = grid_hw_with_newline
    out = []
    for i in indices:
        if not 0 <= i < rows * width:
            raise IndexError(f"token index {i} outside the {rows}x{width} grid (0..{rows * width - 1})")
        out.append(divmod(i, width))
    return out


def vote_tiles(
    token_indices: Iterable[int], grid_hw_with_newline: tuple[int, int], next_grid_hw: tuple[int, int]
) -> list[tuple[int, int]]:
    """Next-level tiles voted for by the selected tokens, **as the released code maps them** (method.md §3.3.3-6).

    For a flat index ``i`` of the ``(H0, W0')`` grid (``W0'`` counts the newline column): ``r, c = divmod(i, W0')``,
    tile ``(floor(r * nb_h / H0), floor(c * nb_w / W0'))``. This divides the *unpadded* token grid, newline column
    included, by the *padded* tile grid, so it is only roughly geometric; and every newline token votes for the last
    tile column, so that whole column is always selected once the newlines are part of the selection.
    The products are evaluated as the original does (``torch.floor(int64 tensor * python float)`` runs in float32),
    which differs from exact integer floors for some larger grids (e.g. ``H0=22, nb_h=26, r=11`` gives 12, not 13).
    See :func:`vote_tiles_exact` for the geometric mapping.

    Args:
        token_indices: Selected flat token indices (any order, repeats allowed).
        grid_hw_with_newline: ``(H0, W0 + 1)``, the recorded shape of the token grid.
        next_grid_hw: ``grid_hw`` of the next level.

    Returns:
        Distinct ``(row, col)`` tiles, sorted row-major.
    """
    rows, width = grid_hw_with_newline
    factor_h, factor_w = _f32(next_grid_hw[0] / rows), _f32(next_grid_hw[1] / width)
    voted = {
        (math.floor(_f32(_f32(r) * factor_h)), math.floor(_f32(_f32(c) * factor_w)))
        for r, c in _rows_cols(token_indices, grid_hw_with_newline)
    }
    return sorted(voted)


def vote_tiles_exact(
    token_indices: Iterable[int],
    grid_hw_with_newline: tuple[int, int],
    level: LevelGeometry,
    next_level: LevelGeometry,
    *,
    per_tile: int = 12,
) -> list[tuple[int, int]]:
    """Next-level tiles whose content overlaps the image area of the selected tokens (the clean alternative).

    Token ``(r, c)`` of ``level`` covers level pixels ``[r, r + 1) x [c, c + 1)`` times ``tile / per_tile``, clipped
    to the content; that window is mapped through source coordinates onto ``next_level`` and every tile it overlaps
    (positive area, exact arithmetic) gets a vote. Newline tokens carry no location and vote for nothing.

    Args:
        token_indices: Selected flat token indices of the ``(H0, W0 + 1)`` grid.
        grid_hw_with_newline: ``(H0, W0 + 1)``; the grid is anchored top-left in ``level``.
        level: The level the tokens come from.
        next_level: The level to fetch tiles from (same image).
        per_tile: Tokens per tile side.

    Returns:
        Distinct ``(row, col)`` tiles of ``next_level``, sorted row-major.
    """
    _same_image(level, next_level)
    step = Fraction(level.tile, per_tile)
    rh, rw = level.resize_hw
    to_next_h = Fraction(next_level.resize_hw[0], rh)  # level px -> source px -> next-level px
    to_next_w = Fraction(next_level.resize_hw[1], rw)
    voted: set[tuple[int, int]] = set()
    for r, c in _rows_cols(token_indices, grid_hw_with_newline):
        if c == grid_hw_with_newline[1] - 1:
            continue
        y0, y1, x0, x1 = r * step, min((r + 1) * step, Fraction(rh)), c * step, min((c + 1) * step, Fraction(rw))
        if y0 >= y1 or x0 >= x1:  # token entirely in the padding
            continue
        rows = _overlapping(y0, y1, to_next_h, next_level.tile, next_level.grid_hw[0])
        cols = _overlapping(x0, x1, to_next_w, next_level.tile, next_level.grid_hw[1])
        voted.update((rr, cc) for rr in rows for cc in cols)
    return sorted(voted)
