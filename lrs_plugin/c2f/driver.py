"""Coarse-to-fine text-guided token pruning (C2F): Dynamic Image Pyramid x focus scorer -> short LLM input.

:func:`run_c2f` follows method.md §11: encode the thumbnail and the base level, score the base grid against the
question, zoom into the next level's voted tiles only, score that grid (placeholders masked), keep the best tokens
and answer from ``prefix | thumbnail | separator | kept tokens | suffix``. Every knob lives in :class:`C2FConfig`
with the released defaults; docs/c2f.md lists each difference from the original code. The steps are pure functions
in :mod:`lrs_plugin.c2f.grid` (re-exported here). The module is a little over 400 lines on purpose: what is left is
the config, the per-question session (pyramid, prompt pieces, thumbnail, encoder) and the passes that read its
private grids; the geometry, rendering and grid steps are already their own modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lrs_plugin.c2f.grid import build_level_grid, select_topk, zoom_path
from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.costs import StageClock
from lrs_plugin.harness.record import C2FDetails, C2FLevel, FocusPass, FocusRecall, SampleRecord

if TYPE_CHECKING:
    import torch

    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.c2f.features import ImageFeatures
    from lrs_plugin.focus.scorers import FocusScorer
    from lrs_plugin.imagery.large_image import LargeImage

__all__ = ["POOLS", "C2FConfig", "C2FResult", "build_level_grid", "c2f_sequence_keep_all", "run_c2f", "select_topk"]

POOLS = ("avg2x2", "none")
RESAMPLES = ("bilinear", "area")
"""Per-tile pooling of level grids: 2x2 average (the release; equals its bilinear x0.5) or none."""


def _invalid(name: str, value: object, valid: str) -> ConfigError:
    return ConfigError(f"C2FConfig.{name}={value!r} is invalid; valid: {valid}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ratio(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= 1


@dataclass(frozen=True)
class C2FConfig:
    """Every knob of the coarse-to-fine driver; defaults reproduce the released inference code (method.md §3)."""

    # Fraction of the final grid's valid tokens kept by score (plus every newline token), §3.4.3. In (0, 1].
    keep_ratio: float = 0.25
    # Fraction of a grid's valid tokens that vote for next-level tiles (plus every newline token), §3.3.2. In (0, 1].
    select_ratio: float = 0.25
    # Zoom steps after the base level: 1 as released; 0 prunes the base grid directly (the "slice" variant, §3.8);
    # >1 keeps zooming to finer levels (the paper's iteration, opt-in, §3.6), stopping at the finest level.
    num_zoom_steps: int = 1
    # Base level long side in tiles (3 -> 1008 px for 336 px tiles, hard-coded in the release). >= 2.
    base_long_side_tiles: int = 3
    # Token whose embedding separates thumbnail and grid (':' as released, §2.4); None: no separator.
    separator: str | None = ":"
    # True: the released tile-vote mapping (unpadded token grid / padded tile grid, newlines vote for the last tile
    # column, §3.3.3-5); False: exact mapping through pixel coordinates.
    newline_vote_quirk: bool = True
    # True: the released unpadding truncates (int()) and drops the last token row / column the content only partly
    # fills, §2.3.3; False: keep it (ceil). Matters when one token is a large share of the base level.
    unpad_floor_quirk: bool = True
    # Masked placeholder keys in the scoring softmax: None = the scorer's own default (rfm: "faithful", the released
    # +1 logit quirk, §3.4.2; llm_attention: "exclude"), or force "faithful" / "exclude".
    masked_key_mode: str | None = None
    # Pooling of level-grid tokens per tile: "avg2x2" (released) or "none". The thumbnail is never pooled.
    pool: str = "avg2x2"
    # Prepend the unpooled thumbnail tile (T tokens) to the grid, as released.
    thumbnail: bool = True
    # Cap on tiles fetched per zoom, most-voted first (ties row-major); None = no cap, as released (§3.3.4).
    max_tiles_per_level: int | None = None
    # Cap on vision tokens sent to the LLM (thumbnail + kept grid tokens incl. newlines); None = no cap.
    token_budget: int | None = None
    # Pixel filter of every level and the thumbnail: "bilinear" (the released code's: F.interpolate, no antialias,
    # which aliases at strong downscales) or "area" (box average over the source window; cleaner, not what the
    # released model saw).
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("keep_ratio", "select_ratio"):
            if not _is_ratio(getattr(self, name)):
                raise _invalid(name, getattr(self, name), f"a number with 0 < {name} <= 1")
        if not _is_int(self.num_zoom_steps) or self.num_zoom_steps < 0:
            raise _invalid("num_zoom_steps", self.num_zoom_steps, "an int >= 0")
        if not _is_int(self.base_long_side_tiles) or self.base_long_side_tiles < 2:
            raise _invalid("base_long_side_tiles", self.base_long_side_tiles, "an int >= 2")
        if self.separator is not None and (not isinstance(self.separator, str) or not self.separator):
            raise _invalid("separator", self.separator, "a non-empty token string or None")
        for name in ("newline_vote_quirk", "unpad_floor_quirk", "thumbnail"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, getattr(self, name), "True or False")
        if self.masked_key_mode not in (None, "faithful", "exclude"):
            raise _invalid("masked_key_mode", self.masked_key_mode, "None, 'faithful', 'exclude'")
        if self.resample not in RESAMPLES:
            raise _invalid("resample", self.resample, ", ".join(repr(r) for r in RESAMPLES))
        if self.pool not in POOLS:
            raise _invalid("pool", self.pool, ", ".join(repr(p) for p in POOLS))
        for name in ("max_tiles_per_level", "token_budget"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise _invalid(name, value, "None or an int >= 1")


@dataclass
class C2FResult:
    """Answer and accounting of one :func:`run_c2f` call.

    Attributes:
        answer: The decoded greedy answer.
        inputs_embeds_len: Length of the LLM input sequence.
        record: Its :class:`~lrs_plugin.harness.record.SampleRecord`: the token counts, ``focus_passes`` (one per
            scoring pass), the focus recall, and ``c2f`` (every visited level as a
            :class:`~lrs_plugin.harness.record.C2FLevel`, the pyramid depth, ``token_budget``, ``kept_topk``).
        inputs_embeds: ``[1, L, C]`` LLM input when asked for (``return_inputs_embeds=True``), else ``None``.

    """

    answer: str
    inputs_embeds_len: int
    record: SampleRecord = field(default_factory=SampleRecord)
    inputs_embeds: torch.Tensor | None = None


@dataclass
class _Grid:
    """One level grid: flattened tokens (placeholders zero), validity, shape and geometry."""

    level_index: int
    embeds: torch.Tensor  # [N, C]
    mask: torch.Tensor  # [N] bool
    shape_hw: tuple[int, int]  # (rows, width incl. newline column)
    newlines: list[int]
    tiles: list[tuple[int, int]]


class _Session:
    """What one image + question shares across the passes: pyramid, prompt pieces, thumbnail, encoder plumbing."""

    def __init__(
        self,
        backbone: Backbone,
        image: LargeImage,
        question: str,
        config: C2FConfig,
        clock: StageClock | None = None,
        features: ImageFeatures | None = None,
    ) -> None:
        import torch

        from lrs_plugin.c2f.pyramid import build_pyramid

        self.backbone, self.image, self.config = backbone, image, config
        self.clock = clock or StageClock()  # times this session's rendering and encoding
        width, height = image.size
        tile = backbone.tile_size
        self.pyramid = build_pyramid(height, width, tile=tile, base_long_side=config.base_long_side_tiles * tile)
        prefix_ids, suffix_ids = backbone.split_prompt(question)
        self.prefix, self.suffix = backbone.embed_ids(prefix_ids), backbone.embed_ids(suffix_ids)
        head = [self.prefix]
        self.tiles_encoded = self.tiles_reused = 0
        self.features = features
        self.kept = None if features is None else features.get(image.key)
        self.thumbnail: torch.Tensor | None = None
        if config.thumbnail:
            if self.kept is None:
                self.thumbnail = self._encode(self._render_thumbnail(), pool=False)[0]
            else:
                self.thumbnail = self.kept.thumbnail
            head.append(self.thumbnail)
        self.thumbnail_tokens = head[-1].shape[0] if config.thumbnail else 0
        if config.separator is not None:
            head.append(backbone.embed_ids(torch.tensor([_separator_id(backbone, config.separator)])))
        self.head = torch.cat(head, dim=0)  # [P + T + s, C]
        self.newline = backbone.image_newline
        side = backbone.patches_per_side
        self.per_tile = side // 2 if config.pool == "avg2x2" else side

    def _render_thumbnail(self) -> torch.Tensor:
        """``[1, 3, S, S]`` normalised thumbnail tile."""
        import torch

        from lrs_plugin.c2f.render import render_thumbnail

        bb = self.backbone
        with self.clock.stage("image_read"):
            pixels = render_thumbnail(
                self.image,
                self.pyramid.thumbnail,
                tile=bb.tile_size,
                mean=bb.image_mean,
                std=bb.image_std,
                resample=self.config.resample,
            )
        return torch.from_numpy(pixels).unsqueeze(0)

    def _encode(self, pixels: torch.Tensor, *, pool: bool) -> torch.Tensor:
        self.tiles_encoded += pixels.shape[0]
        with self.clock.stage("vision_encode"):
            feats = self.backbone.encode_tiles(pixels)
            return self.backbone.pool2x2(feats) if pool and self.config.pool == "avg2x2" else feats

    def grid(self, level_index: int, tiles: list[tuple[int, int]], *, zoomed: bool) -> _Grid:
        """Render + encode ``tiles`` of a level and build its grid (base grid unpadded with the source size)."""
        import torch

        from lrs_plugin.c2f.grid import grid_newline_indices
        from lrs_plugin.c2f.render import render_tiles

        bb, level = self.backbone, self.pyramid.levels[level_index]
        store = self.features if zoomed else None  # it answers (and keeps) only for the image it holds
        feats = None if store is None else store.zoomed(self.image.key, level_index, tiles)
        if feats is not None:  # these tiles of this level were encoded together for an earlier question
            self.tiles_encoded += len(tiles)
            self.tiles_reused += len(tiles)
        else:
            with self.clock.stage("image_read"):
                pixels = render_tiles(
                    self.image,
                    level,
                    tiles,
                    tile=bb.tile_size,
                    mean=bb.image_mean,
                    std=bb.image_std,
                    resample=self.config.resample,
                )
            feats = self._encode(torch.from_numpy(pixels), pool=True)
            if store is not None:
                store.keep_zoomed(self.image.key, level_index, tiles, feats)
        (h, w), (rh, rw) = level.image_hw, level.resize_hw
        content_wh = (rw, rh) if zoomed else (w, h)  # method.md §9.5: base grid uses the source size
        embeds, mask, shape = build_level_grid(
            feats, tiles, level.grid_hw, content_wh, self.newline, floor=self.config.unpad_floor_quirk
        )
        return _Grid(level_index, embeds, mask, shape, grid_newline_indices(shape, self.newline is not None), tiles)

    def base_grid(self) -> _Grid:
        """The base level's grid (every tile): the image's kept features when it has some, else encoded and kept."""
        from lrs_plugin.c2f.features import BaseFeatures

        if self.kept is not None:
            self.tiles_encoded += self.kept.tiles
            self.tiles_reused += self.kept.tiles
            return self.kept.base_grid
        grid = self.grid(0, _all_tiles(self, 0), zoomed=False)
        if self.features is not None:
            self.features.put(self.image.key, BaseFeatures(self.thumbnail, grid, self.tiles_encoded))
        return grid

    def sequence(self, grid_tokens: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """``[1, L, C]`` = prefix | thumbnail | separator | grid tokens | suffix, and the grid's span."""
        import torch

        start = self.head.shape[0]
        seq = torch.cat([self.head, grid_tokens.to(self.head), self.suffix], dim=0).unsqueeze(0)
        return seq, slice(start, start + grid_tokens.shape[0])


