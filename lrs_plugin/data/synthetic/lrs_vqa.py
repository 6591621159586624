"""Format-true synthetic LRS-VQA: the real layout, schema and quirks at kilobyte size, from a fixed seed.

:func:`write_lrs_vqa` writes ``<out>/LRS_VQA/LRS_VQA_merged.jsonl`` and ``<out>/LRS_VQA/image/*`` exactly as the
release lays them out (FAIR ``<n>.tif`` RGB TIFF, GLH-Bridge ``test-<n>.png``, STAR ``<nnnn>.png``), with every
subset's real categories, both question-suffix spellings, ``count`` rows without boxes, FAIR boxes that overflow the
image or are negative, ``gray``/``grey`` and digit answers, and (optionally) one 1-bit STAR PNG whose header exceeds
twice Pillow's decompression-bomb limit. :func:`write_lrs_vqa_archive` packs that tree as 7-Zip-style volumes
``LRS_VQA.7z.001 ..``.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lrs_plugin.data.lrs_vqa import QUESTION_FILE, SUBSETS
from lrs_plugin.errors import ConfigError

__all__ = ["BOMB_SIDE", "DEFAULT_QUESTIONS", "write_lrs_vqa", "write_lrs_vqa_archive"]

DEFAULT_QUESTIONS: dict[str, int] = {"FAIR": 30, "GLH-Bridge": 20, "STAR": 35}
"""Questions per subset when ``questions_per_subset`` is not given (5 per category)."""

BOMB_SIDE = 13_400
"""Side of the bomb PNG: 13,400**2 = 179.56 Mpx > 2 x Pillow's default 89,478,485 px, so ``Image.open`` raises."""

QUESTIONS_PER_IMAGE = 5
"""Roughly how many questions share one image (the real file averages 6)."""

FIXED_MTIME = 1_735_689_600
"""Modification time (2025-01-01 UTC) of every written file, so archives of the tree are byte-identical."""

NONCOUNT_SUFFIX = "\n Answer the question using a single word or phrase."
"""Instruction suffix of every non-``count`` question in the real file (newline, then a space)."""

COUNT_SUFFIX = " \nAnswer the question using a single word or phrase."
"""Instruction suffix of ``count`` questions in the real file (a space, then the newline)."""

_OBJECTS = {
    "FAIR": ("airplane", "ship", "vehicle", "bridge", "intersection"),
    "GLH-Bridge": ("bridge",),
    "STAR": ("storage tank", "building", "ship", "airplane", "crane"),
}
_POSITIONS = ("left-most", "right-most", "top-most", "bottom-most", "largest")
_COUNT_MAX = {"FAIR": 12, "GLH-Bridge": 20, "STAR": 15}
_IMAGE_SIZES = {  # [W, H]; GLH-Bridge images are all square, the others are not always
    "FAIR": ((240, 200), (200, 240), (256, 256), (224, 192)),
    "GLH-Bridge": ((256, 256), (192, 192), (224, 224)),
    "STAR": ((288, 208), (208, 256), (240, 240)),
}
_YES_NO = ("yes", "no")
_TEMPLATES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {  # category -> ((question, its answers), ...)
    "object category": (
        ("What is the object to the left of the {pos} {obj}?", ("airplane", "ship", "storage tank", "vehicle")),
        ("What type of object is the {pos} {obj}?", ("airplane", "ship", "storage tank", "parking lot")),
    ),
    "object shape": (("What shape is the {pos} {obj}?", ("rectangular", "rectangle", "circular", "square")),),
    "object status": (
        ("What is the status of the {pos} {obj}?", ("parked", "moving", "docked", "under construction")),
        ("Is the {pos} {obj} moving?", _YES_NO),
    ),
    "reasoning": (
        ("Is the {pos} {obj} located at a gate?", _YES_NO),
        ("What is the structure closest to the {pos} {obj}?", ("road", "parking lot", "bridge")),
    ),
    "rural or urban": (
        ("Is the area surrounding the {pos} {obj} urban?", _YES_NO),
        ("Is the {pos} {obj} in a rural or urban area?", ("rural", "urban")),
    ),
    "object color": (("What color is the {pos} {obj}?", ("white", "red", "blue", "gray", "grey")),),
    "object background": (("What is the background of the {pos} {obj}?", ("water", "river", "farmland", "road")),),
}
_FIRST_ANSWERS = {"object color": ("gray", "grey")}  # guaranteed in every subset that has the category


