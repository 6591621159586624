"""LRS-VQA: fetch the 13-volume archive from the Hub, extract it safely, load the questions as docs.

Layout after :func:`fetch` (``root`` defaults to ``default_dataset_root("lrs_vqa")``)::

    <root>/parts/LRS_VQA.7z.001 .. .013    downloaded volumes (kept; delete them to save ~57 GB)
    <root>/LRS_VQA/LRS_VQA_merged.jsonl    7,333 questions
    <root>/LRS_VQA/image/*.tif|png         FAIR .tif, GLH-Bridge test-N.png, STAR NNNN.png
    <root>/.lrs_vqa_complete.json          completion marker, written last (only when every image exists)

The question file's ``image`` fields are relative to ``<root>`` (they start with ``LRS_VQA/image/``). Docs carry
absolute image *paths*; pixels are decoded only by the model side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lrs_plugin._jsonl import iter_json_objects
from lrs_plugin.data import archive
from lrs_plugin.data._install import install_lock, marker_name, requested_root
from lrs_plugin.data._paths import default_dataset_root, require_inside_root
from lrs_plugin.errors import (
    ConfigError,
    DatasetIntegrityError,
    DatasetNotFoundError,
    DatasetSchemaError,
)

__all__ = [
    "CATEGORIES",
    "DOC_KEYS",
    "LRS_VQA_REVISION",
    "MARKER_NAME",
    "NUM_PARTS",
    "QUESTION_FILE",
    "REPO_ID",
    "SUBSETS",
    "build_docs",
    "check_images",
    "clip_box",
    "fetch",
    "load_questions",
    "resolve_root",
    "subset_of",
]

REPO_ID = "ll-13/LRS-VQA"
"""Hub dataset repository of the authors' release."""

# The full 40-hex commit sha of the Hub head (short sha f7c0f5f, "Update README.md") could not be resolved offline,
# so the default is the branch; the completion marker records the sha resolved at fetch time, and users pin a
# commit with ``lrs-plugin fetch lrs_vqa --revision <sha>``.
LRS_VQA_REVISION = "main"
"""Default Hub revision (branch or commit sha) fetched by :func:`fetch`."""

NUM_PARTS = 13
"""Number of volumes ``LRS_VQA.7z.001 .. .013`` of the release."""

ARCHIVE_BASE = "LRS_VQA.7z"
"""Volume name without the ``.NNN`` number."""

QUESTION_FILE = "LRS_VQA/LRS_VQA_merged.jsonl"
"""Question file, relative to the dataset root (the parent of ``LRS_VQA/``)."""

_DATASET_NAME = "lrs_vqa"

MARKER_NAME = marker_name(_DATASET_NAME)
"""Completion marker inside the fetch root (``.lrs_vqa_complete.json``), written only after a verified, complete
extraction (:mod:`lrs_plugin.data._install`)."""

LOCK_NAME = ".fetch.lock"
"""Lock file inside the fetch root, held by a running fetch (and its 7-Zip child)."""

ROOT_ENV = "LRS_VQA_ROOT"
"""Environment variable naming an already-extracted copy (the folder that contains ``LRS_VQA/``)."""

SUBSETS: dict[str, tuple[str, ...]] = {
    "FAIR": ("count", "object category", "object shape", "object status", "reasoning", "rural or urban"),
    "GLH-Bridge": ("count", "object background", "object color", "rural or urban"),
    "STAR": (
        "count",
        "object category",
        "object color",
        "object shape",
        "object status",
        "reasoning",
        "rural or urban",
    ),
}
"""Source dataset (the ``question_id`` prefix) -> its question categories."""

CATEGORIES: tuple[str, ...] = tuple(sorted({c for cats in SUBSETS.values() for c in cats}))
"""All 8 question categories, sorted."""

REQUIRED_FIELDS = ("question_id", "image", "category", "text", "ground_truth", "image_size")
"""Fields every row has (``count`` rows have only these)."""

DOC_KEYS = (
    "question_id",
    "subset",
    "image",
    "image_path",
    "category",
    "text",
    "ground_truth",
    "hbox",
    "rbox",
    "image_size",
    "size_bin",
    "abs_size",
)
"""Keys of every doc returned by :func:`build_docs`, in this order."""

_MISSING_HINT = f"run `lrs-plugin fetch lrs_vqa` or set {ROOT_ENV} to the folder containing LRS_VQA/"


