"""``prumerge``: LLaVA-PruMerge / PruMerge+ (Shang et al., ICCV 2025), per vision tile, before the LLM.

Per tile of ``P`` patches (the [CLS] token is dropped, as LLaVA's ``patch`` features do):

* **signal**: the [CLS] row of ``softmax(q k^T * Cv^-1/2)`` with ``q`` / ``k`` the full-width ``q_proj`` / ``k_proj``
  outputs of the layer that reads the feature layer (CLIP-L's last layer for ``vision_feature_layer=-2``), one head;
* **selection**: ``k = int(P * ratio)`` patches of highest attention, ``ratio`` being the fraction of IQR outliers
  (attention ``> Q3 + 1.5 IQR``) when ``adaptive``, else ``reduction_ratio``. PruMerge+ (``variant="plus"``) appends
  spatially uniform patches: adaptive, indices ``0, s, 2s, ... < P - 1`` with ``s = int(int(1 / ratio) / 3)`` that are
  not already picked; non-adaptive, ``int(t / 2), int(t / 2) + t, ... < P - 1`` with ``t = int(1 / reduction_ratio)``,
  *not* de-duplicated (a patch may be kept twice, as in the official code);
* **merge**: every kept token adds the [CLS]-attention-weighted sum (not the mean) of its 32 most key-cosine-similar
  tokens among all other kept and pruned tokens; one extra token, the attention-weighted sum of all pruned tokens, is
  appended. A tile sends ``k (+ samples) + 1`` tokens to the projector, in selection order.

"PruMerge++" in the C2F paper is this PruMerge+ function: the seed (VisionXLab/LRS-VQA) carries a copy of the
official ``token_prune_merge_advanced_plus`` under the heading "PruMerge++", called (commented out) on the
concatenated crops of an image with ``if_adaptive=False, reduction_ratio=0.25``. There the crops' outputs are simply
concatenated (``mm_patch_merge_type='flat'``): base image first, then the grid tiles in raster order, no unpadding,
no ``image_newline``, no 2x2 pooling. This reducer does the same per tile, so totals grow with the grid.

Defaults are the official ``forward`` call: ``variant="plus"``, ``adaptive=True``, ``reduction_ratio=1/8`` (unused
when adaptive). The seed's call is ``adaptive=false,reduction_ratio=0.25`` (289 tokens per 576-patch tile).

Deviations, documented:

* adaptive ``k`` is computed **per tile**: the official code takes the IQR over the whole batch (one ``k`` for all
  crops) and its adaptive PruMerge+ branch only runs with a batch of one image (LLaVA-1.5);
* the attention row is recomputed from the layer's input in float32 (the official code hooks ``q_proj`` / ``k_proj``
  outputs in the tower's dtype); the merge runs in float32 (float64 inputs stay float64) and is cast back;
* the official code hard-codes ``layers[23]``, ``575`` (``P - 1``) and ``k=32`` neighbours; here the layer after the
  feature layer, ``P - 1``, and ``min(32, tokens available)`` neighbours (only small towers have fewer than 33);
* adaptive PruMerge+ with no outlier divides by zero in the official code; here the sampling step is then that of
  one outlier (``int(P / 3)``); non-adaptive PruMerge+ writes into a buffer of ``2k`` indices and fails unless the
  uniform samples number exactly ``k``; here they are appended whatever their number;
* the seed's copy reads ``hidden_states[21]`` as features (its ``feature_select`` defaults to ``no_prune=False``);
  this reducer uses the checkpoint's ``vision_feature_layer``, as the official code (``select_layer``) does.

Ties in ``topk`` follow ``torch.topk`` on one tile (the official code runs it on the batch); with real attention
values ties are not expected. The IQR uses ``numpy.percentile`` on float32, as the official code does.

Focus recall (:mod:`lrs_plugin.reducers._cells`): every tile is encoded, so the tile recall is 1.0 for a box inside
the image. The token recall is over the cells of the **kept patches** (the base image's included): what a kept token
absorbs in the merge adds no cell, and the pruned-summary token has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.record import PruMergeKnobs, SampleRecord, TileTokenCounts
from lrs_plugin.reducers._stock import LastImage, PreLLMReducer
from lrs_plugin.reducers._tiles import take_options
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.harness.costs import StageClock
    from lrs_plugin.imagery.large_image import LargeImage

__all__ = [
    "NEIGHBOURS",
    "VARIANTS",
    "PruMergeConfig",
    "PruMergeReducer",
    "prumerge_merge",
    "prumerge_outlier_ratio",
    "prumerge_select",
    "prumerge_tile",
]

VARIANTS = ("plus", "base")
"""``plus``: PruMerge+ (``token_prune_merge_advanced_plus``, the C2F paper's "PruMerge++"); ``base``: PruMerge."""

NEIGHBOURS = 32
"""Tokens each kept token absorbs (the official code's ``topk(k=32)``)."""

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class PruMergeConfig:
    """Knobs of the ``prumerge`` reducer (the official function's arguments).

    Attributes:
        variant: ``"plus"`` (PruMerge+, spatially uniform samples added) or ``"base"`` (PruMerge).
        adaptive: ``k`` from the IQR outlier rule per tile (the official ``if_adaptive``); else ``reduction_ratio``.
        reduction_ratio: Fraction of patches kept by attention when not adaptive (and the uniform step
            ``int(1 / reduction_ratio)`` of non-adaptive PruMerge+), in ``(0, 1]``.

    The anyres-pN limit (``max_tiles``, ``pinpoints``) is the shared :class:`~lrs_plugin.reducers._tiles.TileLimit`.
    """

    variant: str = "plus"
    adaptive: bool = True
    reduction_ratio: float = 0.125

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"prumerge: variant={self.variant!r} is not valid; valid: {', '.join(VARIANTS)}")
        if not isinstance(self.adaptive, bool):
            raise ConfigError(f"prumerge: adaptive must be true or false; got {self.adaptive!r}")
        r = self.reduction_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise ConfigError(f"prumerge: reduction_ratio must be a number in (0, 1]; got {r!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PruMergeConfig:
        """Build from ``--model_args`` values (strings such as ``"false"`` / ``"0.25"`` accepted).

        Raises:
            ConfigError: a value that does not parse, or one out of range (valid values named).
        """
        variant = str(options.get("variant", cls.variant)).strip().lower()
        adaptive = options.get("adaptive", cls.adaptive)
        if isinstance(adaptive, str):
            word = adaptive.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ConfigError(f"prumerge: adaptive={adaptive!r} is not valid; valid: true, false")
            adaptive = word in _TRUE
        elif isinstance(adaptive, int) and not isinstance(adaptive, bool) and adaptive in (0, 1):
            adaptive = bool(adaptive)
        ratio = options.get("reduction_ratio", cls.reduction_ratio)
        if isinstance(ratio, str):
            try:
                ratio = float(ratio.strip())
            except ValueError:
                raise ConfigError(f"prumerge: reduction_ratio must be a number in (0, 1]; got {ratio!r}") from None
        return cls(variant=variant, adaptive=adaptive, reduction_ratio=ratio)


def prumerge_outlier_ratio(cls_attention: torch.Tensor) -> float:
    """Fraction of patches whose [CLS] attention is an upper IQR outlier (the official ``outlier_dectection``).

    Args:
        cls_attention: ``[P]`` [CLS]-to-patch attention of one tile.

    Returns:
        ``#{a > Q3 + 1.5 (Q3 - Q1)} / P``, quartiles by ``numpy.percentile`` (linear) on float32 values.
    """
    values = cls_attention.detach().to(dtype=torch.float32).cpu().numpy().ravel()
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    return int(np.count_nonzero(values > q3 + 1.5 * (q3 - q1))) / len(values)


def prumerge_select(
    cls_attention: torch.Tensor, *, variant: str = "plus", adaptive: bool = True, reduction_ratio: float = 0.125
) -> torch.Tensor:
    """Indices of the patches PruMerge(+) keeps in one tile, in the official order.

    Args:
        cls_attention: ``[P]`` [CLS]-to-patch attention.
        variant: ``"plus"`` or ``"base"`` (see :data:`VARIANTS`).
        adaptive: ``k`` from :func:`prumerge_outlier_ratio`, else ``int(P * reduction_ratio)``.
        reduction_ratio: Used when not adaptive, in ``(0, 1]``.

    Returns:
        ``[K]`` int64 patch indices (0-based) on ``cls_attention``'s device: the ``k`` top patches by descending
        attention, then (``plus``) the uniform samples in ascending order. Non-adaptive ``plus`` may repeat an index.
    """
    p = cls_attention.shape[0]
    device = cls_attention.device
    ratio = prumerge_outlier_ratio(cls_attention) if adaptive else float(reduction_ratio)
    top = torch.topk(cls_attention, int(p * ratio), largest=True).indices
    if variant == "base":
        return top
    if adaptive:
        step = int(1 / ratio) if ratio > 0 else p  # the official code divides by zero here
        samples = torch.arange(0, p - 1, max(1, int(step / 3)), device=device)
        samples = samples[~torch.isin(samples, top)]
    else:
        step = int(1 / reduction_ratio)
        samples = torch.arange(int(step / 2), p - 1, step, device=device)
    return torch.cat([top, samples])


def prumerge_merge(
    features: torch.Tensor,
    keys: torch.Tensor,
    cls_attention: torch.Tensor,
    keep: torch.Tensor,
    neighbours: int = NEIGHBOURS,
) -> torch.Tensor:
    """PruMerge's merge step for one tile: kept tokens absorb their key-nearest tokens, plus one pruned summary.

    The pool a kept token draws from is every other kept entry (a repeated index counts as another entry) and the
    pruned patches. As in the official ``complement_idx``, when ``keep`` repeats ``r`` indices the ``r`` lowest
    unkept patch indices drop out of the pruned set (merged nowhere, not in the summary token).

    Args:
        features: ``[P, C]`` patch features (feature layer, [CLS] excluded).
        keys: ``[P, Dk]`` the scoring layer's keys of the patches (cosine metric).
        cls_attention: ``[P]`` [CLS]-to-patch attention (merge weights).
        keep: ``[K]`` kept patch indices from :func:`prumerge_select`.
        neighbours: Tokens absorbed per kept token (clipped to the pool size minus one).

    Returns:
        ``[K + 1, C]`` in ``features``' dtype: ``features[keep[i]] + sum_j a_j features[j]`` over the ``neighbours``
        pool tokens of highest key cosine with ``keep[i]``, in ``keep`` order, then ``sum_j a_j features[j]`` over the
        pruned patches.
    """
    p = features.shape[0]
    dtype = torch.promote_types(features.dtype, torch.float32)
    keep = keep.to(features.device)
    kept_mask = torch.zeros(p, dtype=torch.bool, device=features.device)
    kept_mask[keep] = True
    repeats = int(keep.numel()) - int(kept_mask.sum())
    pruned = torch.nonzero(~kept_mask).flatten()[repeats:]
    pool = torch.cat([keep, pruned])  # [K + R] patch index of each pool entry
    x = features.to(dtype)
    a = cls_attention.to(features.device, dtype)
    merged = x[keep]
    m = min(int(neighbours), int(pool.numel()) - 1)
    if keep.numel() and m > 0:
        unit = F.normalize(keys.to(features.device, dtype), p=2, dim=-1)
        sim = unit[keep] @ unit[pool].T  # [K, K + R]
        slots = torch.arange(keep.numel(), device=features.device)
        sim[slots, slots] = float("-inf")  # a token is not its own neighbour (its repeat is)
        members = pool[sim.topk(m, dim=1, largest=True).indices]  # [K, m]
        merged = merged + (x[members] * a[members].unsqueeze(-1)).sum(dim=1)
    extra = (x[pruned] * a[pruned].unsqueeze(-1)).sum(dim=0, keepdim=True)
    return torch.cat([merged, extra]).to(features.dtype)


def prumerge_tile(
    hidden: torch.Tensor, keys: torch.Tensor, cls_attention: torch.Tensor, config: PruMergeConfig
) -> torch.Tensor:
    """PruMerge(+) tokens of one tile.

    Args:
        hidden: ``[S, Cv]`` feature-layer hidden states, [CLS] first then ``P = S - 1`` patches.
        keys: ``[S, Dk]`` the scoring layer's keys, [CLS] first.
        cls_attention: ``[P]`` [CLS]-to-patch attention.
        config: The reducer's knobs.

    Returns:
        ``[K + 1, Cv]``: the merged kept tokens in selection order, then the pruned-summary token.
    """
    keep = prumerge_select(
        cls_attention, variant=config.variant, adaptive=config.adaptive, reduction_ratio=config.reduction_ratio
    )
    return prumerge_merge(hidden[1:], keys[1:], cls_attention, keep)


@register_reducer("prumerge", stage="pre_llm")
class PruMergeReducer(PreLLMReducer):
    """PruMerge / PruMerge+ on every vision tile, before the LLM (see the module docstring for method and layout)."""

    name = "prumerge"
    stage = "pre_llm"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        from lrs_plugin.backbone.vision_probe import encoder_layers, next_layer_index

        tiles, options = take_options(options, "prumerge", ("variant", "adaptive", "reduction_ratio"))
        self.config = PruMergeConfig.from_options(options)
        layers = encoder_layers(backbone.model.model.vision_tower)
        next_layer_index(backbone.config.vision_feature_layer, len(layers))  # fail at build time, not per sample
        self.backbone = backbone
        self.max_tiles = tiles.max_tiles
        self._pinpoints = tiles.grid_pinpoints(backbone)
        self.vision = LastImage(self._encode)

    def vision_tokens(self, image: Any) -> tuple[torch.Tensor, int, list[int]]:
        """``(tokens [N, C] sent to the LLM, tiles encoded, tokens per tile)`` for an RGB PIL image.

        Tiles are concatenated in the processor's order (base image, then the grid in raster order), as the seed's
        ``flat`` merge does: no unpadding, no ``image_newline``.
        """
        vision, tiles, counts, _ = self._encode(image)
        return vision, tiles, counts

    def _encode(self, image: Any) -> tuple[torch.Tensor, int, list[int], np.ndarray]:
        """:meth:`vision_tokens` and the tokens' source-pixel cells ``[N, 4]``.

        A tile's tokens are its kept patches (:func:`prumerge_select`), whose cells they carry, then the
        pruned-summary token (a NaN cell).
        """
        from lrs_plugin.backbone.vision_probe import probe_next_layer
        from lrs_plugin.reducers._cells import tile_cells

        bb = self.backbone
        pixel_values, _grid = bb.image_crops(image, self._pinpoints)
        probe = probe_next_layer(bb, pixel_values)
        patch_cells = tile_cells(bb, image.size, self._pinpoints)  # [n, P, 4]
        picked, cells = [], []
        for i in range(pixel_values.shape[0]):
            keep = prumerge_select(
                probe.cls_attention[i],
                variant=self.config.variant,
                adaptive=self.config.adaptive,
                reduction_ratio=self.config.reduction_ratio,
            )
            # = prumerge_tile(...), keeping the indices for the cells.
            picked.append(prumerge_merge(probe.hidden[i][1:], probe.keys[i][1:], probe.cls_attention[i], keep))
            cells += [patch_cells[i][keep.cpu().numpy()], np.full((1, 4), np.nan)]
        counts = [int(t.shape[0]) for t in picked]
        with torch.no_grad():
            # The tower may run in its own dtype (vision_dtype): the projector takes its own.
            vision = bb.model.model.multi_modal_projector(torch.cat(picked)[None].to(bb.projector_dtype))[0]
        embed_dtype = bb.language_model.get_input_embeddings().weight.dtype
        return vision.to(bb.device, embed_dtype), int(pixel_values.shape[0]), counts, np.concatenate(cells)

    def vision_for(
        self, image: LargeImage, doc: Mapping[str, Any] | None = None, clock: StageClock | None = None
    ) -> tuple[torch.Tensor, int, SampleRecord]:
        """The PruMerge tokens of the image (computed once per image), the method's settings and the focus recall."""
        from lrs_plugin.reducers._cells import focus_recall

        vision, tiles, counts, cells = self.vision.get(image, clock)
        knobs = PruMergeKnobs(
            variant=self.config.variant,
            adaptive=self.config.adaptive,
            reduction_ratio=self.config.reduction_ratio,
            max_tiles=self.max_tiles,
            # Tokens per tile sent to the LLM: kept patches (+ uniform samples) + the pruned-summary token.
            tokens_per_tile=TileTokenCounts(min=min(counts), mean=round(sum(counts) / len(counts), 3), max=max(counts)),
        )
        record = SampleRecord(
            projector_tokens=int(vision.shape[0]),  # only the kept tokens go through the projector
            prumerge=knobs,
            focus_recall=focus_recall(self.backbone, doc, image.size, cells, num_tokens=int(vision.shape[0])),
        )
        return vision, tiles, record