def write_lrs_vqa(
    out_parent: str | Path,
    *,
    seed: int = 0,
    questions_per_subset: Mapping[str, int] | None = None,
    bomb_image: bool = True,
    bomb_side: int = BOMB_SIDE,
) -> Path:
    """Write a synthetic LRS-VQA tree (``<out_parent>/LRS_VQA/``, replaced if present).

    Args:
        out_parent: Folder that receives ``LRS_VQA/`` (created if needed).
        seed: Seed of everything random; the same seed gives byte-identical files.
        questions_per_subset: ``{"FAIR": n, "GLH-Bridge": n, "STAR": n}`` (missing subsets take
            :data:`DEFAULT_QUESTIONS`); each ``n`` must be at least the subset's number of categories.
        bomb_image: Add a 1-bit STAR PNG of ``bomb_side`` px square (a few KB on disk).
        bomb_side: Side of that PNG, at least :data:`BOMB_SIDE` (e.g. 27,328, the largest LRS-VQA image).

    Returns:
        ``out_parent`` (the dataset root: the folder that contains ``LRS_VQA/``).

    Raises:
        ConfigError: Unknown subset name or too few questions for a subset's categories.
    """
    if int(bomb_side) < BOMB_SIDE:
        raise ConfigError(f"bomb_side={bomb_side!r} must be >= {BOMB_SIDE} (the size that exceeds Pillow's limit)")
    counts = dict(DEFAULT_QUESTIONS)
    for subset, n in (questions_per_subset or {}).items():
        if subset not in SUBSETS:
            raise ConfigError(f"unknown LRS-VQA subset {subset!r}; valid: {', '.join(SUBSETS)}")
        if n < len(SUBSETS[subset]):
            raise ConfigError(f"{subset} needs at least {len(SUBSETS[subset])} questions (one per category), got {n}")
        counts[subset] = int(n)
    out_parent = Path(out_parent)
    folder = out_parent / "LRS_VQA"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "image").mkdir(parents=True)
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    images: dict[str, tuple[int, int]] = {}
    for subset in SUBSETS:
        subset_images = _plan_images(rng, subset, counts[subset], bomb_image and subset == "STAR", int(bomb_side))
        images.update(subset_images)
        rows.extend(_plan_rows(rng, subset, counts[subset], list(subset_images.items())))
    boxes: dict[str, list[list[int]]] = {name: [] for name in images}
    for row in rows:
        if "hbox" in row:
            boxes[row["image"]].append(row["hbox"])
    for index, (name, size) in enumerate(sorted(images.items())):
        path = out_parent / name
        if size[0] >= BOMB_SIDE:
            _write_bilevel_png(path, size, boxes[name])
        else:
            _write_rgb(path, _render(np.random.default_rng([seed, index]), size, boxes[name]))
    question_file = out_parent / QUESTION_FILE
    question_file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    return out_parent


def _plan_images(
    rng: random.Random, subset: str, n_questions: int, bomb: bool, bomb_side: int = BOMB_SIDE
) -> dict[str, tuple[int, int]]:
    count = max(2, math.ceil(n_questions / QUESTIONS_PER_IMAGE))
    numbers = rng.sample(range(1, 10_000), count + 1)
    names = {
        "FAIR": [f"{n}.tif" for n in numbers],
        "GLH-Bridge": [f"test-{n}.png" for n in numbers],
        "STAR": [f"{n:04d}.png" for n in numbers],
    }[subset]
    planned = {f"LRS_VQA/image/{name}": rng.choice(_IMAGE_SIZES[subset]) for name in names[:count]}
    if bomb:
        planned[f"LRS_VQA/image/{names[count]}"] = (bomb_side, bomb_side)
    return planned


