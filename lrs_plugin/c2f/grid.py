"""Pure steps of the coarse-to-fine driver: token selection, level grids, token geometry, tile votes.

Every function takes tensors / geometry and returns tensors / indices, with no model and no state, so each step can
be tested on its own (timm ``patch_dropout`` style). :mod:`lrs_plugin.c2f.driver` composes them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lrs_plugin.c2f.pyramid import (
    LevelGeometry,
    Pyramid,
    newline_indices,
    unpadded_grid_hw,
    vote_tiles,
    vote_tiles_exact,
)
from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "build_level_grid",
    "grid_newline_indices",
    "grid_token_boxes",
    "select_topk",
    "select_tiles",
    "zoom_path",
]


def select_topk(
    scores: torch.Tensor,
    k: int,
    *,
    always_keep: Sequence[int] | torch.Tensor = (),
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of the ``k`` best candidates plus ``always_keep``, ascending (raster order).

    Ties are broken by position (the earlier token wins), so the result is deterministic; ``k`` is clamped to
    ``[1, number of candidates]`` so that at least one scored token is always kept.

    Args:
        scores: ``[N]`` scores.
        k: Tokens to pick by score (before adding ``always_keep``).
        always_keep: Indices kept regardless of score (newline tokens), list or LongTensor.
        candidates: ``[N]`` bool, positions that may be picked by score (``None``: all).

    Returns:
        ``[M]`` LongTensor of distinct indices, sorted ascending, ``M >= 1``.

    Raises:
        ConfigError: ``scores`` is not 1-D and non-empty, no candidate exists, or a kept index is out of range.

    """
    import torch

    if scores.ndim != 1 or scores.numel() == 0:
        raise ConfigError(f"scores must be a non-empty [N] tensor; got shape {list(scores.shape)}")
    n = scores.numel()
    allowed = torch.ones(n, dtype=torch.bool) if candidates is None else candidates.detach().to("cpu", torch.bool)
    pool = allowed.nonzero().flatten()
    if pool.numel() == 0:
        raise ConfigError("no candidate token to select from (every position is masked)")
    keep = torch.as_tensor(always_keep, dtype=torch.long).flatten().cpu()
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
        raise ConfigError(f"always_keep indices must lie in [0, {n}); got {keep.tolist()}")
    k = min(max(int(k), 1), pool.numel())
    order = torch.sort(scores.detach().float().cpu()[pool], descending=True, stable=True).indices
    picked = pool[order[:k]]
    return torch.unique(torch.cat([picked, keep]))  # unique() sorts ascending


def grid_newline_indices(shape_hw: tuple[int, int], has_newline: bool) -> list[int]:
    """Flat indices of the newline column of a ``(rows, width)`` grid (:func:`newline_indices`; ``[]`` without one)."""
    return newline_indices(shape_hw) if has_newline else []


