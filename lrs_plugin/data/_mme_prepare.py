"""Plumbing of :func:`lrs_plugin.data.mme_realworld_rs.fetch`: RS rows out of parquet shards, images decoded once.

Reading order per row group: the small key columns (``index``, ``category``, ``l2-category``) always; the others,
``bytes`` above all, only when the row group holds Remote Sensing rows, and only those rows are kept. Each distinct
base64 text is decoded once; each distinct picture is written once as ``images/<sha1 of its bytes>.<ext>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import struct
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lrs_plugin.data.mme_realworld_rs import ANNOTATIONS_NAME, COLUMNS, L2_CATEGORIES, RS_CATEGORY
from lrs_plugin.errors import DatasetIntegrityError, DatasetSchemaError

__all__ = ["prepare_shards"]

_KEY_COLUMNS = ["index", "category", "l2-category"]
_ROW_COLUMNS = [c for c in COLUMNS if c not in _KEY_COLUMNS]
_ANSWERS = ("A", "B", "C", "D", "E")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
    (b"II+\x00", "tif"),  # BigTIFF
    (b"MM\x00+", "tif"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def prepare_shards(shards: list[Path], staging: Path, *, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write ``images/`` and ``annotations.jsonl`` of every RS row of ``shards`` into the new folder ``staging``.

    Args:
        shards: Parquet shards, in the order their rows are written.
        staging: Folder to create and fill (its parent must exist).
        say: Called with one progress line per shard, when given.

    Returns:
        ``{"rows": int, "rows_per_category": {l2: int}, "images": int, "image_errors": int}``.

    Raises:
        DatasetIntegrityError: An unreadable shard, or two RS rows with the same ``index`` (both shards named).
        DatasetSchemaError: A shard lacks a column, or an RS row has a bad field.
    """
    (staging / "images").mkdir(parents=True)
    seen_index: dict[int, str] = {}
    decoded: dict[str, tuple[str | None, str | None]] = {}  # sha1 of the base64 text -> (relative path, error)
    per_category: Counter[str] = Counter()
    image_errors = 0
    with open(staging / ANNOTATIONS_NAME, "w", encoding="utf-8") as out:
        for number, shard in enumerate(shards, 1):
            shard_rows = shard_groups = 0
            for batch in _rs_batches(shard):
                shard_groups += 1
                for row in batch:
                    if row["index"] in seen_index:
                        raise DatasetIntegrityError(
                            f"duplicate MME-RealWorld RS index {row['index']} (in {seen_index[row['index']]!r} and "
                            f"{shard.name!r}); every RS row needs a unique index"
                        )
                    seen_index[row["index"]] = shard.name
                    key = hashlib.sha1(row["bytes"].encode("utf-8")).hexdigest() if row["bytes"] is not None else ""
                    if key not in decoded:
                        decoded[key] = _store_image(row["bytes"], staging)
                    image, error = decoded[key]
                    image_errors += error is not None
                    per_category[row["l2-category"]] += 1
                    shard_rows += 1
                    out.write(json.dumps(_annotation(row, image, error), ensure_ascii=False) + "\n")
            if say is not None:
                say(f"shard {number}/{len(shards)} {shard.name}: {shard_rows} RS rows from {shard_groups} row group(s)")
    return {
        "rows": sum(per_category.values()),
        "rows_per_category": {name: per_category[name] for name in L2_CATEGORIES},
        "images": sum(1 for _ in (staging / "images").iterdir()),
        "image_errors": image_errors,
    }


def _annotation(row: Mapping[str, Any], image: str | None, error: str | None) -> dict[str, Any]:
    return {
        "question_id": str(row["index"]),
        "index": row["index"],
        "question": row["question"],
        "options": row["multi-choice options"],
        "answer": row["answer"],
        "category": row["l2-category"],
        "image": image,
        "image_error": error,
    }