def _separator_id(backbone: Backbone, token: str) -> int:
    """Id of the vocabulary token ``token`` (as ``convert_tokens_to_ids``), else of its single-token encoding."""
    tok = backbone.tokenizer
    tid = tok.convert_tokens_to_ids(token)
    if tid is not None and tid != tok.unk_token_id:
        return int(tid)
    ids = tok.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(f"separator={token!r} is not a single token of this tokenizer (encodes to {ids})")
    return int(ids[0])


def _score(session: _Session, focus: FocusScorer, grid: _Grid, context: Any, passes: list[FocusPass]) -> torch.Tensor:
    """One focus pass over the sequence holding ``grid``; records its length for FLOPs accounting."""
    import torch

    seq, span = session.sequence(grid.embeds)
    key_mask = None
    if not bool(grid.mask.all()):
        key_mask = torch.ones(seq.shape[1], dtype=torch.bool, device=grid.mask.device)
        key_mask[span] = grid.mask
    passes.append(
        FocusPass(level=grid.level_index, seq_len=int(seq.shape[1]), decoder_layers=focus.decoder_layers_per_pass)
    )
    return focus.score(seq, grid_span=span, query_index=seq.shape[1] - 1, key_mask=key_mask, context=context).float()


def _context(session: _Session, grid: _Grid, doc: Mapping[str, Any] | None) -> Any:
    from lrs_plugin.c2f.grid import grid_token_boxes
    from lrs_plugin.focus.scorers import FocusContext

    box = None if doc is None else doc.get("hbox")
    boxes = grid_token_boxes(
        session.pyramid.levels[grid.level_index],
        grid.shape_hw,
        per_tile=session.per_tile,
        has_newline=bool(grid.newlines),
    )
    return FocusContext(
        box=None if box is None else tuple(float(v) for v in box),
        image_wh=session.image.size,
        token_boxes=boxes,
        masked_key_mode=session.config.masked_key_mode,
    )