def build_level_grid(
    tile_feats: torch.Tensor,
    tile_positions: Sequence[tuple[int, int]],
    grid_hw: tuple[int, int],
    content_wh: tuple[int, int],
    newline: torch.Tensor | None,
    *,
    floor: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Paste encoded tiles into a level's token grid, unpad it, append the newline column, flatten (§2.3, §3.3.8-10).

    Missing tiles stay zero vectors with mask ``False`` (placeholders). The crop keeps the top-left
    :func:`~lrs_plugin.c2f.unpadded_grid_hw` rows/columns (bottom/right only). With ``newline`` (LLaVA-NeXT's
    ``image_newline``) every row gets one extra token, mask ``True``; without it (LLaVA-1.5) there is no column.

    Args:
        tile_feats: ``[n, p*p, C]`` tokens of the ``n`` encoded tiles (raster order inside a tile).
        tile_positions: ``(row, col)`` of each tile in the level's tile grid.
        grid_hw: ``(tile_rows, tile_cols)`` of the level.
        content_wh: ``(W, H)`` the unpadding rule is computed from (source size for the base grid, the level's
            ``resize_hw`` reversed for zoomed grids, method.md §9.5).
        newline: ``[C]`` newline vector or ``None``.
        floor: ``True``: the released truncating crop; ``False`` keeps a partly filled last token row / column
            (:func:`~lrs_plugin.c2f.unpadded_grid_hw`).

    Returns:
        ``(embeds [N, C], mask [N] bool, shape_hw)`` with ``shape_hw = (rows, cols + 1)`` when there is a newline
        column (``(rows, cols)`` otherwise) and ``N = rows * width``.

    Raises:
        ConfigError: inconsistent tile count / positions, or a non-square token grid per tile.

    """
    import torch

    n, t, c = tile_feats.shape
    p = math.isqrt(t)
    if p * p != t:
        raise ConfigError(f"tile_feats must hold a square token grid per tile; got {t} tokens")
    if len(tile_positions) != n:
        raise ConfigError(f"{n} tile features but {len(tile_positions)} tile positions")
    gh, gw = grid_hw
    canvas = tile_feats.new_zeros(gh * p, gw * p, c)
    valid = torch.zeros(gh * p, gw * p, dtype=torch.bool, device=tile_feats.device)
    for feats, (row, col) in zip(tile_feats, tile_positions, strict=True):
        if not (0 <= row < gh and 0 <= col < gw):
            raise ConfigError(f"tile ({row}, {col}) outside the {gh}x{gw} tile grid")
        canvas[row * p : (row + 1) * p, col * p : (col + 1) * p] = feats.reshape(p, p, c)
        valid[row * p : (row + 1) * p, col * p : (col + 1) * p] = True
    rows, cols = unpadded_grid_hw((gh * p, gw * p), content_wh, per_tile=p, floor=floor)
    canvas, valid = canvas[:rows, :cols], valid[:rows, :cols]
    if newline is not None:
        canvas = torch.cat([canvas, newline.to(canvas).expand(rows, 1, c)], dim=1)
        valid = torch.cat([valid, valid.new_ones(rows, 1)], dim=1)
    width = canvas.shape[1]
    return canvas.reshape(rows * width, c), valid.reshape(rows * width), (rows, width)


def grid_token_boxes(
    level: LevelGeometry, shape_hw: tuple[int, int], *, per_tile: int, has_newline: bool
) -> torch.Tensor:
    """Source-pixel cell of every grid position (for the oracle and for visualisation).

    Token ``(r, c)`` covers level pixels ``[c, c + 1) x [r, r + 1)`` times ``tile / per_tile``, clipped to the
    level content ``resize_hw`` and mapped to the source with ``x * W / rw``, ``y * H / rh``.

    Args:
        level: The level the grid belongs to.
        shape_hw: ``(rows, width)`` of the flattened grid (``width`` includes the newline column if any).
        per_tile: Tokens per tile side.
        has_newline: Whether the last column is the newline column.

    Returns:
        ``[rows * width, 4]`` float32 ``(x1, y1, x2, y2)``; NaN rows for newline tokens and for tokens lying
        entirely in the padding.

    """
    import torch

    rows, width = shape_hw
    cols = width - 1 if has_newline else width
    step = level.tile / per_tile
    (rh, rw), (h, w) = level.resize_hw, level.image_hw
    y = torch.arange(rows, dtype=torch.float64)
    x = torch.arange(cols, dtype=torch.float64)
    y0, y1 = (y * step).clamp(max=rh) * (h / rh), ((y + 1) * step).clamp(max=rh) * (h / rh)
    x0, x1 = (x * step).clamp(max=rw) * (w / rw), ((x + 1) * step).clamp(max=rw) * (w / rw)
    boxes = torch.full((rows, width, 4), float("nan"), dtype=torch.float64)
    boxes[:, :cols, 0], boxes[:, :cols, 2] = x0.expand(rows, cols), x1.expand(rows, cols)
    boxes[:, :cols, 1], boxes[:, :cols, 3] = y0[:, None].expand(rows, cols), y1[:, None].expand(rows, cols)
    empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
    boxes[empty] = float("nan")
    return boxes.reshape(rows * width, 4).to(torch.float32)


def zoom_path(pyramid: Pyramid, num_zoom_steps: int) -> list[int]:
    """Level indices the driver visits: ``[0, next, ...]``, one per focus pass.

    The first zoom from level 0 follows :meth:`Pyramid.next_level_index` (clamped, so a single-level pyramid re-reads
    level 0, method.md §3.3.1); later steps stop once the finest level is reached.
    """
    path = [0]
    for step in range(num_zoom_steps):
        nxt = pyramid.next_level_index(path[-1])
        if step > 0 and nxt == path[-1]:
            break
        path.append(nxt)
    return path


def _as_newline_layout(indices: Sequence[int], shape_hw: tuple[int, int], has_newline: bool) -> list[int]:
    """Re-index a grid without newline column as if it had one (what the exact vote mapping expects)."""
    if has_newline:
        return list(indices)
    width = shape_hw[1]
    return [(i // width) * (width + 1) + i % width for i in indices]


def select_tiles(
    token_indices: Sequence[int],
    shape_hw: tuple[int, int],
    *,
    level: LevelGeometry,
    next_level: LevelGeometry,
    per_tile: int,
    has_newline: bool,
    quirk: bool,
    max_tiles: int | None,
) -> tuple[list[tuple[int, int]], dict[tuple[int, int], int]]:
    """Next-level tiles voted for by the selected tokens, optionally capped by vote count (method.md §3.3.3-6).

    Args:
        token_indices: Selected flat indices of the current grid.
        shape_hw: ``(rows, width)`` of the current grid.
        level: Level of the current grid.
        next_level: Level to fetch tiles from.
        per_tile: Tokens per tile side of the current grid.
        has_newline: Whether the grid has a newline column.
        quirk: ``True``: the released mapping (:func:`~lrs_plugin.c2f.vote_tiles`, newlines vote for the last
            column); ``False``: the exact pixel mapping (:func:`~lrs_plugin.c2f.vote_tiles_exact`).
        max_tiles: Keep only the most-voted tiles (ties: row-major order); ``None`` keeps all (the release).

    Returns:
        ``(tiles, votes)``: the tiles to fetch, row-major, and the vote count of every voted tile.

    """
    layout = (shape_hw[0], shape_hw[1] + (0 if has_newline else 1))

    def vote(indices: Sequence[int]) -> list[tuple[int, int]]:
        if quirk:
            return vote_tiles(indices, shape_hw, next_level.grid_hw)
        converted = _as_newline_layout(indices, shape_hw, has_newline)
        return vote_tiles_exact(converted, layout, level, next_level, per_tile=per_tile)

    votes: Counter[tuple[int, int]] = Counter()
    for i in token_indices:
        votes.update(vote([int(i)]))
    tiles = sorted(votes)
    if max_tiles is not None and len(tiles) > max_tiles:
        ranked = sorted(tiles, key=lambda t: (-votes[t], t))
        tiles = sorted(ranked[:max_tiles])
    return tiles, dict(votes)