def _plan_rows(
    rng: random.Random, subset: str, n: int, images: list[tuple[str, tuple[int, int]]]
) -> list[dict[str, Any]]:
    categories = SUBSETS[subset]
    order = [categories[k % len(categories)] for k in range(n)]
    rng.shuffle(order)
    seen: dict[str, int] = {}
    rows = []
    for k, category in enumerate(order):
        image, (width, height) = images[k % len(images)]
        index = seen[category] = seen.get(category, -1) + 1
        obj = rng.choice(_OBJECTS[subset])
        row: dict[str, Any] = {"question_id": f"{subset}_{k + 1}", "image": image, "category": category}
        if category == "count":
            row["text"] = f"How many {obj}s are there in the image?{COUNT_SUFFIX}"
            row["ground_truth"] = str(rng.randint(1, _COUNT_MAX[subset]))
            row["image_size"] = [width, height]
        else:
            template, answers = rng.choice(_TEMPLATES[category])
            question = template.format(pos=rng.choice(_POSITIONS), obj=obj)
            first = _FIRST_ANSWERS.get(category, ())
            answer = first[index] if index < len(first) else rng.choice(answers)
            hbox = _box(rng, width, height)
            row.update(text=question + NONCOUNT_SUFFIX, ground_truth=answer, hbox=hbox, rbox=_rbox(hbox))
            row.update(abs_size=_abs_size(hbox), image_size=[width, height], size_bin=_size_bin(hbox))
        rows.append(row)
    if subset == "FAIR":
        _add_out_of_image_boxes(rows)
    return rows