def _level(session: _Session, grid: _Grid, scores: torch.Tensor, picked: torch.Tensor, **last: Any) -> C2FLevel:
    """The record of one visited level; ``last`` holds the zoom-level or last-level fields."""
    level = session.pyramid.levels[grid.level_index]
    return C2FLevel(
        level=grid.level_index,
        scale=level.scale,
        tile_grid_hw=list(level.grid_hw),
        tiles_encoded=len(grid.tiles),
        tiles=[list(t) for t in grid.tiles],
        grid_shape_hw=list(grid.shape_hw),
        tokens_in_grid=int(grid.mask.numel()),
        tokens_valid=int(grid.mask.sum()),
        newline_tokens=len(grid.newlines),
        tokens_picked=int(picked.numel()),
        picked_indices=picked.tolist(),
        scores=[round(float(s), 7) for s in scores.tolist()],
        **last,
    )


def run_c2f(
    backbone: Backbone,
    image: LargeImage,
    question: str,
    focus: FocusScorer,
    config: C2FConfig | None = None,
    *,
    doc: Mapping[str, Any] | None = None,
    max_new_tokens: int,
    stop_strings: Sequence[str] | None = None,
    return_inputs_embeds: bool = False,
    clock: StageClock | None = None,
    features: ImageFeatures | None = None,
) -> C2FResult:
    """Answer ``question`` about ``image`` with coarse-to-fine pruning (method.md §11).

    Args:
        backbone: The loaded LLaVA / LLaVA-NeXT backbone.
        image: The source image (read lazily, only the tiles needed).
        question: The question text (the prompt is built by :meth:`Backbone.build_prompt`).
        focus: A scorer from :func:`lrs_plugin.focus.build_focus`.
        config: Knobs (default :class:`C2FConfig` ``()``, the released settings).
        doc: The task document; its ``hbox`` feeds the ``oracle`` scorer.
        max_new_tokens: Greedy decoding limit.
        stop_strings: Strings that end generation (the task's ``until``; see :meth:`Backbone.generate`).
        return_inputs_embeds: Keep the final ``[1, L, C]`` LLM input in the result.
        clock: Times rendering (``image_read``), encoding (``vision_encode``), the focus passes, votes and top-k
            (``focus``), prefill and decoding.
        features: The image's question-independent features kept across questions (thumbnail, base grid;
            :mod:`lrs_plugin.c2f.features`): used when they are this image's, else computed and kept there.

    Returns:
        The answer, the LLM input length and its record (per-level and total figures).

    Raises:
        ConfigError: an aspect ratio too extreme for the pyramid, or a ``token_budget`` below this image's fixed
            cost.

    """
    cfg = config or C2FConfig()
    clock = clock or StageClock()
    session = _Session(backbone, image, question, cfg, clock, features)
    with clock.stage("focus"):  # the levels' rendering and encoding inside are charged to their own stages
        seq, record = _zoom_and_prune(session, focus, doc)
    out = backbone.generate(seq, max_new_tokens=max_new_tokens, stop_strings=stop_strings, clock=clock)
    record.new_tokens = out.num_new_tokens
    return C2FResult(out.text, int(seq.shape[1]), record, seq if return_inputs_embeds else None)


