"""Focus recall of the stock-layout reducers: their tokens' source-pixel cells, read off a backbone's geometry.

Thin wrappers over :mod:`lrs_plugin.backbone.token_cells` (the geometry) and :func:`lrs_plugin.focus.recall_stats`
(the figures). ``random``, ``visionzip``, ``prumerge``, ``fastv`` and ``pdrop`` encode every tile of the stock
preprocessing (the anyres grid, under any ``max_tiles`` cap, covers the whole image), so their tile recall is 1.0
for a box inside the image; LLaVA-1.5's single tile shows only the part its processor keeps (a centre crop for
CLIP's processor), so there the box centre must lie in it. Their token recall is over the cells of the tokens each
sends to the LLM; base-image tokens count (coarse cells over the whole image: the LLM sees the box through them too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.harness.record import FocusRecall

__all__ = ["encoded_region", "focus_recall", "stock_cells", "tile_cells", "tile_fit"]


def tile_fit(backbone: Backbone) -> str:
    """How the backbone's whole-image tile shows the image (:data:`lrs_plugin.backbone.token_cells.TILE_FITS`).

    LLaVA-NeXT's base image is always squashed; LLaVA-1.5's tile follows its image processor (``do_pad``: padded
    to a square; ``do_center_crop``: CLIP's centre crop; neither: squashed).
    """
    if backbone.arch == "llava_next":
        return "squash"
    processor = backbone.processor.image_processor
    if getattr(processor, "do_pad", False):
        return "pad"
    return "center_crop" if getattr(processor, "do_center_crop", False) else "squash"


def _grid(
    backbone: Backbone, image_wh: tuple[int, int], grid_pinpoints: Sequence[Sequence[int]] | None
) -> tuple[int, int] | None:
    if backbone.arch != "llava_next":
        return None
    from lrs_plugin.backbone.anyres import grid_shape

    pinpoints = backbone.config.image_grid_pinpoints if grid_pinpoints is None else grid_pinpoints
    return grid_shape((int(image_wh[1]), int(image_wh[0])), pinpoints, backbone.tile_size)


def stock_cells(
    backbone: Backbone, image_wh: tuple[int, int], grid_pinpoints: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """Cells ``[N, 4]`` of the ``N`` tokens :meth:`Backbone.plain_vision_embeds` gives for an image of ``image_wh``.

    Args:
        backbone: The backbone (tile and patch sizes, pinpoints, tile pooling, newline, image processor).
        image_wh: ``(W, H)`` of the source image.
        grid_pinpoints: The anyres pinpoints used instead of the checkpoint's, as given to ``plain_vision_embeds``.
    """
    from lrs_plugin.backbone.anyres import pooled_side
    from lrs_plugin.backbone.token_cells import stock_token_cells

    g = backbone.patches_per_side
    pool = backbone.anyres_tile_pool
    return stock_token_cells(
        image_wh,
        g,
        tile=backbone.tile_size,
        grid=_grid(backbone, image_wh, grid_pinpoints),
        grid_side=g if pool is None else pooled_side(g, pool),
        newline=backbone.image_newline is not None,
        fit=tile_fit(backbone),
        prefix_tokens=backbone.tokens_per_tile - g * g,
    )


def tile_cells(
    backbone: Backbone, image_wh: tuple[int, int], grid_pinpoints: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """Cells ``[n_tiles, g*g, 4]`` of every CLIP patch of the tiles :meth:`Backbone.image_crops` cuts (same order)."""
    from lrs_plugin.backbone.token_cells import tile_patch_cells

    return tile_patch_cells(
        image_wh,
        backbone.patches_per_side,
        tile=backbone.tile_size,
        grid=_grid(backbone, image_wh, grid_pinpoints),
        fit=tile_fit(backbone),
    )


def encoded_region(backbone: Backbone, image_wh: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Source pixels the finest encoded tiles show: ``None`` (the whole image) for an anyres grid, else the tile's."""
    if backbone.arch == "llava_next":
        return None
    from lrs_plugin.backbone.token_cells import tile_extent
    from lrs_plugin.data.lrs_vqa import clip_box

    return clip_box(tile_extent(image_wh, backbone.tile_size, tile_fit(backbone)), image_wh, whole_pixels=False)


def focus_recall(
    backbone: Backbone,
    doc: Mapping[str, Any] | None,
    image_wh: tuple[int, int],
    cells: np.ndarray,
    kept: Any = None,
    *,
    num_tokens: int,
) -> FocusRecall:
    """Tile and token recall of a stock-layout reducer (both ``None`` without a box).

    Args:
        backbone: The backbone (for the encoded region).
        doc: The task document (``hbox``).
        image_wh: ``(W, H)`` of the source image.
        cells: ``[N, 4]`` cells of the ``N`` vision tokens the kept indices point into.
        kept: Indices ``[K]`` (array, tensor or list) of the tokens sent to the LLM; ``None``: all ``N``.
        num_tokens: ``N``, the length of the vision sequence ``cells`` must describe.

    Raises:
        ConfigError: ``cells`` does not hold one row per vision token (the processor's anyres pinpoints differ from
            the model's, or a layout this module does not know).
    """
    from lrs_plugin.focus.recall import recall_stats

    if cells.shape[0] != int(num_tokens):
        raise ConfigError(
            f"focus recall: {cells.shape[0]} token cells for {num_tokens} vision tokens; the processor's and the "
            "model's anyres settings (image_grid_pinpoints, tile pooling) must agree"
        )
    if kept is not None:
        cells = cells[np.asarray(kept.cpu() if hasattr(kept, "cpu") else kept, dtype=np.int64)]
    return recall_stats(doc, image_wh, cells, encoded_region(backbone, image_wh))