def _box(rng: random.Random, width: int, height: int) -> list[int]:
    side = min(width, height)
    w, h = rng.randint(max(4, side // 40), side // 3), rng.randint(max(4, side // 40), side // 3)
    x1, y1 = rng.randint(0, width - w - 1), rng.randint(0, height - h - 1)
    return [x1, y1, x1 + w, y1 + h]


def _rbox(hbox: list[int]) -> list[float]:
    """A rotated quadrilateral touching every side of ``hbox`` (its rounded min/max equal ``hbox``, as in the data)."""
    x1, y1, x2, y2 = hbox
    dx, dy = (x2 - x1) // 4, (y2 - y1) // 4
    return [float(v) for v in (x1, y1 + dy, x1 + dx, y2, x2, y2 - dy, x2 - dx, y1)]


def _size_bin(hbox: list[int]) -> str:
    side = math.sqrt((hbox[2] - hbox[0]) * (hbox[3] - hbox[1]))
    for limit in (32, 64, 128, 256, 512, 1024):
        if side <= limit:
            return f"{limit}x{limit}"
    return ">1024x1024"


def _abs_size(hbox: list[int]) -> str:
    side = math.sqrt((hbox[2] - hbox[0]) * (hbox[3] - hbox[1]))
    return "small" if side < 12 else "medium" if side < 32 else "large" if side < 64 else "giant"


def _add_out_of_image_boxes(rows: list[dict[str, Any]]) -> None:
    """Make the first boxed FAIR row overflow the image and the second start at negative coordinates."""
    boxed = [r for r in rows if "hbox" in r][:2]
    if len(boxed) < 2:
        return
    over, negative = boxed
    width, height = over["image_size"]
    over["hbox"] = [width - 30, height - 20, width + 17, height + 9]
    negative["hbox"] = [-3, -1, 25, 31]
    for row in boxed:
        row["rbox"] = _rbox(row["hbox"])


def _render(rng: np.random.Generator, size: tuple[int, int], boxes: list[list[int]]) -> np.ndarray:
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 160, size=3)
    pixels = (base + (xx[..., None] * 60 // width) + (yy[..., None] * 40 // height)).astype(np.int16)
    pixels += rng.integers(0, 12, size=(height, width, 3), dtype=np.int16)
    for x1, y1, x2, y2 in boxes:
        pixels[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = rng.integers(0, 256, size=3)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _write_rgb(path: Path, pixels: np.ndarray) -> None:
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, pixels, photometric="rgb")
    else:
        from PIL import Image

        Image.fromarray(pixels, mode="RGB").save(path, format="PNG", compress_level=6)


def _write_bilevel_png(path: Path, size: tuple[int, int], boxes: list[list[int]]) -> None:
    """Write a 1-bit grayscale PNG chunk by chunk (Pillow would allocate one byte per pixel: 180 MB)."""
    width, height = size
    packer = zlib.compressobj(9)
    body = bytearray()
    cache: dict[tuple[int, ...], bytes] = {}
    for y in range(height):
        key = tuple(i for i, b in enumerate(boxes) if b[1] <= y < b[3])
        if key not in cache:
            row = np.zeros(width, dtype=bool)
            for i in key:
                row[max(boxes[i][0], 0) : max(boxes[i][2], 0)] = True
            cache[key] = b"\x00" + np.packbits(row).tobytes()
        body += packer.compress(cache[key])
    body += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale, no interlace
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        for kind, data in ((b"IHDR", header), (b"IDAT", bytes(body)), (b"IEND", b"")):
            handle.write(struct.pack(">I", len(data)) + kind + data)
            handle.write(struct.pack(">I", zlib.crc32(kind + data)))


def write_lrs_vqa_archive(
    src_parent: str | Path, out_dir: str | Path, *, num_parts: int = 3, base: str = "LRS_VQA.7z"
) -> list[Path]:
    """Pack ``<src_parent>/LRS_VQA/`` into 7-Zip-style volumes ``<out_dir>/<base>.001 ..``.

    The archive is written by py7zr with the COPY filter (fast, members stored as-is) and split byte-wise: every
    volume has the same size but the last, which is smaller or equal (what ``7z a -v<size>`` produces). Old
    ``<base>.NNN`` files in ``out_dir`` are removed first.

    Args:
        src_parent: Folder that contains ``LRS_VQA/`` (e.g. the result of :func:`write_lrs_vqa`).
        out_dir: Folder for the volumes (created if needed).
        num_parts: Number of volumes.
        base: Volume name without the ``.NNN`` number.

    Returns:
        The volumes in order.

    Raises:
        ConfigError: ``src_parent`` has no ``LRS_VQA/`` or the archive is too small for ``num_parts`` volumes.
    """
    import py7zr

    src_parent, out_dir = Path(src_parent), Path(out_dir)
    src = src_parent / "LRS_VQA"
    if not src.is_dir():
        raise ConfigError(f"{src_parent} holds no LRS_VQA/ folder to pack")
    if num_parts < 1:
        raise ConfigError(f"num_parts must be >= 1, got {num_parts}")
    buffer = io.BytesIO()
    with py7zr.SevenZipFile(buffer, "w", filters=[{"id": py7zr.FILTER_COPY}]) as archive:
        for path in [src, *sorted(src.rglob("*"))]:
            archive.write(path, path.relative_to(src_parent).as_posix())
    data = buffer.getvalue()
    volume_size = math.ceil(len(data) / num_parts)
    if (num_parts - 1) * volume_size >= len(data):
        raise ConfigError(f"a {len(data)}-byte archive cannot be split into {num_parts} non-empty volumes")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{base}.[0-9][0-9][0-9]"):
        old.unlink()
    volumes = []
    for i in range(num_parts):
        volume = out_dir / f"{base}.{i + 1:03d}"
        volume.write_bytes(data[i * volume_size : (i + 1) * volume_size])
        volumes.append(volume)
    return volumes
