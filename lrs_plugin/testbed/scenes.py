r"""``lrs_synth``: a deterministic planted-target benchmark in the LRS-VQA on-disk layout and question schema.

Scaled to the testbed model as LRS-VQA is to LLaVA-NeXT: the testbed's vision tiles are :data:`TILE` = 32 px, so the
pyramid's base level has a long side of :data:`BASE_LONG_SIDE` = 96 px (3 tiles, as 1,008 px is for 336 px tiles).
Most scenes have a long side of 4-8x that (384-768 px, as 4-7k px images are to 1,008 px); one scene in
:data:`HUGE_EVERY` has 16-20x (1,536-1,920 px, as the 27k px images are).

A scene (all sizes in source pixels):

* **background**: an earthy terrain made of value noise at four scales (about a quarter of the scene, 64 px, 16 px,
  4 px), fields (large tinted rectangles) and roads (grey polylines 3-6 px wide): low-saturation colours only;
* **targets**: three objects of distinct named colours (:data:`COLORS`) and distinct shapes (:data:`SHAPES`),
  12-20 px wide: at the base level (4-8x smaller) a target is a coloured dot of 2-5 px whose shape cannot be read;
* **count items**: 1-5 white discs of 10-16 px;
* **distractors**: 8-16 neutral-coloured (grey / brown / dark) bars and blocks of 6-40 px.

Four questions per scene, each with its target box ``hbox = [x1, y1, x2, y2]`` (for ``count`` the box around all
the discs; none for an absent colour):

======================  ==============================================  ===================================
category                question                                        answer (chance)
======================  ==============================================  ===================================
``object shape``        What is the shape of the {colour} object?       square/triangle/cross/diamond (25 %)
``object color``        What is the color of the {shape}?               one of the 3 scene colours (25 %)
``count``               How many white circles are there?               1-5 (20 %)
``object presence``     Is there a {colour} object?                     yes / no (50 %)
======================  ==============================================  ===================================

``object shape`` and ``object color`` need the target near full resolution (:data:`FINE_CATEGORIES`); a coloured dot
is visible at the base level, so ``object presence`` does not (half its questions name a colour the scene lacks:
those have no object and ``hbox`` is ``null``, like LRS-VQA's count rows). The text ends with the real file's
instruction suffixes (``count`` has the other spelling). ``question_id`` is ``SYNTH_<n>``; images are
``LRS_VQA/image/synth_<split>_<n>.png`` (two thirds) or ``.tif`` (RGB TIFF). ``LRS_VQA/objects.jsonl`` lists every
scene's planted objects (for training and pictures; the evaluated model never sees it).

Scenes of split ``train`` and ``eval`` are drawn from disjoint random streams (``numpy`` seed sequences keyed by
the split), so no evaluation scene is ever trained on, whatever the seeds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrs_plugin.errors import ConfigError

__all__ = [
    "BASE_LONG_SIDE",
    "C2F_CLEAN",
    "CATEGORIES",
    "CHANCE",
    "COLORS",
    "FINE_CATEGORIES",
    "HUGE_EVERY",
    "absent_color",
    "SHAPES",
    "SPLITS",
    "SUBSET",
    "TILE",
    "PlantedObject",
    "Scene",
    "make_scene",
    "write_lrs_synth",
]

TILE = 32
"""Vision tile side (px) of the testbed model; the pyramid base level is 3 tiles long."""

BASE_LONG_SIDE = 3 * TILE
"""Long side of the pyramid's base level for :data:`TILE` tiles."""

HUGE_EVERY = 25
"""One scene in this many is 16-20x the base level (the rest 4-8x)."""

SUBSET = "SYNTH"
"""``question_id`` prefix (the LRS-VQA "subset") of every question."""

