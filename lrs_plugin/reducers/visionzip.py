"""``visionzip``: VisionZip (Yang et al., CVPR 2025), text-agnostic dominant + contextual tokens per vision tile.

Per tile of ``S = 1 + P`` CLIP tokens, at the layer whose output LLaVA uses (``vision_feature_layer``):

* **dominant**: the [CLS] hidden state plus the ``dominant - 1`` patches the [CLS] query attends to most
  (softmax attention summed over heads), in token order;
* **contextual**: of the other tokens, ``contextual`` anchors at a uniform stride; every remaining token joins the
  anchor whose head-averaged key is most cosine-similar; each contextual token is the anchor's hidden state plus
  the mean of the tokens that joined it;
* the ``dominant + contextual`` tokens go through the projector (the [CLS] state included, which stock LLaVA drops).

LLaVA-NeXT follows the official ``restore_image_features_sorted`` layout: the base image's tokens first (selection
order), then every grid tile's dominant patches put back in raster order over the whole grid, then the tiles' [CLS]
states, then their contextual tokens. Unpadding is skipped and no ``image_newline`` token is inserted, as in the
official code. Budgets are per tile, so the total grows with the grid: ``(1 + rows * cols) * (dominant + contextual)``.

Defaults are the official README's 54 + 10 = 64 per tile; the paper's budgets are 162+30 / 108+20 / 54+10
(LLaVA-1.5) and 108+20 / 54+10 / 27+5 per crop (LLaVA-NeXT); the C2F paper's efficiency row used 64 per tile at
anyres-p144 (``max_tiles=144``), its MME-RealWorld-RS run 120 + 24. Deviation, documented: the attention row is
recomputed from the layer's own ``q_proj`` / ``k_proj`` (equal to the eager weights to float precision), so the tower
keeps its SDPA / flash kernel; the official code patches CLIP's attention to return eager weights. When a budget
exceeds a tile's tokens it is clipped (all patches kept, no contextual tokens).

Focus recall (:mod:`lrs_plugin.reducers._cells`): every tile is encoded, so the tile recall is 1.0 for a box inside
the image. The token recall is over the cells of the **dominant patches** only (the base image's included): a
contextual token merges tokens from all over its tile and a [CLS] state summarises it, so neither has a cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.record import SampleRecord, VisionZipKnobs
from lrs_plugin.reducers._stock import LastImage, PreLLMReducer
from lrs_plugin.reducers._tiles import option_int, take_options
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.harness.costs import StageClock
    from lrs_plugin.imagery.large_image import LargeImage

__all__ = ["VisionZipConfig", "VisionZipReducer", "visionzip_cells", "visionzip_select", "visionzip_next_layout"]


@dataclass(frozen=True)
class VisionZipConfig:
    """Knobs of the ``visionzip`` reducer (per-tile budgets).

    Attributes:
        dominant: Dominant tokens per tile, the [CLS] state included (``dominant - 1`` patches); >= 1.
        contextual: Contextual (merged) tokens per tile; >= 0.

    The anyres-pN limit (``max_tiles``, ``pinpoints``) is the shared :class:`~lrs_plugin.reducers._tiles.TileLimit`.
    """

    dominant: int = 54
    contextual: int = 10

    def __post_init__(self) -> None:
        for name, low in (("dominant", 1), ("contextual", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"visionzip: {name} must be an int >= {low}; got {value!r}")


def visionzip_select(
    hidden: torch.Tensor, cls_attention: torch.Tensor, keys: torch.Tensor, dominant: int, contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's dominant + contextual tokens of one tile.

    Args:
        hidden: ``[S, Cv]`` feature-layer hidden states, [CLS] first then ``P = S - 1`` patches in raster order.
        cls_attention: ``[P]`` [CLS]-to-patch attention summed over heads.
        keys: ``[S, Dk]`` the layer's keys averaged over heads (similarity metric).
        dominant: Dominant tokens, [CLS] included (``min(dominant - 1, P)`` patches are picked).
        contextual: Contextual tokens (clipped to the tokens left).

    Returns:
        ``(tokens [D + C', Cv], patches [D - 1])``: dominant tokens in token order ([CLS] first), then contextual
        tokens in anchor order; ``patches`` are the picked patch positions (0-based, ascending).
    """
    s = hidden.shape[0]
    picked = torch.topk(cls_attention.float(), k=min(dominant - 1, s - 1)).indices.sort().values
    keep = torch.zeros(s, dtype=torch.bool, device=hidden.device)
    keep[0] = True
    keep[picked.to(hidden.device) + 1] = True
    rest = torch.nonzero(~keep).flatten()
    c = min(contextual, int(rest.numel()))
    if c == 0:
        return hidden[keep], picked
    metric = keys[rest].float()
    metric = metric / metric.norm(dim=-1, keepdim=True)
    anchors = torch.arange(0, rest.numel(), max(1, rest.numel() // c), device=hidden.device)[:c]
    is_anchor = torch.zeros(rest.numel(), dtype=torch.bool, device=hidden.device)
    is_anchor[anchors] = True
    others = torch.nonzero(~is_anchor).flatten()
    merged = hidden[rest[anchors]].clone()
    if others.numel():
        join = (metric[others] @ metric[anchors].T).argmax(dim=1)  # [n_others] -> anchor slot
        # Sum in float32 at least: hundreds of fp16 CLIP states (large activation channels) can overflow.
        acc = torch.promote_types(hidden.dtype, torch.float32)
        sums = torch.zeros(merged.shape, dtype=acc, device=hidden.device).index_add_(
            0, join, hidden[rest[others]].to(acc)
        )
        counts = torch.bincount(join, minlength=c).clamp(min=1).to(acc)
        merged = (merged.to(acc) + sums / counts[:, None]).to(hidden.dtype)
    return torch.cat([hidden[keep], merged]), picked


def visionzip_next_layout(
    tokens: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int], patches_per_side: int
) -> torch.Tensor:
    """Order the per-tile VisionZip tokens of a LLaVA-NeXT image as the official ``restore_image_features_sorted``.

    Args:
        tokens: ``[1 + rows*cols, K, C]`` projected tokens per tile (base image first), each tile's rows being
            ``[CLS, D-1 dominant patches in token order, contextual...]``.
        patches: ``[1 + rows*cols, D-1]`` dominant patch positions per tile (ascending).
        grid: ``(rows, cols)`` of the anyres grid.
        patches_per_side: ``g``, patches per tile side.

    Returns:
        ``[K * (1 + rows*cols), C]``: the base tile's ``K`` tokens, the grid tiles' dominant patches in raster
        order over the whole ``rows*g x cols*g`` patch grid, the grid tiles' [CLS] states, their contextual tokens.
    """
    rows, cols = grid
    g = patches_per_side
    tiles, tile_patches = tokens[1:], patches[1:]
    d = tile_patches.shape[1]
    if tiles.shape[0] != rows * cols:
        raise ConfigError(f"{tiles.shape[0]} grid tiles do not fill a {rows}x{cols} grid")
    # Global raster position of every kept patch: tile (tr, tc), patch (pr, pc) -> (tr*g + pr, tc*g + pc).
    t = torch.arange(rows * cols, device=tokens.device)[:, None]
    pr, pc = tile_patches.to(tokens.device) // g, tile_patches.to(tokens.device) % g
    position = ((t // cols) * g + pr) * (cols * g) + (t % cols) * g + pc  # [rows*cols, d]
    order = position.flatten().argsort()
    dominant = tiles[:, 1 : 1 + d].reshape(-1, tokens.shape[-1])[order]
    return torch.cat([tokens[0], dominant, tiles[:, 0], tiles[:, 1 + d :].reshape(-1, tokens.shape[-1])])


def visionzip_cells(
    tile_cells: torch.Tensor, patches: torch.Tensor, tokens_per_tile: int, grid: tuple[int, int] | None
) -> torch.Tensor:
    """Source-pixel cells of the VisionZip tokens, in the order the reducer sends them.

    Args:
        tile_cells: ``[n, g*g, 4]`` cells of every patch of every tile
            (:func:`lrs_plugin.backbone.token_cells.tile_patch_cells`).
        patches: ``[n, D-1]`` dominant patch positions per tile (from :func:`visionzip_select`).
        tokens_per_tile: ``K``, tokens per tile (``D`` dominant, [CLS] included, then the contextual ones).
        grid: ``(rows, cols)`` of the LLaVA-NeXT grid (laid out by :func:`visionzip_next_layout`); ``None`` for one
            LLaVA-1.5 tile.

    Returns:
        ``[n * K, 4]``: a dominant patch's cell; NaN for [CLS] states and contextual (merged) tokens.
    """
    n, d = patches.shape
    nan = torch.full((n, 1, 4), float("nan"), dtype=tile_cells.dtype)
    dominant = torch.gather(tile_cells, 1, patches.cpu().long()[..., None].expand(n, d, 4))
    rest = nan.expand(n, tokens_per_tile - 1 - d, 4)
    per_tile = torch.cat([nan, dominant, rest], dim=1)  # [n, K, 4], each tile's row laid out as its tokens
    if grid is None:
        return per_tile.reshape(-1, 4)
    side = math.isqrt(tile_cells.shape[1])
    return visionzip_next_layout(per_tile, patches.cpu(), grid, side)


@register_reducer("visionzip", stage="pre_llm")
class VisionZipReducer(PreLLMReducer):
    """VisionZip on every vision tile, before the LLM (see the module docstring for the method and layout)."""

    name = "visionzip"
    stage = "pre_llm"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        from lrs_plugin.backbone.vision_probe import encoder_layers, feature_layer_index

        tiles, options = take_options(options, "visionzip", ("dominant", "contextual"))
        self.config = VisionZipConfig(
            dominant=option_int(options.get("dominant", 54), "dominant", "visionzip"),
            contextual=option_int(options.get("contextual", 10), "contextual", "visionzip"),
        )
        layers = encoder_layers(backbone.model.model.vision_tower)
        feature_layer_index(backbone.config.vision_feature_layer, len(layers))  # fail at build time, not per sample
        self.backbone = backbone
        self.max_tiles = tiles.max_tiles
        self._pinpoints = tiles.grid_pinpoints(backbone)
        self.vision = LastImage(self._encode)

    def vision_tokens(self, image: Any) -> tuple[torch.Tensor, int]:
        """``(tokens [N, C] sent to the LLM, tiles encoded)`` for an RGB PIL image."""
        vision, tiles, _ = self._encode(image)
        return vision, tiles

    def _encode(self, image: Any) -> tuple[torch.Tensor, int, torch.Tensor]:
        """:meth:`vision_tokens` and the tokens' source-pixel cells ``[N, 4]`` (:func:`visionzip_cells`)."""
        from lrs_plugin.backbone.vision_probe import probe_feature_layer
        from lrs_plugin.reducers._cells import tile_cells

        bb = self.backbone
        pixel_values, grid = bb.image_crops(image, self._pinpoints)
        probe = probe_feature_layer(bb, pixel_values)
        picked, patches = [], []
        for i in range(pixel_values.shape[0]):
            tokens, idx = visionzip_select(
                probe.hidden[i], probe.cls_attention[i], probe.keys[i], self.config.dominant, self.config.contextual
            )
            picked.append(tokens)
            patches.append(idx)
        with torch.no_grad():
            # The tower may run in its own dtype (vision_dtype): the projector takes its own.
            projected = bb.model.model.multi_modal_projector(torch.stack(picked).to(bb.projector_dtype))  # [n, K, C]
        if grid is None:
            vision = projected.reshape(-1, projected.shape[-1])
        else:
            vision = visionzip_next_layout(projected, torch.stack(patches), grid, bb.patches_per_side)
        cells = torch.from_numpy(tile_cells(bb, image.size, self._pinpoints))
        cells = visionzip_cells(cells, torch.stack(patches), int(projected.shape[1]), grid)
        embed_dtype = bb.language_model.get_input_embeddings().weight.dtype
        return vision.to(bb.device, embed_dtype), int(pixel_values.shape[0]), cells

    def vision_for(
        self, image: LargeImage, doc: Mapping[str, Any] | None = None, clock: StageClock | None = None
    ) -> tuple[torch.Tensor, int, SampleRecord]:
        """The VisionZip tokens of the image (computed once per image), the method's settings and the focus recall."""
        from lrs_plugin.reducers._cells import focus_recall

        vision, tiles, cells = self.vision.get(image, clock)
        record = SampleRecord(
            projector_tokens=int(vision.shape[0]),  # only the kept tokens go through the projector
            visionzip=VisionZipKnobs(
                dominant=self.config.dominant, contextual=self.config.contextual, max_tiles=self.max_tiles
            ),
            focus_recall=focus_recall(self.backbone, doc, image.size, cells.numpy(), num_tokens=int(vision.shape[0])),
        )
        return vision, tiles, record