def _rs_batches(shard: Path) -> Iterator[Iterator[dict[str, Any]]]:
    """Yield, per row group that holds RS rows, an iterator over its validated RS rows.

    The small key columns are read for every row group; the others (``bytes`` above all) only for row groups that
    hold RS rows. Rows become Python objects one at a time: a real row group is ~600 MiB of base64 text.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(shard)
        names = parquet.schema_arrow.names
    except (OSError, pa.ArrowException) as exc:
        raise DatasetIntegrityError(f"cannot read parquet shard {str(shard)!r}: {exc}") from exc
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise DatasetSchemaError(f"parquet shard {str(shard)!r} lacks columns {missing}; it has {names}")
    for group in range(parquet.num_row_groups):
        keys = parquet.read_row_group(group, columns=_KEY_COLUMNS)
        positions = [i for i, c in enumerate(keys.column("category").to_pylist()) if c == RS_CATEGORY]
        if positions:
            rest = parquet.read_row_group(group, columns=_ROW_COLUMNS)
            yield _group_rows(keys, rest, positions, shard)


def _group_rows(keys: Any, rest: Any, positions: list[int], shard: Path) -> Iterator[dict[str, Any]]:
    for position in positions:
        row = {**keys.slice(position, 1).to_pylist()[0], **rest.slice(position, 1).to_pylist()[0]}
        _validate_row(row, shard)
        yield row


def _validate_row(row: Mapping[str, Any], shard: Path) -> None:
    where = f"shard {shard.name!r}, RS row index {row['index']!r}"
    if not isinstance(row["index"], int) or isinstance(row["index"], bool):
        raise DatasetSchemaError(f"{where}: 'index' must be an integer, got {row['index']!r}")
    if row["l2-category"] not in L2_CATEGORIES:
        raise DatasetSchemaError(
            f"{where}: unknown l2-category {row['l2-category']!r}; valid: {', '.join(L2_CATEGORIES)}"
        )
    if row["answer"] not in _ANSWERS:
        raise DatasetSchemaError(f"{where}: answer {row['answer']!r} is not one of {', '.join(_ANSWERS)}")
    if not isinstance(row["question"], str):
        raise DatasetSchemaError(f"{where}: 'question' must be a string, got {row['question']!r}")
    options = row["multi-choice options"]
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise DatasetSchemaError(
            f"{where}: 'multi-choice options' must be a non-empty list of strings, got {options!r}"
        )
    if row["bytes"] is not None and not isinstance(row["bytes"], str):
        raise DatasetSchemaError(f"{where}: 'bytes' must be a base64 string, got {type(row['bytes']).__name__}")


def _store_image(b64: str | None, staging: Path) -> tuple[str | None, str | None]:
    """Decode one base64 image and write it once; return ``(relative path, None)`` or ``(None, error)``."""
    if b64 is None:
        return None, "no image data (null 'bytes')"
    try:
        data = base64.b64decode(b64)  # as lmms-eval does: characters outside the alphabet are skipped
    except (binascii.Error, ValueError) as exc:
        return None, f"invalid base64 image data: {exc}"
    ext = _image_extension(data)
    if ext is None:
        return None, f"unrecognised image format ({len(data)} bytes starting {data[:8].hex()})"
    error = _verify_image(data)
    if error is not None:
        return None, error
    relative = f"images/{hashlib.sha1(data).hexdigest()}.{ext}"
    target = staging / relative
    if not target.exists():  # the same picture can hide behind different base64 texts
        target.write_bytes(data)
    return relative, None


def _image_extension(data: bytes) -> str | None:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _verify_image(data: bytes) -> str | None:
    """Check an encoded image with Pillow (inside our scoped pixel limit); return an error string or ``None``."""
    from PIL import Image

    from lrs_plugin.imagery.large_image import pillow_pixel_limit

    try:
        with pillow_pixel_limit(), Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        return f"undecodable image ({type(exc).__name__}: {exc})"
    return None