SPLITS = ("train", "eval")
"""Scene streams: disjoint by construction."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "blue": (35, 70, 235),
    "yellow": (245, 225, 35),
    "purple": (165, 45, 210),
}
"""Named target colours (saturated; the background never is)."""

SHAPES = ("square", "triangle", "cross", "diamond")
"""Target shapes."""

COUNT_RANGE = (1, 5)
"""Number of white discs of a scene, inclusive."""

CATEGORIES = ("count", "object color", "object presence", "object shape")
"""Question categories (sorted, as the LRS-VQA tables sort them)."""

C2F_CLEAN: dict[str, Any] = {"newline_vote_quirk": False, "unpad_floor_quirk": False, "masked_key_mode": "exclude"}
"""The clean alternatives of the released code's three C2F quirks (docs/c2f.md), used by the testbed's C2F rows and
by the training's pyramid formats. Two cost far more at this scale than on LRS-VQA: one pooled token is 16 px of the
96-px base level (1/6 of it, against 1/36 of 1,008 px), so the truncating unpad drops up to a sixth of a scene's
short side at the base level, and the released tile vote (unpadded token grid over the padded tile grid) drifts by
a tile per zoom. Placeholder keys are excluded from every focus softmax, as the RFM is distilled (and the focus pass
then runs the kept tokens only)."""

FINE_CATEGORIES = ("object color", "object shape")
"""Categories whose answer needs the target near full resolution."""

CHANCE: dict[str, float] = {
    "count": 100.0 / (COUNT_RANGE[1] - COUNT_RANGE[0] + 1),
    "object color": 100.0 / len(COLORS),
    "object presence": 50.0,
    "object shape": 100.0 / len(SHAPES),
}
"""Accuracy (percent) of a uniform guess over each category's answers."""

NONCOUNT_SUFFIX = "\n Answer the question using a single word or phrase."
COUNT_SUFFIX = " \nAnswer the question using a single word or phrase."

_SPLIT_KEY = {"train": 1, "eval": 2}
_TARGET_SIZE = (12, 20)
_DISC_SIZE = (10, 16)
_NEUTRALS = ((120, 120, 118), (92, 84, 74), (60, 60, 64), (150, 140, 120), (105, 96, 80))


@dataclass(frozen=True)
class PlantedObject:
    """One planted object: ``kind`` (a shape, ``"disc"`` or ``"distractor"``), colour name and box (x1, y1, x2, y2)."""

    kind: str
    color: str
    box: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[float, float]:
        """``(cx, cy)`` of the box."""
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass(frozen=True)
class Scene:
    """A generated scene: ``pixels`` ``[H, W, 3]`` uint8 and its planted objects."""

    pixels: np.ndarray
    objects: tuple[PlantedObject, ...]

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)``."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def targets(self) -> list[PlantedObject]:
        """The three named-colour, named-shape objects, in placement order."""
        return [o for o in self.objects if o.kind in SHAPES]

    def discs(self) -> list[PlantedObject]:
        """The white discs of the count question."""
        return [o for o in self.objects if o.kind == "disc"]


def _rng(split: str, seed: int, index: int) -> np.random.Generator:
    if split not in _SPLIT_KEY:
        raise ConfigError(f"split={split!r} is not valid; valid: {', '.join(SPLITS)}")
    return np.random.default_rng([_SPLIT_KEY[split], int(seed), int(index)])