def _zoom_and_prune(
    session: _Session, focus: FocusScorer, doc: Mapping[str, Any] | None
) -> tuple[torch.Tensor, SampleRecord]:
    """The LLM input ``[1, L, C]`` C2F builds for the session's question, and its record (but ``new_tokens``)."""
    from lrs_plugin.c2f.grid import select_tiles

    backbone, cfg = session.backbone, session.config
    path = zoom_path(session.pyramid, cfg.num_zoom_steps)
    if len(session.pyramid.levels) == 1 and session.pyramid.levels[0].num_tiles == 1:
        path = path[:1]  # one tile (an image under one tile side): nothing to zoom into, as in the released slice mode
    passes: list[FocusPass] = []
    levels: list[C2FLevel] = []
    grid = session.base_grid()
    for next_index in path[1:]:
        scores = _score(session, focus, grid, _context(session, grid, doc), passes)
        k = int(cfg.select_ratio * int(grid.mask.sum()))
        picked = select_topk(scores, k, always_keep=grid.newlines, candidates=grid.mask)
        tiles, votes = select_tiles(
            picked.tolist(),
            grid.shape_hw,
            level=session.pyramid.levels[grid.level_index],
            next_level=session.pyramid.levels[next_index],
            per_tile=session.per_tile,
            has_newline=bool(grid.newlines),
            quirk=cfg.newline_vote_quirk,
            max_tiles=cfg.max_tiles_per_level,
        )
        votes_by_tile = {f"{r},{c}": n for (r, c), n in sorted(votes.items())}
        levels.append(
            _level(session, grid, scores, picked, selected_tiles=[list(t) for t in tiles], tile_votes=votes_by_tile)
        )
        grid = session.grid(next_index, tiles, zoomed=True)

    scores = _score(session, focus, grid, _context(session, grid, doc), passes)
    n_valid = int(grid.mask.sum())
    k = int(cfg.keep_ratio * n_valid)
    if cfg.token_budget is not None:
        room = cfg.token_budget - session.thumbnail_tokens - len(grid.newlines)
        if room < 1:
            raise ConfigError(
                f"C2FConfig.token_budget={cfg.token_budget} cannot hold this image's fixed vision tokens: thumbnail "
                f"{session.thumbnail_tokens} + {len(grid.newlines)} newline tokens + at least 1 kept token"
            )
        k = min(k, room)
    keep = select_topk(scores, k, always_keep=grid.newlines, candidates=grid.mask)
    levels.append(_level(session, grid, scores, keep, tokens_kept=int(keep.numel())))

    kept = grid.embeds[keep.to(grid.embeds.device)]
    seq, _ = session.sequence(kept)
    record = SampleRecord(
        tiles_encoded=session.tiles_encoded,
        tiles_reused=None if session.features is None else session.tiles_reused,
        vision_tokens_encoded=session.tiles_encoded * backbone.tokens_per_tile,
        vision_tokens_to_llm=session.thumbnail_tokens + int(keep.numel()),
        llm_input_len=int(seq.shape[1]),
        focus_passes=passes,
        c2f=C2FDetails(
            levels=levels, pyramid_levels=len(session.pyramid.levels), token_budget=cfg.token_budget, kept_topk=k
        ),
        focus_recall=_focus_recall(session, grid, keep, doc),
    )
    return seq, record


