"""Format-true, kilobyte-size MME-RealWorld parquet shards (the layout of ``yifanzhang114/MME-RealWorld-Lmms-eval``).

Used by the tests and the demo in place of the Hub. What the real shards have, these have too:

* ``data/train-0000N-of-0000M.parquet`` with the columns ``index`` (int64), ``question`` (string),
  ``multi-choice options`` (list<string>), ``answer`` (string), ``category`` (string), ``l2-category`` (string) and
  ``bytes`` (string: the base64 text of a PNG or JPEG);
* Remote Sensing rows (``Perception/Remote Sensing``; ``color`` / ``count`` / ``position``) mixed with rows of other
  subtasks that a reader must drop (one of them with l2-category ``color``, so filtering on l2 alone is wrong);
* the same RS picture embedded again in several rows; several row groups per shard, at least one of them without
  any RS row when there are enough other rows;
* optionally one RS row whose base64 text decodes to a truncated PNG (a broken image).
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

__all__ = ["DEFAULT_ROWS_PER_CATEGORY", "write_mme_parquet"]

#: RS rows per l2-category written by default (unequal on purpose, so per-category mix-ups show).
DEFAULT_ROWS_PER_CATEGORY = {"color": 5, "count": 4, "position": 6}

_RS = "Perception/Remote Sensing"
_OTHERS = (
    ("Perception/Autonomous_Driving", "object_count"),
    ("Perception/Monitoring", "color"),
    ("Reasoning/OCR with Complex Context", "character_identification"),
    ("Perception/Diagram and Table", "table"),
)
_CHOICES = {
    "color": ["Red", "Green", "Blue", "White", "Gray", "Black", "Yellow"],
    "count": ["1", "2", "3", "4", "5", "6", "7", "8"],
    "position": ["top-left", "top-right", "bottom-left", "bottom-right", "center", "left", "right"],
}
_QUESTIONS = {
    "color": "What is the color of the roof of the largest building in the image?",
    "count": "How many ships are docked in the harbour?",
    "position": "Where is the storage tank located in the image?",
}
_NUM_RS_IMAGES = 4


def write_mme_parquet(
    out_dir: str | Path,
    *,
    seed: int = 0,
    rows_per_category: dict[str, int] | None = None,
    other_rows: int = 5,
    num_shards: int = 2,
    broken_image: bool = True,
    row_group_size: int = 3,
) -> list[Path]:
    """Write MME-RealWorld-like parquet shards to ``<out_dir>/data/``.

    Rows are spread over the shards round-robin; inside a shard the non-RS rows come first, so with the defaults
    the first row group of shard 0 holds no RS row. Old ``train-*.parquet`` files in ``<out_dir>/data/`` are
    removed first. The output depends only on the arguments.

    Args:
        out_dir: Folder that receives ``data/train-*.parquet``.
        seed: Seed of the pictures, indices, options and answers.
        rows_per_category: RS rows per l2-category (``color`` / ``count`` / ``position``); default
            :data:`DEFAULT_ROWS_PER_CATEGORY`.
        other_rows: Rows of other subtasks (to be filtered out).
        num_shards: Number of shards.
        broken_image: Make one RS row (the last ``count`` row, or the last RS row) carry a truncated PNG.
        row_group_size: Rows per parquet row group.

    Returns:
        The shard paths, sorted.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    per_category = dict(DEFAULT_ROWS_PER_CATEGORY if rows_per_category is None else rows_per_category)
    rs_images = [_encode(_picture(rng, 240, 160), "PNG" if i % 2 == 0 else "JPEG") for i in range(_NUM_RS_IMAGES)]
    rs_rows = []
    for l2, count in per_category.items():
        for _ in range(count):
            rs_rows.append(_row(rng, _RS, l2, rs_images[len(rs_rows) % _NUM_RS_IMAGES]))
    if broken_image and rs_rows:
        broken = max((i for i, r in enumerate(rs_rows) if r["l2-category"] == "count"), default=len(rs_rows) - 1)
        rs_rows[broken]["bytes"] = _encode_bytes(base64.b64decode(rs_images[0])[:60])  # PNG magic, then cut
    other = [_row(rng, *_OTHERS[i % len(_OTHERS)], _encode(_picture(rng, 16, 16), "PNG")) for i in range(other_rows)]
    indices = rng.sample(range(100_000), len(rs_rows) + len(other))
    for row, index in zip(other + rs_rows, indices, strict=True):
        row["index"] = index

    data_dir = Path(out_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob("train-*.parquet"):
        stale.unlink()
    schema = pa.schema(
        [
            ("index", pa.int64()),
            ("question", pa.string()),
            ("multi-choice options", pa.list_(pa.string())),
            ("answer", pa.string()),
            ("category", pa.string()),
            ("l2-category", pa.string()),
            ("bytes", pa.string()),
        ]
    )
    paths = []
    for shard in range(num_shards):
        rows = other[shard::num_shards] + rs_rows[shard::num_shards]
        table = pa.Table.from_pylist(rows, schema=schema)
        path = data_dir / f"train-{shard:05d}-of-{num_shards:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return sorted(paths)


def _row(rng: random.Random, category: str, l2: str, image_b64: str) -> dict:
    choices = rng.sample(_CHOICES.get(l2, _CHOICES["color"]), 5)
    return {
        "question": _QUESTIONS.get(l2, f"Which option describes the {l2.replace('_', ' ')} best?"),
        "multi-choice options": [f"({letter}) {text}" for letter, text in zip("ABCDE", choices, strict=True)],
        "answer": rng.choice("ABCDE"),
        "category": category,
        "l2-category": l2,
        "bytes": image_b64,
    }


def _picture(rng: random.Random, width: int, height: int):
    """Blocks of random colour (8 x 8 px): larger than one vision tile of the tiny test models, a few KB as PNG."""
    from PIL import Image

    cells = Image.frombytes("RGB", (width // 8, height // 8), rng.randbytes((width // 8) * (height // 8) * 3))
    return cells.resize((width, height), Image.Resampling.NEAREST)


def _encode(image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return _encode_bytes(buffer.getvalue())


def _encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