def scene_size(rng: np.random.Generator, index: int) -> tuple[int, int]:
    """``(W, H)`` of scene ``index``: long side 4-8x the base level, or 16-20x for one scene in :data:`HUGE_EVERY`."""
    huge = index % HUGE_EVERY == HUGE_EVERY - 1
    lo, hi = (16, 20) if huge else (4, 8)
    long_side = int(rng.integers(lo * BASE_LONG_SIDE, hi * BASE_LONG_SIDE + 1))
    short_side = int(round(long_side * rng.uniform(0.6, 1.0)))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise in [0, 1]: a random grid of ``cell`` px cells, bilinearly upsampled to ``[h, w]``."""
    from PIL import Image

    gh, gw = max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1)
    grid = rng.random((gh, gw), dtype=np.float32)
    up = Image.fromarray(grid, mode="F").resize((int(gw * cell), int(gh * cell)), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)[:h, :w]


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    palette = np.array([(96, 112, 70), (138, 124, 92), (110, 100, 84), (84, 98, 88)], dtype=np.float32)
    coarse = _noise(rng, h, w, max(w, h) / 4)
    mid = _noise(rng, h, w, 64)
    mix = np.clip(0.6 * coarse + 0.4 * mid, 0, 1) * (len(palette) - 1)
    low = np.floor(mix).astype(np.int64).clip(0, len(palette) - 2)
    frac = (mix - low)[..., None]
    img = palette[low] * (1 - frac) + palette[low + 1] * frac
    img += (_noise(rng, h, w, 16)[..., None] - 0.5) * 18 + (_noise(rng, h, w, 4)[..., None] - 0.5) * 14
    for _ in range(int(rng.integers(2, 6))):  # fields: large tinted rectangles
        fw, fh = int(rng.integers(w // 10, w // 3)), int(rng.integers(h // 10, h // 3))
        x, y = int(rng.integers(0, w - fw)), int(rng.integers(0, h - fh))
        img[y : y + fh, x : x + fw] += rng.uniform(-14, 14, size=3).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):  # roads
        points = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(int(rng.integers(2, 5)))]
        draw.line(points, fill=(128, 128, 124), width=int(rng.integers(3, 7)))
    return np.asarray(canvas).copy()


def _shape_polygon(kind: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]] | None:
    x1, y1, x2, y2 = box
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    if kind == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if kind == "diamond":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    if kind == "cross":
        t = r / 3
        return [
            (cx - t, y1), (cx + t, y1), (cx + t, cy - t), (x2, cy - t), (x2, cy + t), (cx + t, cy + t),
            (cx + t, y2), (cx - t, y2), (cx - t, cy + t), (x1, cy + t), (x1, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    return None


def _draw(canvas: Any, obj: PlantedObject, fill: tuple[int, int, int]) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    x1, y1, x2, y2 = obj.box
    shape = (x1, y1, x2 - 1, y2 - 1)
    if obj.kind in ("square", "distractor"):
        draw.rectangle(shape, fill=fill)
    elif obj.kind == "disc":
        draw.ellipse(shape, fill=fill)
    else:
        polygon = _shape_polygon(obj.kind, (x1, y1, x2 - 1, y2 - 1))
        draw.polygon(polygon, fill=fill)


def _place(rng: np.random.Generator, w: int, h: int, bw: int, bh: int, taken: list, margin: int):
    """A free box of ``bw x bh`` away from the image border and from ``taken`` boxes; ``None`` after 200 tries."""
    for _ in range(200):
        x = int(rng.integers(margin, w - bw - margin))
        y = int(rng.integers(margin, h - bh - margin))
        box = (x, y, x + bw, y + bh)
        if all(x >= b[2] + margin or box[2] + margin <= b[0] or y >= b[3] + margin or box[3] + margin <= b[1]
               for b in taken):  # fmt: skip
            return box
    return None


def make_scene(split: str, seed: int, index: int) -> Scene:
    """Generate scene ``index`` of ``split`` (deterministic for ``(split, seed, index)``)."""
    from PIL import Image

    rng = _rng(split, seed, index)
    w, h = scene_size(rng, index)
    canvas = Image.fromarray(_background(rng, w, h))
    taken: list[tuple[int, int, int, int]] = []
    objects: list[PlantedObject] = []
    colors = [str(c) for c in rng.permutation(list(COLORS))[:3]]
    shapes = [str(s) for s in rng.permutation(list(SHAPES))[:3]]
    for color, shape in zip(colors, shapes, strict=True):
        side = int(rng.integers(_TARGET_SIZE[0], _TARGET_SIZE[1] + 1))
        box = None
        while box is None:
            box = _place(rng, w, h, side, side, taken, margin=8)
        taken.append(box)
        objects.append(PlantedObject(shape, color, box))
    for _ in range(int(rng.integers(COUNT_RANGE[0], COUNT_RANGE[1] + 1))):
        side = int(rng.integers(_DISC_SIZE[0], _DISC_SIZE[1] + 1))
        box = _place(rng, w, h, side, side, taken, margin=8)
        if box is None:
            raise RuntimeError(f"scene {split}/{seed}/{index}: no room for a disc in {w}x{h}")  # not reachable
        taken.append(box)
        objects.append(PlantedObject("disc", "white", box))
    for _ in range(int(rng.integers(8, 17))):
        bw, bh = int(rng.integers(6, 41)), int(rng.integers(6, 41))
        box = _place(rng, w, h, bw, bh, taken, margin=4)
        if box is not None:
            taken.append(box)
            objects.append(PlantedObject("distractor", "neutral", box))
    for obj in objects:
        if obj.kind == "distractor":
            fill = _NEUTRALS[int(rng.integers(len(_NEUTRALS)))]
        elif obj.kind == "disc":
            fill = (245, 245, 245)
        else:
            fill = COLORS[obj.color]
        _draw(canvas, obj, fill)
    return Scene(np.asarray(canvas).copy(), tuple(objects))


def question(
    category: str, scene: Scene, obj: PlantedObject | None = None, *, color: str | None = None
) -> tuple[str, str]:
    """``(text, answer)`` of a ``category`` question about ``obj`` (a target; ignored for ``count``).

    The one wording of every question, shared by the benchmark files and the model's training examples.
    ``object presence`` asks about ``obj``'s colour (answer ``yes``) or, without ``obj``, about ``color``.

    Raises:
        ConfigError: an unknown category, or no target (or colour) for a per-object category.
    """
    if category == "count":
        return f"How many white circles are there?{COUNT_SUFFIX}", str(len(scene.discs()))
    if category == "object presence" and (obj is not None or color in COLORS):
        named = obj.color if obj is not None else str(color)
        present = any(t.color == named for t in scene.targets())
        return f"Is there a {named} object?{NONCOUNT_SUFFIX}", "yes" if present else "no"
    if category not in CATEGORIES or obj is None:
        raise ConfigError(f"category={category!r} with object {obj!r}: valid categories {', '.join(CATEGORIES)}")
    if category == "object shape":
        return f"What is the shape of the {obj.color} object?{NONCOUNT_SUFFIX}", obj.kind
    return f"What is the color of the {obj.kind}?{NONCOUNT_SUFFIX}", obj.color


def absent_color(scene: Scene) -> str:
    """The named colour no target of ``scene`` has (three of the four are used)."""
    used = {t.color for t in scene.targets()}
    return next(c for c in COLORS if c not in used)


def scene_questions(scene: Scene, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The four questions of a scene: ``category``, ``text``, ``ground_truth``, ``hbox``.

    Shape and colour ask about two different targets; presence names the third target's colour or, one time in two,
    the colour the scene lacks (no box).
    """
    targets = scene.targets()
    order = [int(i) for i in rng.permutation(len(targets))]
    shape_t, color_t, other = (targets[k] for k in order)
    discs = scene.discs()
    union = [min(d.box[0] for d in discs), min(d.box[1] for d in discs)]
    union += [max(d.box[2] for d in discs), max(d.box[3] for d in discs)]
    present = bool(rng.random() < 0.5)
    rows = []
    for category, obj, box in (
        ("object shape", shape_t, list(shape_t.box)),
        ("object color", color_t, list(color_t.box)),
        ("count", None, union),
        ("object presence", other if present else None, list(other.box) if present else None),
    ):
        text, answer = question(category, scene, obj, color=None if obj is not None else absent_color(scene))
        rows.append({"category": category, "text": text, "ground_truth": answer, "hbox": box})
    return rows