def _focus_recall(session: _Session, grid: _Grid, keep: torch.Tensor, doc: Mapping[str, Any] | None) -> FocusRecall:
    """Tile and token recall of the doc's ``hbox`` (both ``None`` without a box)."""
    from lrs_plugin.c2f.grid import grid_token_boxes
    from lrs_plugin.focus.recall import tile_recall, token_recall

    box = None if doc is None else doc.get("hbox")
    if box is None or len(box) != 4:
        return FocusRecall(tile=None, token=None)
    level = session.pyramid.levels[grid.level_index]
    cells = grid_token_boxes(level, grid.shape_hw, per_tile=session.per_tile, has_newline=bool(grid.newlines))
    return FocusRecall(
        tile=tile_recall(box, level, grid.tiles),
        token=token_recall(box, session.image.size, cells[keep.to(cells.device)].tolist()),
    )


def _all_tiles(session: _Session, level_index: int) -> list[tuple[int, int]]:
    from lrs_plugin.c2f.pyramid import tiles

    return tiles(session.pyramid.levels[level_index])


def c2f_sequence_keep_all(
    backbone: Backbone,
    image: LargeImage,
    question: str,
    config: C2FConfig | None = None,
    *,
    grid_embeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, slice]:
    """The LLM input C2F builds when nothing is pruned: every tile of the final level, every token kept.

    ``prefix | thumbnail | separator | full grid of the last level on the zoom path | suffix``. With
    ``keep_ratio = select_ratio = 1`` and a zoom that fetches every tile, :func:`run_c2f` must send exactly this.

    Args:
        backbone: The backbone.
        image: The source image.
        question: The question.
        config: Knobs (``num_zoom_steps``, ``thumbnail``, ``separator``, ``pool``, ``base_long_side_tiles`` matter).
        grid_embeds: ``[N, C]`` grid tokens to use instead of encoding the level; ``N`` must equal the grid's
            token count for this image (newline column included).

    Returns:
        ``(inputs_embeds [1, L, C], grid_span)``.

    Raises:
        ConfigError: ``grid_embeds`` has the wrong shape (the expected token count is named).

    """
    cfg = config or C2FConfig()
    session = _Session(backbone, image, question, cfg)
    final = zoom_path(session.pyramid, cfg.num_zoom_steps)[-1]
    grid = session.grid(final, _all_tiles(session, final), zoomed=cfg.num_zoom_steps > 0)
    if grid_embeds is not None:
        expected = (grid.embeds.shape[0], backbone.hidden_size)
        if tuple(grid_embeds.shape) != expected:
            rows, width = grid.shape_hw
            raise ConfigError(
                f"grid_embeds has shape {list(grid_embeds.shape)}, but level {final}'s grid for this image holds "
                f"{expected[0]} tokens ({rows} rows x {width} columns incl. newline) of width {expected[1]}"
            )
        return session.sequence(grid_embeds)
    return session.sequence(grid.embeds)
