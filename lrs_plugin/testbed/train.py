r"""``lrs-plugin testbed train``: a small LLaVA-NeXT trained from scratch on the CPU for the ``lrs_synth`` questions.

The model is an ordinary ``LlavaNextForConditionalGeneration`` (CLIP tower of 32-px tiles and 8-px patches, Qwen2
LM, the plugin's tokenizer recipe with the testbed's words, a ChatML template), saved with ``save_pretrained`` and
its processor: any LLaVA-NeXT loader reads it, and the plugin loads it like the released checkpoints.

**Training data** come from ``train``-split scenes only (:func:`lrs_plugin.testbed.scenes.make_scene`; the
evaluation split is a disjoint random stream). Each example is one question about one scene, presented in one of
the input formats the evaluated methods produce, drawn from a fixed mix (:data:`FORMAT_MIX`, independent of the
method evaluated later):

============================  =====================================================================================
``stock_whole``               the stock LLaVA-NeXT processor on the whole scene with the checkpoint's pinpoints
                              (base tile + at most 3 grid tiles, 96 px): what ``reducer=none`` / low resolution show
``stock_crop``                the stock layout of a window of the scene at full resolution (1-4 x 1-4 tiles, at
                              least the object; its own base tile first): what the anyres baselines show
``pyramid_base``              C2F's layout at the pyramid's base level: ``thumbnail | ':' | pooled base grid``
``pyramid_fine``              C2F's layout at a finer level: ``thumbnail | ':' | pooled grid`` of a random block of
                              tiles around the asked object plus random other tiles, with random token dropping
                              (keep 15-100 % of the valid tokens, every newline kept): what C2F's selection sends
``pyramid_full``              the pooled grid of every tile of the finest level (scenes of at most 200 tiles)
============================  =====================================================================================

Where the window or the tiles are chosen, the training example uses the planted object's box (that is what makes a
training example answerable); nothing about boxes reaches the model at inference. Count questions are asked only in
formats that show the whole scene; shape, colour and presence questions (the asked object's colour or the absent one)
in every format.

Two stages: :func:`_vision_pretrain` trains the vision tower and projector alone on per-patch colour / shape labels
(``vision_steps``; a from-scratch tower learns shape slowly, and the LLM cannot read what the tower does not see),
then every weight trains on the mix. Besides the answer loss the joint stage has the same auxiliary labels and a
focus term (:func:`_focus_loss`: the attention of the last prompt token at :data:`FOCUS_LAYER` on the asked
object's grid tokens). Every answer is trained as the assistant's reply (the answer's tokens, then
``<|im_end|>``); its loss is the cross-entropy on those tokens only. AdamW, linear warm-up, cosine decay, gradient
clipping, float32, a fixed seed and a fixed number of threads: the same weights for the same arguments on the same
machine.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lrs_plugin.errors import ConfigError
from lrs_plugin.testbed import scenes as sc

if TYPE_CHECKING:
    import torch

    from lrs_plugin.backbone.adapter import Backbone

__all__ = [
    "FORMAT_MIX",
    "MODEL_SPEC",
    "TrainConfig",
    "build_testbed_model",
    "testbed_corpus",
    "train_testbed",
]

FORMAT_MIX: dict[str, float] = {
    "stock_whole": 0.15,
    "stock_crop": 0.2,
    "pyramid_base": 0.1,
    "pyramid_fine": 0.45,
    "pyramid_full": 0.1,
}
"""Share of each input format in the training stream (see the module docstring)."""

MODEL_SPEC: dict[str, Any] = {
    "arch": "llava_next",
    "lm": "qwen2",
    "image_size": sc.TILE,
    "patch_size": 8,
    "text_layers": 6,
    "vision_layers": 3,
    "vocab_size": 640,
    "init_std": 0.02,
    "widths": {
        "text_hidden": 128,
        "text_intermediate": 384,
        "text_heads": 4,
        "text_kv_heads": 2,
        "vision_hidden": 96,
        "vision_intermediate": 192,
        "vision_heads": 4,
    },
}
"""Arguments of :func:`lrs_plugin.backbone.build_tiny_llava` for the testbed model (about 1.6 M parameters)."""


def _testbed_texts() -> tuple[str, ...]:
    colours, shapes = " ".join(sc.COLORS), " ".join(sc.SHAPES)
    return (
        f"What is the shape of the {colours} object? " * 4,
        f"What is the color of the {shapes}? " * 4,
        "How many white circles are there? 1 2 3 4 5 " * 4,
        f"Is there a {colours} object? yes no " * 4,
        (colours + " " + shapes + " ") * 8,
        "Which colored objects are there? red triangle, blue square, yellow cross, purple diamond, none " * 4,
    )


def testbed_corpus() -> tuple[str, ...]:
    """Tokenizer training text: :data:`lrs_plugin.backbone.CORPUS` plus the testbed's questions and answers."""
    from lrs_plugin.backbone.tiny import CORPUS

    return CORPUS + _testbed_texts()


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of :func:`train_testbed`; the defaults are the measured run of docs/testbed.md.

    Attributes beyond the optimiser's:
        others_share: Share of the ``pyramid_fine`` examples (at full difficulty) whose tiles also show the scene's
            other targets, so the question's colour or shape has to pick its object among several (the binding
            every multi-object view needs; without it the model answers from whichever object it sees).
        probe_weight: Weight of the query probe: a linear head (discarded after training) reads, from the last
            prompt token's input to :data:`FOCUS_LAYER`, the colour or shape the question names. It teaches the
            first hop of the routing the answer needs (question word -> query), so the focus term's second hop
            (query -> the object's tokens) can form. 0 turns it off.
        gap_share, gap_max: That share of the joint-stage examples skips a random number (1 to ``gap_max``) of
            RoPE positions between the vision tokens and the question, showing the model the long query-to-image
            distances of every-tile views without paying for the tokens. Off by default (measured: it cost the
            pyramid views' colour accuracy more than it gained, see docs/testbed.md).
    """

    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 60
    weight_decay: float = 0.01
    train_scenes: int = 240
    seed: int = 0
    threads: int = 2
    log_every: int = 25
    curriculum: float = 0.4
    aux_weight: float = 1.0
    focus_weight: float = 1.0
    vision_steps: int = 3000
    vision_batch_size: int = 16
    others_share: float = 0.8
    probe_weight: float = 1.0
    gap_share: float = 0.0
    gap_max: int = 2048
    format_mix: dict[str, float] = field(default_factory=lambda: dict(FORMAT_MIX))

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "train_scenes", "threads", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"TrainConfig.{name}={value!r} is invalid; valid: an int >= 1")
        for name in ("warmup", "seed", "vision_steps", "vision_batch_size", "gap_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"TrainConfig.{name}={value!r} is invalid; valid: an int >= 0")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"TrainConfig.{name}={value!r} is invalid; valid: a finite number >= 0")
        unknown = sorted(set(self.format_mix) - set(FORMAT_MIX))
        if unknown or not self.format_mix or any(v < 0 for v in self.format_mix.values()):
            raise ConfigError(
                f"TrainConfig.format_mix={self.format_mix!r} is invalid; valid: non-negative shares of "
                f"{', '.join(FORMAT_MIX)}"
            )
        if (
            not isinstance(self.curriculum, (int, float))
            or isinstance(self.curriculum, bool)
            or not (0 <= self.curriculum <= 1)
        ):
            raise ConfigError(f"TrainConfig.curriculum={self.curriculum!r} is invalid; valid: a share in [0, 1]")
        for name in ("others_share", "gap_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 1):
                raise ConfigError(f"TrainConfig.{name}={value!r} is invalid; valid: a share in [0, 1]")
        for name in ("aux_weight", "focus_weight", "probe_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"TrainConfig.{name}={value!r} is invalid; valid: a finite number >= 0")
        if sum(self.format_mix.values()) <= 0:
            raise ConfigError("TrainConfig.format_mix needs at least one positive share")


def build_testbed_model(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write the untrained testbed checkpoint (random weights, std 0.02) to ``out_dir``."""
    from lrs_plugin.backbone.tiny import build_tiny_llava

    return build_tiny_llava(out_dir, seed=seed, corpus=testbed_corpus(), silence=False, **MODEL_SPEC)


# --------------------------------------------------------------------------------------------- examples
@dataclass
class _Example:
    """One training example before encoding: tiles to encode and how to lay their features out."""

    tiles: np.ndarray  # [n, 3, S, S] float32, normalised
    layout: Callable[[torch.Tensor], tuple[torch.Tensor, Any]]  # features [n, T, C] -> (vision tokens [N, C], focus)
    question: str
    answer: str
    fmt: str
    category: str
    cells: np.ndarray | None = None  # [n, T, 2] int64 auxiliary labels (colour, shape); -100 = none
    pooled_cells: np.ndarray | None = None  # [n, T / 4, 2] the same per 2x2-pooled cell


AUX_COLORS = ("none", *sc.COLORS, "white")
"""Classes of the auxiliary colour head (``white`` = a count disc)."""

AUX_SHAPES = ("none", *sc.SHAPES)
"""Classes of the auxiliary shape head."""

_MIN_SHAPE_PX = 8.0  # an object narrower than this in level pixels gets no shape label (it cannot be read)
_MIN_COVER = 0.15  # share of a patch an object must cover to label it


def cell_labels(
    objects: Sequence[sc.PlantedObject],
    tile_boxes: Sequence[tuple[float, float, float, float]],
    *,
    patches: int,
    level_scale: float,
) -> np.ndarray:
    """Auxiliary labels of every patch of some tiles: the named object covering the patch's source window.

    A patch is labelled with the object that covers the largest share of it when that share is at least
    :data:`_MIN_COVER` (or when the patch holds the object's centre), so every patch an object shows up in carries
    its colour and shape: the vision tower learns to spread the shape over all of them.

    Args:
        objects: The scene's planted objects (distractors and the background are class ``none``).
        tile_boxes: Source window ``(x0, y0, x1, y1)`` of each tile's full ``S x S`` pixels (padding included).
        patches: Patches per tile side.
        level_scale: Level pixels per source pixel (shape labels only where an object is >= 8 level pixels).

    Returns:
        ``[n, patches**2, 2]`` int64: colour class (:data:`AUX_COLORS`) and shape class (:data:`AUX_SHAPES`, -100
        where the object is too small to read), raster order.
    """
    out = np.zeros((len(tile_boxes), patches * patches, 2), np.int64)
    named = [o for o in objects if o.kind in sc.SHAPES or o.kind == "disc"]
    for n, (x0, y0, x1, y1) in enumerate(tile_boxes):
        cw, ch = (x1 - x0) / patches, (y1 - y0) / patches
        best = np.zeros(patches * patches)
        for o in named:
            bx1, by1, bx2, by2 = o.box
            cx, cy = o.center
            c0, c1 = max(0, int((bx1 - x0) // cw)), min(patches - 1, int((bx2 - x0) // cw))
            r0, r1 = max(0, int((by1 - y0) // ch)), min(patches - 1, int((by2 - y0) // ch))
            for row in range(r0, r1 + 1):
                for col in range(c0, c1 + 1):
                    px0, py0 = x0 + col * cw, y0 + row * ch
                    ox = max(0.0, min(bx2, px0 + cw) - max(bx1, px0))
                    oy = max(0.0, min(by2, py0 + ch) - max(by1, py0))
                    cover = ox * oy / (cw * ch)
                    if px0 <= cx < px0 + cw and py0 <= cy < py0 + ch:
                        cover = max(cover, 1.0)  # the centre's patch always names its object
                    k = row * patches + col
                    if cover < _MIN_COVER or cover <= best[k]:
                        continue
                    best[k] = cover
                    out[n, k, 0] = AUX_COLORS.index(o.color)
                    if o.kind in sc.SHAPES:
                        readable = (bx2 - bx1) * level_scale >= _MIN_SHAPE_PX
                        out[n, k, 1] = AUX_SHAPES.index(o.kind) if readable else -100
                    else:
                        out[n, k, 1] = 0
    return out


def _aux_labels(
    objects,
    boxes,
    *,
    patches: int,
    level_scale: float,
    first: tuple[tuple[float, ...], float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cell_labels` of the tiles at ``boxes`` per patch and per 2x2-pooled cell, after the first tile.

    The first tile is the thumbnail, labelled from ``first = (source box of its tile, its scale)``, or unlabelled
    (``first=None``: the stock base tile).
    """
    out = []
    for side in (patches, patches // 2):
        grid = cell_labels(objects, boxes, patches=side, level_scale=level_scale)
        if first is None:
            head = np.full((1, *grid.shape[1:]), -100, np.int64)
        else:
            head = cell_labels(objects, [first[0]], patches=side, level_scale=first[1])
        out.append(np.concatenate([head, grid]))
    return out[0], out[1]


CAPTION_QUESTION = f"Which colored objects are there?{sc.NONCOUNT_SUFFIX}"
"""A training-only question: its answer names every planted object the view shows at a readable size
(``"red triangle, blue square"``, top to bottom, then left to right), a dense signal that teaches the LM to look
at the vision tokens (LLaVA's first stage is captioning for the same reason)."""

CAPTION_SHARE = 0.3
"""Share of the examples of the object-centred formats (``stock_crop``, ``pyramid_fine``) asked the caption."""


def caption_of(objects: Sequence[sc.PlantedObject], boxes: Sequence[tuple[float, float, float, float]]) -> str:
    """The caption of the targets whose centre lies in one of ``boxes`` (source pixels); ``"none"`` if none."""
    seen = []
    for o in objects:
        cx, cy = o.center
        if o.kind in sc.SHAPES and any(x0 <= cx < x1 and y0 <= cy < y1 for x0, y0, x1, y1 in boxes):
            seen.append((cy, cx, f"{o.color} {o.kind}"))
    return ", ".join(name for _, _, name in sorted(seen)) or "none"


def _questions(scene: sc.Scene, rng: np.random.Generator, *, target: sc.PlantedObject, whole: bool):
    """``(category, text, answer)`` candidates about ``target`` (and count when ``whole`` shows every disc).

    The presence question names ``target``'s colour or, one time in two, the colour the scene lacks.
    """
    present = bool(rng.random() < 0.5)
    rows = [(c, *sc.question(c, scene, target)) for c in ("object shape", "object color")]
    presence = sc.question("object presence", scene, target if present else None, color=sc.absent_color(scene))
    rows.append(("object presence", *presence))
    if whole:
        rows.append(("count", *sc.question("count", scene)))
    return rows


def _focus_box(question: tuple[str, str, str], target: sc.PlantedObject) -> tuple[int, int, int, int] | None:
    """Box of the object ``question`` is about (the attention target of :data:`FOCUS_LAYER`).

    ``None`` for count and for a presence question about the absent colour.
    """
    category, _text, answer = question
    if category in ("object shape", "object color") or (category == "object presence" and answer == "yes"):
        return target.box
    return None


class _ExampleMaker:
    """Draws training examples of every format from a list of scenes."""

    def __init__(
        self, backbone: Backbone, scenes: Sequence[sc.Scene], rng: np.random.Generator, *, others_share: float = 0.8
    ) -> None:
        from lrs_plugin.c2f.driver import _separator_id
        from lrs_plugin.c2f.pyramid import build_pyramid
        from lrs_plugin.imagery.large_image import LargeImage

        self.bb, self.scenes, self.rng = backbone, list(scenes), rng
        self.images = [LargeImage.from_array(s.pixels) for s in self.scenes]
        tile = backbone.tile_size
        self.pyramids = [
            build_pyramid(s.size[1], s.size[0], tile=tile, base_long_side=sc.BASE_LONG_SIDE) for s in self.scenes
        ]
        self.sep_id = _separator_id(backbone, ":")
        self.difficulty = 1.0  # 0: single tiles around the object, 1: the full mix (see _train_loop)
        self.caption_share = CAPTION_SHARE
        self.others_share = others_share  # TrainConfig.others_share
        self._thumbs: dict[int, np.ndarray] = {}

    # -- helpers
    def _thumb(self, i: int) -> np.ndarray:
        from lrs_plugin.c2f.render import render_thumbnail

        if i not in self._thumbs:
            bb = self.bb
            self._thumbs[i] = render_thumbnail(
                self.images[i], self.pyramids[i].thumbnail, tile=bb.tile_size, mean=bb.image_mean, std=bb.image_std
            )
        return self._thumbs[i]

    def _pick(self, options: list[tuple[str, str, str]]) -> tuple[str, str, str]:
        return options[int(self.rng.integers(len(options)))]

    def make(self, fmt: str) -> _Example:
        i = int(self.rng.integers(len(self.scenes)))
        return getattr(self, f"_{fmt}")(i)

    # -- stock LLaVA-NeXT layouts
    def _stock(
        self,
        pil: Any,
        pinpoints: list[list[int]] | None,
        question: tuple[str, str, str],
        fmt: str,
        cells: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> _Example:
        from lrs_plugin.backbone.anyres import pack_anyres

        bb = self.bb
        pixels, grid = bb.image_crops(pil, pinpoints)
        hw = (pil.height, pil.width)

        def layout(feats: torch.Tensor) -> tuple[torch.Tensor, None]:
            return pack_anyres(feats[0], feats[1:], grid, hw, bb.image_newline), None

        cat, text, answer = question
        full, pooled = cells if cells is not None else (None, None)
        return _Example(pixels.numpy(), layout, text, answer, fmt, cat, full, pooled)

    def _stock_whole(self, i: int) -> _Example:
        from PIL import Image

        scene = self.scenes[i]
        target = scene.targets()[int(self.rng.integers(3))]
        q = self._pick(_questions(scene, self.rng, target=target, whole=True))
        return self._stock(Image.fromarray(scene.pixels), None, q, "stock_whole")

    def _stock_crop(self, i: int) -> _Example:
        from PIL import Image

        scene, t = self.scenes[i], self.bb.tile_size
        target = scene.targets()[int(self.rng.integers(3))]
        w, h = scene.size
        top = 2 + int(round(2 * self.difficulty))
        cw, ch = (int(self.rng.integers(1, top + 1)) * t for _ in range(2))
        x1, y1, x2, y2 = target.box
        cw, ch = max(cw, ((x2 - x1) // t + 1) * t), max(ch, ((y2 - y1) // t + 1) * t)  # the whole object fits
        cw, ch = min(cw, w // t * t), min(ch, h // t * t)
        x0 = int(self.rng.integers(max(0, x2 - cw), min(x1, w - cw) + 1))
        y0 = int(self.rng.integers(max(0, y2 - ch), min(y1, h - ch) + 1))
        crop = Image.fromarray(scene.pixels[y0 : y0 + ch, x0 : x0 + cw])
        q = self._pick(_questions(scene, self.rng, target=target, whole=False))
        boxes = [
            (x0 + c * t, y0 + r * t, x0 + (c + 1) * t, y0 + (r + 1) * t) for r in range(ch // t) for c in range(cw // t)
        ]
        if self.rng.random() < self.caption_share:
            q = ("caption", CAPTION_QUESTION, caption_of(scene.objects, boxes))
        cells = _aux_labels(scene.objects, boxes, patches=self.bb.patches_per_side, level_scale=1.0)
        return self._stock(crop, [[ch, cw]], q, "stock_crop", cells)

    # -- C2F layouts
    def _pyramid(self, i: int, level_index: int, tiles: list[tuple[int, int]], keep_box, q, fmt: str, focus_box=None):
        import torch

        from lrs_plugin.c2f.grid import build_level_grid, grid_newline_indices, grid_token_boxes
        from lrs_plugin.c2f.render import render_tiles

        bb, pyr = self.bb, self.pyramids[i]
        level = pyr.levels[level_index]
        pixels = render_tiles(self.images[i], level, tiles, tile=bb.tile_size, mean=bb.image_mean, std=bb.image_std)
        stack = np.concatenate([self._thumb(i)[None], pixels], axis=0)
        (h, w), (rh, rw) = level.image_hw, level.resize_hw
        content_wh = (w, h) if level_index == 0 else (rw, rh)
        rng = self.rng
        caption = fmt == "pyramid_fine" and level_index == len(pyr.levels) - 1 and rng.random() < self.caption_share
        low = 1.0 - 0.85 * self.difficulty
        ratio = 1.0 if fmt != "pyramid_fine" or caption else float(rng.uniform(low, 1.0))
        force = keep_box is not None and rng.random() < 0.9
        sep_ids = torch.tensor([self.sep_id])
        seed = int(rng.integers(2**31))
        newline = bb.image_newline
        per_tile = bb.patches_per_side // 2

        def hits(shape: tuple[int, int], box) -> torch.Tensor:
            cells = grid_token_boxes(level, shape, per_tile=per_tile, has_newline=True)
            x1, y1, x2, y2 = box
            return (cells[:, 0] < x2) & (cells[:, 2] > x1) & (cells[:, 1] < y2) & (cells[:, 3] > y1)

        def layout(feats: torch.Tensor) -> tuple[torch.Tensor, Any]:
            thumb, grid_feats = feats[0], bb.pool2x2(feats[1:])
            embeds, mask, shape = build_level_grid(
                grid_feats, tiles, level.grid_hw, content_wh, newline, floor=sc.C2F_CLEAN["unpad_floor_quirk"]
            )
            keep = mask.clone()
            if ratio < 1.0:
                gen = torch.Generator().manual_seed(seed)
                drop = torch.rand(mask.numel(), generator=gen) > ratio
                keep &= ~drop
                if force:
                    keep |= hits(shape, keep_box) & mask
            keep[grid_newline_indices(shape, True)] = True
            tokens = torch.cat([thumb, _embed(bb, sep_ids), embeds[keep]], dim=0)
            focus = None
            if focus_box is not None:
                target = torch.nonzero(hits(shape, focus_box)[keep]).flatten()
                if target.numel():
                    focus = (thumb.shape[0] + 1, target + thumb.shape[0] + 1)
            return tokens, focus

        t = bb.tile_size
        sx, sy = w / rw, h / rh  # source pixels per level pixel
        boxes = [(c * t * sx, r * t * sy, (c + 1) * t * sx, (r + 1) * t * sy) for r, c in tiles]
        thumb_scale = t / max(self.scenes[i].size)
        cells, pooled = _aux_labels(
            self.scenes[i].objects,
            boxes,
            patches=bb.patches_per_side,
            level_scale=1.0 / sx,
            first=((0.0, 0.0, t / thumb_scale, t / thumb_scale), thumb_scale),
        )
        if caption:
            q = ("caption", CAPTION_QUESTION, caption_of(self.scenes[i].objects, boxes))
            focus_box = None
        cat, text, answer = q
        return _Example(stack, layout, text, answer, fmt, cat, cells, pooled)

    def _pyramid_base(self, i: int) -> _Example:
        from lrs_plugin.c2f.pyramid import tiles as all_tiles

        scene = self.scenes[i]
        target = scene.targets()[int(self.rng.integers(3))]
        q = self._pick(_questions(scene, self.rng, target=target, whole=True))
        focus = _focus_box(q, target)
        return self._pyramid(i, 0, all_tiles(self.pyramids[i].levels[0]), None, q, "pyramid_base", focus)

    def _pyramid_full(self, i: int) -> _Example:
        from lrs_plugin.c2f.pyramid import tiles as all_tiles

        small = [j for j, p in enumerate(self.pyramids) if p.levels[-1].num_tiles <= 200]
        if not small:
            return self._pyramid_fine(i)
        i = small[int(self.rng.integers(len(small)))]
        scene = self.scenes[i]
        target = scene.targets()[int(self.rng.integers(3))]
        q = self._pick(_questions(scene, self.rng, target=target, whole=True))
        level = len(self.pyramids[i].levels) - 1
        focus = _focus_box(q, target)
        return self._pyramid(i, level, all_tiles(self.pyramids[i].levels[-1]), None, q, "pyramid_full", focus)

    def _pyramid_fine(self, i: int) -> _Example:
        scene, pyr, rng = self.scenes[i], self.pyramids[i], self.rng
        target = scene.targets()[int(rng.integers(3))]
        li = len(pyr.levels) - 1 if rng.random() < 0.85 or len(pyr.levels) < 3 else len(pyr.levels) - 2
        level = pyr.levels[li]
        gh, gw = level.grid_hw
        t = level.tile
        sx, sy = level.resize_hw[1] / scene.size[0], level.resize_hw[0] / scene.size[1]
        cx, cy = target.center
        tr, tc = min(int(cy * sy // t), gh - 1), min(int(cx * sx // t), gw - 1)
        top = 1 + int(round(3 * self.difficulty))
        bh, bw = int(rng.integers(1, top + 1)), int(rng.integers(1, top + 1))
        r0 = int(np.clip(tr - int(rng.integers(bh)), 0, max(gh - bh, 0)))
        c0 = int(np.clip(tc - int(rng.integers(bw)), 0, max(gw - bw, 0)))
        chosen = {(r, c) for r in range(r0, min(r0 + bh, gh)) for c in range(c0, min(c0 + bw, gw))}
        chosen.add((tr, tc))
        if rng.random() < self.others_share * self.difficulty:  # the other targets too: the question must pick one
            for other in scene.targets():
                ox, oy = other.center
                chosen.add((min(int(oy * sy // t), gh - 1), min(int(ox * sx // t), gw - 1)))
        for _ in range(int(rng.integers(0, 1 + int(24 * self.difficulty)))):
            chosen.add((int(rng.integers(gh)), int(rng.integers(gw))))
        tiles = sorted(chosen)
        q = self._pick(_questions(scene, rng, target=target, whole=False))
        return self._pyramid(i, li, tiles, target.box, q, "pyramid_fine", _focus_box(q, target))


# --------------------------------------------------------------------------------------------- training
def _embed(bb: Backbone, ids: torch.Tensor) -> torch.Tensor:
    """Differentiable token embeddings ``[L] -> [L, C]`` (:meth:`Backbone.embed_ids` runs without autograd)."""
    return bb.language_model.get_input_embeddings()(ids)


def _sequences(
    bb: Backbone, examples: Sequence[_Example], aux: Any = None
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, Any]], torch.Tensor | None]:
    """Per example ``(inputs_embeds [L, C], labels [L], focus)``, and the auxiliary cell loss.

    ``focus`` is ``None`` or ``(keys, target, query_index)``: the grid's key span, the absolute positions of the
    grid tokens over the question's object and the query (the last prompt token), for :func:`_focus_loss`. One
    vision-tower pass over every example's tiles; the auxiliary loss (cross-entropy of the two heads ``aux`` on the
    labelled patches) is ``None`` without heads or labels.
    """
    import torch

    tiles = torch.from_numpy(np.concatenate([e.tiles for e in examples], axis=0))
    feats = bb.encode_tiles(tiles, grad=True)
    aux_loss = None
    if aux is not None:
        terms = _aux_terms(bb, examples, aux, feats)
        aux_loss = torch.stack(terms).sum() if terms else None
    tok = bb.tokenizer
    out = []
    start = 0
    for e in examples:
        n = e.tiles.shape[0]
        vision, focus = e.layout(feats[start : start + n])
        start += n
        prefix, suffix = bb.split_prompt(e.question)
        answer = torch.tensor(tok.encode(e.answer, add_special_tokens=False) + [tok.eos_token_id], dtype=torch.long)
        seq = torch.cat([_embed(bb, prefix), vision, _embed(bb, suffix), _embed(bb, answer)], dim=0)
        labels = torch.full((seq.shape[0],), -100, dtype=torch.long)
        # position p predicts token p + 1: each answer token is predicted from the position before it.
        query = seq.shape[0] - len(answer) - 1
        labels[query : seq.shape[0] - 1] = answer
        if focus is not None:
            p = len(prefix)
            focus = (slice(p + focus[0], p + vision.shape[0]), focus[1] + p, query)
        out.append((seq, labels, focus, len(prefix) + vision.shape[0], _asked(e.question)))
    return out, aux_loss


FOCUS_LAYER = 3
"""Decoder layer whose text-to-grid attention the training supervises (:func:`_focus_loss`); the testbed's
``focus=llm_attention`` reads it and its RFM distils toward it."""


PROBE_WORDS = (*sc.COLORS, *sc.SHAPES)
"""Classes of the query probe: the colour or shape word a question names (:func:`_asked`)."""


def _asked(question: str) -> int:
    """Index in :data:`PROBE_WORDS` of the attribute ``question`` names; -100 when it names none (count, caption)."""
    words = question.lower().replace("?", " ").split()
    for k, word in enumerate(PROBE_WORDS):
        if word in words:
            return k
    return -100


def _focus_loss(
    bb: Backbone, hidden: torch.Tensor, focus: tuple[slice, torch.Tensor, int], positions: torch.Tensor
) -> torch.Tensor:
    """``-log`` of the head-averaged attention mass the query puts on the object's grid tokens at :data:`FOCUS_LAYER`.

    The attention is rebuilt from the layer's q/k exactly as ``focus=llm_attention`` scores a grid (softmax over
    the grid keys per head, mean over heads), so the training teaches the routing the focus later reads.

    Args:
        bb: The backbone.
        hidden: ``[1, L, C]`` input of :data:`FOCUS_LAYER`.
        focus: ``(keys, target, query_index)`` from :func:`_sequences`.
        positions: ``[L]`` RoPE positions of the rows (see ``TrainConfig.gap_share``).
    """
    import torch

    from lrs_plugin.focus.attention import query_logits

    lm = bb.language_model
    keys, target, query = focus
    logits = query_logits(
        lm.layers[FOCUS_LAYER],
        hidden,
        config=lm.config,
        rotary_emb=lm.rotary_emb,
        keys=keys,
        query_index=query,
        positions=positions,
    )
    mass = torch.softmax(logits, dim=-1).mean(0)[target - keys.start].sum()
    return -torch.log(mass.clamp_min(1e-6))


def _step_losses(
    bb: Backbone,
    seqs: Sequence[tuple[torch.Tensor, torch.Tensor, Any, int, int]],
    *,
    gaps: Sequence[int] | None = None,
    probe: torch.nn.Module | None = None,
    token_budget: int = 3072,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``[B]`` answer loss per example (summed over its tokens) and the mean focus loss.

    The focus loss is ``None`` when no example has a focus target. Length-sorted micro-batches of at most
    ``token_budget`` padded tokens, so one long example does not pad the whole step. ``gaps[i]`` RoPE positions
    are skipped before example ``i``'s question (``TrainConfig.gap_share``; none by default). With ``probe``, the third
    value is the query probe's mean cross-entropy (``TrainConfig.probe_weight``), else ``None``.
    """
    import torch
    import torch.nn.functional as F

    order = sorted(range(len(seqs)), key=lambda i: seqs[i][0].shape[0])
    losses: list[torch.Tensor | None] = [None] * len(seqs)
    focus_terms: list[torch.Tensor] = []
    probe_rows: list[torch.Tensor] = []
    probe_labels: list[int] = []
    group: list[int] = []

    def flush() -> None:
        length = max(seqs[i][0].shape[0] for i in group)
        c = seqs[group[0]][0].shape[1]
        embeds = seqs[group[0]][0].new_zeros(len(group), length, c)
        mask = torch.zeros(len(group), length, dtype=torch.long)
        labels = torch.full((len(group), length), -100, dtype=torch.long)
        positions = torch.arange(length).repeat(len(group), 1)
        for b, i in enumerate(group):
            seq, lab, _, question_at, _ = seqs[i]
            embeds[b, : seq.shape[0]], mask[b, : seq.shape[0]], labels[b, : seq.shape[0]] = seq, 1, lab
            positions[b, question_at:] += 0 if gaps is None else int(gaps[i])
        out = bb.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, output_hidden_states=True
        )
        hidden = out.last_hidden_state
        for b, i in enumerate(group):
            rows = labels[b] != -100
            losses[i] = F.cross_entropy(bb.lm_head(hidden[b][rows]), labels[b][rows], reduction="sum")
            focus = seqs[i][2]
            if focus is not None:
                focus_terms.append(_focus_loss(bb, out.hidden_states[FOCUS_LAYER][b : b + 1], focus, positions[b]))
            if probe is not None and seqs[i][4] >= 0:
                query = int(rows.nonzero()[0])  # the last prompt token predicts the first answer token
                probe_rows.append(out.hidden_states[FOCUS_LAYER][b, query])
                probe_labels.append(seqs[i][4])

    for i in order:
        if group and (len(group) + 1) * seqs[i][0].shape[0] > token_budget:
            flush()
            group = []
        group.append(i)
    flush()
    focus_loss = torch.stack(focus_terms).mean() if focus_terms else None
    probe_loss = None
    if probe_rows:
        probe_loss = F.cross_entropy(probe(torch.stack(probe_rows)), torch.tensor(probe_labels))
    return torch.stack(losses), focus_loss, probe_loss  # type: ignore[arg-type]


def train_testbed(
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Build and train the testbed model; save it (and ``train_log.json``) in ``out_dir``.

    Args:
        out_dir: Checkpoint folder to write (created).
        config: :class:`TrainConfig` (defaults: the documented run).
        log: Progress lines go here (``None``: silent).

    Returns:
        The training record also written to ``out_dir/train_log.json``: ``config``, ``loss`` (mean per logging
        window), ``format_counts``, ``train_s``, ``parameters``.

    """
    import torch

    from lrs_plugin.backbone.adapter import Backbone

    cfg = config or TrainConfig()
    out = Path(out_dir)
    start = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            build_testbed_model(out, seed=cfg.seed)
            bb = Backbone.from_pretrained(str(out), device="cpu", dtype="float32", attn_implementation="sdpa")
            record = _train_loop(bb, cfg, log)
        bb.model.eval()
        bb.model.save_pretrained(out)
    finally:
        torch.set_num_threads(threads_before)
    record["train_s"] = round(time.perf_counter() - start, 1)
    (out / "train_log.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def _by_category(parts: dict[str, float]) -> dict[str, float]:
    """Mean of the ``format/category`` window losses per category (formats pooled, unweighted)."""
    pooled: dict[str, list[float]] = {}
    for key, value in parts.items():
        pooled.setdefault(key.split("/")[-1], []).append(value)
    return {k: sum(v) / len(v) for k, v in sorted(pooled.items())}


def _early_mix(names: Sequence[str], shares: np.ndarray) -> np.ndarray:
    """The mix while the curriculum runs: the object-centred formats only (crops and fine grids)."""
    mix = np.array([s if n in ("stock_crop", "pyramid_fine") else 0.0 for n, s in zip(names, shares, strict=True)])
    return mix / mix.sum() if mix.sum() > 0 else shares


VISION_FORMATS = {"pyramid_fine": 0.6, "stock_crop": 0.4}
"""Formats whose tiles the vision pre-training draws (their patches carry the auxiliary labels)."""


def _aux_terms(bb: Backbone, examples: Sequence[_Example], aux: Any, feats: torch.Tensor) -> list[torch.Tensor]:
    """Cross-entropy of the auxiliary heads on the labelled patches and 2x2-pooled cells of ``feats``."""
    import torch
    import torch.nn.functional as F

    terms = []
    for values, name in ((feats, "cells"), (bb.pool2x2(feats), "pooled_cells")):
        labels = [
            getattr(e, name) if getattr(e, name) is not None else np.full((e.tiles.shape[0], values.shape[1], 2), -100)
            for e in examples
        ]
        target = torch.from_numpy(np.concatenate(labels, axis=0)).reshape(-1, 2)
        flat = values.reshape(-1, values.shape[-1])
        terms += [
            F.cross_entropy(head(flat), target[:, k], ignore_index=-100)
            for k, head in enumerate(aux)
            if bool((target[:, k] != -100).any())
        ]
    return terms


def _vision_pretrain(
    bb: Backbone, maker: _ExampleMaker, aux: Any, cfg: TrainConfig, log: Callable[[str], None] | None
) -> list[dict[str, float]]:
    """Stage 0: the vision tower and projector alone, trained on the auxiliary per-patch colour / shape labels.

    A from-scratch CLIP tower learns colour at once but shapes slowly (a shape spans 2-3 patches, so it needs the
    tower's attention); this stage gives it ``cfg.vision_steps`` cheap steps (no LLM) before the joint training,
    as LLaVA starts from a pretrained CLIP. Returns the loss curve.
    """
    import torch

    params = [p for n, p in bb.model.named_parameters() if "language_model" not in n and "lm_head" not in n]
    params += list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    names = sorted(VISION_FORMATS)
    shares = np.array([VISION_FORMATS[n] for n in names])
    curve, window = [], []
    for step in range(cfg.vision_steps):
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        for group in opt.param_groups:
            group["lr"] = lr
        maker.difficulty = 0.0  # the tiles around the objects: the labelled ones
        fmts = [names[int(k)] for k in maker.rng.choice(len(names), size=cfg.vision_batch_size, p=shares)]
        examples = [maker.make(f) for f in fmts]
        tiles = torch.from_numpy(np.concatenate([e.tiles for e in examples], axis=0))
        terms = _aux_terms(bb, examples, aux, bb.encode_tiles(tiles, grad=True))
        if not terms:
            continue
        loss = torch.stack(terms).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(float(loss.detach()))
        if (step + 1) % (cfg.log_every * 5) == 0 or step + 1 == cfg.vision_steps:
            curve.append({"step": step + 1, "aux_loss": round(sum(window) / len(window), 5)})
            window = []
            if log is not None:
                log(f"vision step {step + 1}/{cfg.vision_steps}  aux loss {curve[-1]['aux_loss']:.4f}")
    return curve


def _train_loop(bb: Backbone, cfg: TrainConfig, log: Callable[[str], None] | None) -> dict[str, Any]:
    import torch

    rng = np.random.default_rng([cfg.seed, 11])
    scenes = [sc.make_scene("train", cfg.seed, i) for i in range(cfg.train_scenes)]
    maker = _ExampleMaker(bb, scenes, rng, others_share=cfg.others_share)
    model = bb.model
    model.train()
    width = bb.hidden_size
    aux = torch.nn.ModuleList([torch.nn.Linear(width, len(c)) for c in (AUX_COLORS, AUX_SHAPES)])
    vision_curve = _vision_pretrain(bb, maker, aux, cfg, log) if cfg.vision_steps else []
    probe = torch.nn.Linear(width, len(PROBE_WORDS)) if cfg.probe_weight else None
    params = [p for p in model.parameters() if p.requires_grad] + list(aux.parameters())
    params += list(probe.parameters()) if probe is not None else []
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    names = sorted(cfg.format_mix)
    shares = np.array([cfg.format_mix[n] for n in names], dtype=float)
    shares /= shares.sum()
    window: list[float] = []
    by_cat: dict[str, list[float]] = {}
    curve: list[dict[str, float]] = []
    counts = dict.fromkeys(names, 0)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        lr *= 0.5 * (1 + math.cos(math.pi * step / cfg.steps)) if step >= cfg.warmup else 1.0
        for group in opt.param_groups:
            group["lr"] = lr
        maker.difficulty = min(1.0, step / max(1.0, cfg.curriculum * cfg.steps)) if cfg.curriculum else 1.0
        mix = shares if maker.difficulty >= 1.0 else _early_mix(names, shares)
        fmts = [names[int(k)] for k in rng.choice(len(names), size=cfg.batch_size, p=mix)]
        examples = [maker.make(f) for f in fmts]
        for e in examples:
            counts[e.fmt] += 1
        seqs, aux_loss = _sequences(bb, examples, aux if cfg.aux_weight else None)
        gaps = [int(rng.integers(1, cfg.gap_max + 1)) if rng.random() < cfg.gap_share else 0 for _ in seqs]
        per_example, focus_loss, probe_loss = _step_losses(bb, seqs, gaps=gaps, probe=probe)
        loss = per_example.mean()
        if aux_loss is not None:
            loss = loss + cfg.aux_weight * aux_loss
            by_cat.setdefault("aux", []).append(float(aux_loss.detach()))
        if probe_loss is not None:
            loss = loss + cfg.probe_weight * probe_loss
            by_cat.setdefault("probe", []).append(float(probe_loss.detach()))
        if focus_loss is not None and cfg.focus_weight:
            loss = loss + cfg.focus_weight * focus_loss
            by_cat.setdefault("focus", []).append(float(focus_loss.detach()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for e, value in zip(examples, per_example.tolist(), strict=True):
            by_cat.setdefault(f"{e.fmt}/{e.category}", []).append(value)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mean = sum(window) / len(window)
            parts = {k: round(sum(v) / len(v), 4) for k, v in sorted(by_cat.items())}
            curve.append({"step": step + 1, "loss": round(mean, 5), "lr": lr, "by_format_category": parts})
            window, by_cat = [], {}
            if log is not None:
                cats = _by_category(parts)
                detail = "  ".join(f"{k} {v:.3f}" for k, v in cats.items())
                took = time.perf_counter() - t0
                log(f"step {step + 1}/{cfg.steps}  loss {mean:.4f}  lr {lr:.2e}  {took:.0f}s  {detail}")
    return {
        "config": asdict(cfg),
        "model": MODEL_SPEC,
        "loss": curve,
        "vision_loss": vision_curve,
        "format_counts": counts,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


ANSWERS: dict[str, tuple[str, ...]] = {
    "object shape": sc.SHAPES,
    "object color": tuple(sc.COLORS),
    "object presence": ("yes", "no"),
    "count": tuple(str(n) for n in range(sc.COUNT_RANGE[0], sc.COUNT_RANGE[1] + 1)),
}
"""Every possible answer of each category (the candidates :func:`heldout_accuracy` ranks)."""


def heldout_accuracy(
    backbone: Backbone, scenes: Sequence[sc.Scene], fmt: str, *, seed: int = 0, per_scene: int = 2
) -> dict[str, float]:
    """Accuracy (percent) per category of the answer ranked first among :data:`ANSWERS` (summed log-probability).

    A quick held-out check while training: examples are drawn as for training (format ``fmt``) from ``scenes``
    (which the caller keeps disjoint from the training scenes); the full benchmark goes through ``lmms-eval``.

    Raises:
        ConfigError: an unknown ``fmt``.
    """
    import torch

    if fmt not in FORMAT_MIX:
        raise ConfigError(f"fmt={fmt!r} is not a training format; valid: {', '.join(FORMAT_MIX)}")
    maker = _ExampleMaker(backbone, scenes, np.random.default_rng([seed, 13]))
    maker.caption_share = 0.0  # benchmark questions only
    tok = backbone.tokenizer
    hits: dict[str, list[int]] = {}
    was_training = backbone.model.training
    backbone.model.eval()
    with torch.no_grad():
        for _ in range(per_scene * len(scenes)):
            e = maker.make(fmt)
            ((seq, *_rest),), _ = _sequences(backbone, [e])
            head = seq[: seq.shape[0] - len(tok.encode(e.answer, add_special_tokens=False)) - 1]
            scores = []
            for cand in ANSWERS[e.category]:
                ids = torch.tensor(tok.encode(cand, add_special_tokens=False) + [tok.eos_token_id])
                full = torch.cat([head, _embed(backbone, ids)], dim=0)[None]
                hidden = backbone.language_model(inputs_embeds=full).last_hidden_state[0]
                logp = torch.log_softmax(backbone.lm_head(hidden[-len(ids) - 1 : -1]), dim=-1)
                scores.append(float(logp.gather(1, ids[:, None]).sum()))
            best = ANSWERS[e.category][int(np.argmax(scores))]
            hits.setdefault(e.category, []).append(int(best == e.answer))
    backbone.model.train(was_training)
    return {k: round(100.0 * sum(v) / len(v), 1) for k, v in sorted(hits.items())}