def _write_image(path: Path, pixels: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".partial")
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(tmp, pixels, photometric="rgb")
    else:
        from PIL import Image

        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def write_lrs_synth(
    out: str | Path, *, split: str = "eval", seed: int = 0, num_scenes: int = 150, start: int = 0
) -> Path:
    """Write scenes ``start .. start + num_scenes - 1`` of ``split`` in the LRS-VQA layout under ``out``.

    Args:
        out: Dataset root (``out/LRS_VQA/LRS_VQA_merged.jsonl``, ``out/LRS_VQA/image/``, ``out/LRS_VQA/objects.jsonl``).
        split: ``"train"`` or ``"eval"`` (disjoint scene streams).
        seed: Seed of the stream.
        num_scenes: Scenes to write (4 questions each); >= 1.
        start: Index of the first scene.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: Bad ``split``, ``num_scenes`` or ``start``.

    """
    for name, value, low in (("num_scenes", num_scenes, 1), ("start", start, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} must be an int >= {low}")
    _rng(split, seed, 0)  # validates split
    root = Path(out)
    image_dir = root / "LRS_VQA" / "image"
    image_dir.mkdir(parents=True, exist_ok=True)
    questions, objects = [], []
    n = 0
    for index in range(start, start + num_scenes):
        scene = make_scene(split, seed, index)
        suffix = ".tif" if index % 3 == 2 else ".png"
        name = f"LRS_VQA/image/synth_{split}_{index:05d}{suffix}"
        _write_image(root / name, scene.pixels)
        w, h = scene.size
        q_rng = np.random.default_rng([_SPLIT_KEY[split], int(seed), int(index), 7])
        for q in scene_questions(scene, q_rng):
            questions.append({"question_id": f"{SUBSET}_{start * 4 + n}", "image": name, **q, "image_size": [w, h]})
            n += 1
        objects.append({"image": name, "objects": [[o.kind, o.color, list(o.box)] for o in scene.objects]})
    from lrs_plugin.data.lrs_vqa import QUESTION_FILE

    _write_jsonl(root / QUESTION_FILE, questions)
    _write_jsonl(root / "LRS_VQA" / "objects.jsonl", objects)
    return root


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)