# --------------------------------------------------------------------------------------------------------------
# Fetch


def fetch(
    root: str | Path | None = None,
    *,
    revision: str = LRS_VQA_REVISION,
    parts_dir: str | Path | None = None,
    extractor: str = "auto",
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Download (or take local) volumes, verify and extract them, check the images, mark the root complete.

    A no-op (no Hub call) when ``root`` already holds a completion marker for the same requested revision
    (``"local"`` for ``parts_dir`` installs), unless ``force``. An interrupted earlier run (leftover
    ``.extract-partial-*`` folders, an extracted tree without marker) is cleaned up and redone.

    The whole fetch holds ``<root>/.fetch.lock``; a second fetch of the same root waits for it (saying so on stderr)
    and never extracts beside the first. A 7-Zip binary inherits the lock and dies with this process (see
    :mod:`lrs_plugin.data._child`), so the partial folder of a killed fetch is stale by the time the lock is free:
    the next fetch removes it.

    Args:
        root: Dataset root; defaults to ``default_dataset_root("lrs_vqa")``.
        revision: Hub branch, tag or commit sha (ignored with ``parts_dir``).
        parts_dir: Folder already holding ``LRS_VQA.7z.001 ..``: no Hub access; hashes are then unknown, the
            volume count and sizes come from the start header of ``LRS_VQA.7z.001``
            (:func:`lrs_plugin.data.archive.find_local_volumes`).
        extractor: ``"auto"`` (7-Zip binary if on PATH, else py7zr), ``"7z"`` or ``"py7zr"``.
        progress: Report progress on stderr.
        force: Redo the whole fetch even if the marker says complete.

    Returns:
        The dataset root (parent of ``LRS_VQA/``).

    Raises:
        ArchivePartError: A volume is missing, extra (a stray ``LRS_VQA.7z.014``), of the wrong size or hash
            (named).
        ArchiveCorruptError: Extraction failed although the volumes passed the checks.
        UnsafeArchiveError: A member would land outside the root.
        DatasetIntegrityError: The archive lacks the question file or referenced images (the first 20 named).
    """
    from lrs_plugin.data import _lrs_vqa_fetch as steps  # imports this module's constants

    root = Path(root) if root is not None else default_dataset_root(_DATASET_NAME)
    requested = "local" if parts_dir is not None else revision
    if not force and steps.marker_revision_of(root) == requested:
        return root
    with install_lock(root, LOCK_NAME, say=lambda message: steps.say_if(progress, message)) as lock_fd:
        if not force and steps.marker_revision_of(root) == requested:
            return root
        (root / MARKER_NAME).unlink(missing_ok=True)
        volumes, sha, expected = steps.fetch_volumes(root, revision, parts_dir, progress)
        archive.verify_volumes(volumes, expected, progress=progress)
        steps.remove_stale_partials(root)
        backend, _ = archive.resolve_extractor(extractor)
        steps.say_if(progress, f"extracting {len(volumes)} volumes into {root} with {backend}")
        inherit = () if lock_fd is None else (lock_fd,)
        steps.install_tree(
            archive.extract(volumes, root, extractor=extractor, progress=progress, pass_fds=inherit), root
        )
        missing = check_images(root)
        if missing:
            raise DatasetIntegrityError(
                f"{len(missing)} image(s) referenced by {QUESTION_FILE} are missing under {root} after extraction "
                f"(first 20: {', '.join(missing[:20])}); the data stays in {root / 'LRS_VQA'} but is not marked "
                f"complete: re-fetch with --force, or set {ROOT_ENV}={root} to evaluate the rest (missing images "
                "are recorded as failed samples)"
            )
        steps.write_complete_marker(root, requested, sha, volumes, expected, backend)
    steps.say_if(progress, f"LRS-VQA complete in {root}")
    return root


# --------------------------------------------------------------------------------------------------------------
# Reading


def resolve_root(root: str | Path | None = None) -> Path:
    """Find the extracted dataset: ``root``, else ``$LRS_VQA_ROOT``, else the default fetch root when complete.

    Args:
        root: The folder containing ``LRS_VQA/`` or the ``LRS_VQA/`` folder itself.

    Returns:
        The absolute parent of ``LRS_VQA/`` (image paths in the question file are relative to it).

    Raises:
        DatasetNotFoundError: Nothing found; says how to fetch it or where to point ``LRS_VQA_ROOT``.
    """
    root, source = requested_root(root, ROOT_ENV)
    if root is None:
        default = default_dataset_root(_DATASET_NAME)
        if (default / MARKER_NAME).is_file() and (default / QUESTION_FILE).is_file():
            return default.resolve()
        raise DatasetNotFoundError(f"LRS-VQA not found (no complete fetch in {default}): {_MISSING_HINT}")
    path = Path(root).expanduser().resolve()
    for candidate in (path, path.parent):
        if (candidate / QUESTION_FILE).is_file() and (candidate == path or path.name == "LRS_VQA"):
            return candidate
    raise DatasetNotFoundError(f"{source} {path} holds no {QUESTION_FILE} (nor is it LRS_VQA/ itself): {_MISSING_HINT}")


def load_questions(path: str | Path, *, subsets: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """Read the question file strictly: every row is checked, the first bad one raises.

    Args:
        path: ``LRS_VQA_merged.jsonl`` (JSON object per line; blank lines are skipped).
        subsets: ``question_id`` prefix -> its categories; default :data:`SUBSETS` (another benchmark in the same
            schema, e.g. the testbed's, passes its own).

    Returns:
        The rows as parsed, in file order.

    Raises:
        DatasetNotFoundError: The file does not exist.
        DatasetSchemaError: Malformed JSON, a missing or mistyped field, an ``image`` path that is absolute or
            climbs out of the root with ``..`` (see :func:`lrs_plugin.data._paths.outside_root_reason`), an unknown
            subset or category, or a repeated ``question_id``; names the file, the 1-based line and the value.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"question file {path} not found: {_MISSING_HINT}")
    rows = []
    seen: dict[str, int] = {}
    for where, number, row in iter_json_objects(path, error=DatasetSchemaError):
        _check_row(row, where, SUBSETS if subsets is None else subsets)
        qid = row["question_id"]
        if qid in seen:
            raise DatasetSchemaError(f"{where}: question_id {qid!r} repeats line {seen[qid]}")
        seen[qid] = number
        rows.append(row)
    return rows


def _check_row(row: Any, where: str, subsets: Mapping[str, Sequence[str]]) -> None:
    if not isinstance(row, dict):
        raise DatasetSchemaError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for field in REQUIRED_FIELDS:
        if field not in row:
            raise DatasetSchemaError(f"{where}: missing field {field!r} (required: {', '.join(REQUIRED_FIELDS)})")
    for field in ("question_id", "image", "category", "text", "ground_truth"):
        if not isinstance(row[field], str):
            raise DatasetSchemaError(f"{where}: field {field!r} must be a string, got {row[field]!r}")
    require_inside_root(row["image"], where=where)
    subset = subset_of(row["question_id"])
    if subset not in subsets:
        raise DatasetSchemaError(
            f"{where}: question_id {row['question_id']!r} has unknown prefix {subset!r}; valid: {', '.join(subsets)}"
        )
    category = row["category"]
    known = sorted({c for cats in subsets.values() for c in cats})
    if category not in known:
        raise DatasetSchemaError(f"{where}: unknown category {category!r}; valid: {', '.join(known)}")
    if category not in subsets[subset]:
        raise DatasetSchemaError(
            f"{where}: category {category!r} does not occur in {subset}; valid there: {', '.join(subsets[subset])}"
        )
    size = row["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise DatasetSchemaError(f"{where}: image_size must be [W, H] with positive integers, got {size!r}")
    for field, length in (("hbox", 4), ("rbox", 8)):
        value = row.get(field)
        if value is not None and not (
            isinstance(value, list) and len(value) == length and all(_is_number(v) for v in value)
        ):
            raise DatasetSchemaError(f"{where}: {field} must be a list of {length} numbers, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def subset_of(question_id: str) -> str:
    """The source dataset of a question id ``<subset>_<n>``: the part before the first ``_``.

    The one reading of a question id (scoring checks its result against the known subsets). Subset names hold no
    ``_`` (``GLH-Bridge`` has a hyphen), so the first ``_`` ends the name: ``"GLH-Bridge_12"`` -> ``"GLH-Bridge"``,
    ``"STAR_3999"`` -> ``"STAR"``; an id without ``_`` is returned whole.
    """
    return str(question_id).split("_", 1)[0]


def build_docs(
    root: str | Path | None, subset: str | None = None, *, subsets: Mapping[str, Sequence[str]] | None = None
) -> list[dict[str, Any]]:
    """Build the docs of one subset (``None``: all), in file order.

    Args:
        root: As in :func:`resolve_root` (``None``: ``$LRS_VQA_ROOT`` or the default fetch root).
        subset: ``"FAIR"``, ``"GLH-Bridge"``, ``"STAR"`` or ``None``.
        subsets: As in :func:`load_questions`.

    Returns:
        Dicts with exactly the keys :data:`DOC_KEYS` (same types in every row, absent fields are ``None``):
        ``image_path`` is absolute; ``image_size`` is ``[W, H]``; ``hbox`` ``[x1, y1, x2, y2]`` ints and ``rbox``
        8 floats as in the file (not clipped: see :func:`clip_box`).

    Raises:
        ConfigError: Unknown subset (valid ones named).
        DatasetNotFoundError / DatasetSchemaError: As in :func:`resolve_root` / :func:`load_questions`.
    """
    table = SUBSETS if subsets is None else subsets
    if subset is not None and subset not in table:
        raise ConfigError(f"unknown LRS-VQA subset {subset!r}; valid: {', '.join(table)}")
    base = resolve_root(root)
    docs = []
    for row in load_questions(base / QUESTION_FILE, subsets=table):
        row_subset = subset_of(row["question_id"])
        if subset is not None and row_subset != subset:
            continue
        hbox, rbox = row.get("hbox"), row.get("rbox")
        docs.append(
            {
                "question_id": row["question_id"],
                "subset": row_subset,
                "image": row["image"],
                "image_path": str(base / row["image"]),
                "category": row["category"],
                "text": row["text"],
                "ground_truth": row["ground_truth"],
                "hbox": None if hbox is None else [int(v) for v in hbox],
                "rbox": None if rbox is None else [float(v) for v in rbox],
                "image_size": [int(v) for v in row["image_size"]],
                "size_bin": _optional_str(row.get("size_bin")),
                "abs_size": _optional_str(row.get("abs_size")),
            }
        )
    return docs


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def check_images(root: str | Path | None) -> list[str]:
    """Return the image paths referenced by the question file that do not exist (as written there, de-duplicated).

    Args:
        root: As in :func:`resolve_root`.
    """
    base = resolve_root(root)
    missing: dict[str, None] = {}
    for row in load_questions(base / QUESTION_FILE):
        image = row["image"]
        if image not in missing and not (base / image).is_file():
            missing[image] = None
    return list(missing)


def clip_box(
    box: Sequence[float], image_size: Sequence[int], *, whole_pixels: bool = True
) -> tuple[int, int, int, int] | tuple[float, float, float, float] | None:
    """Clip an ``[x1, y1, x2, y2]`` box into the image ``[0, W] x [0, H]``.

    The one clipping rule for a document's box: focus recall (:func:`lrs_plugin.focus.recall.clipped_box`), the
    ``oracle`` focus scorer and the reducers' encoded regions call it. Some FAIR boxes overflow the image or have
    negative coordinates; they are clipped, not rejected. The corners are sorted first (``x2, y2, x1, y1`` is the same
    box).

    Args:
        box: ``[x1, y1, x2, y2]`` in source pixels.
        image_size: ``[W, H]``.
        whole_pixels: Widen fractional coordinates to whole pixels (floor the start, ceil the end) and return ints;
            ``False`` keeps them as floats.

    Returns:
        The clipped box, or ``None`` when nothing of it is inside the image.

    Raises:
        DatasetSchemaError: ``box`` is not 4 finite numbers or ``image_size`` not 2 (a :class:`ValueError`).
    """
    if len(box) != 4 or len(image_size) != 2 or not all(_is_number(v) for v in box):
        raise DatasetSchemaError(
            f"clip_box needs the box as 4 finite numbers (x1, y1, x2, y2) and the image size [W, H]; got "
            f"{list(box)!r} and {image_size!r}"
        )
    width, height = int(image_size[0]), int(image_size[1])
    (x1, x2), (y1, y2) = sorted((box[0], box[2])), sorted((box[1], box[3]))
    if whole_pixels:
        x1, y1, x2, y2 = math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)
    else:
        x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
    x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
    y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    if not whole_pixels:
        return float(x1), float(y1), float(x2), float(y2)
    return x1, y1, x2, y2
