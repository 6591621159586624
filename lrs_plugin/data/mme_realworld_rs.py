"""MME-RealWorld, Remote Sensing part: fetch the lmms-eval parquet shards, keep the RS rows, decode images once.

The Hub repository ``yifanzhang114/MME-RealWorld-Lmms-eval`` holds every MME-RealWorld row (23,609) in parquet shards
whose ``bytes`` column carries each image as a base64 string, repeated in every row that uses it. :func:`fetch`
reads the small columns first, then the ``bytes`` column only of the row groups holding Remote Sensing rows, writes
each distinct image once as ``images/<sha1>.<ext>`` and the rows as ``annotations.jsonl``, then a completion marker.

Prepared layout::

    <root>/annotations.jsonl                one RS row per line (question_id, index, question, options, answer,
                                            category = l2-category, image, image_error)
    <root>/images/<sha1>.<ext>              distinct decoded images, named by the sha1 of their bytes
    <root>/.mmerealworld_rs_complete.json   marker: repository, revisions, counts, shard names, time
    <root>/shards/data/train-*.parquet      the downloaded shards (Hub path only; kept so a re-prepare is offline)

A row whose image does not decode is kept with ``image: null`` and an ``image_error`` string (counted in the
marker): the model records a failed answer for it instead of aborting the preparation.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lrs_plugin.data import _hub
from lrs_plugin.data._install import install_lock, marker_name, marker_revision, requested_root, say, write_marker
from lrs_plugin.data._paths import default_dataset_root, require_inside_root
from lrs_plugin.errors import ConfigError, DatasetIntegrityError, DatasetNotFoundError, DatasetSchemaError

__all__ = [
    "REPO_ID",
    "MME_REVISION",
    "RS_CATEGORY",
    "L2_CATEGORIES",
    "EXPECTED_ROWS",
    "EXPECTED_PER_CATEGORY",
    "COLUMNS",
    "SHARD_PATTERN",
    "MARKER_NAME",
    "ANNOTATIONS_NAME",
    "ENV_ROOT",
    "PROMPT_STYLES",
    "fetch",
    "resolve_root",
    "build_docs",
    "build_prompt",
]

REPO_ID = "yifanzhang114/MME-RealWorld-Lmms-eval"
#: Branch fetched by default. The full commit sha of the head (short ``f157390``) could not be read offline; the
#: completion marker records the sha that was actually downloaded when huggingface_hub reports it.
MME_REVISION = "main"
RS_CATEGORY = "Perception/Remote Sensing"
L2_CATEGORIES = ("color", "count", "position")
EXPECTED_ROWS = 3738
EXPECTED_PER_CATEGORY = {"color": 1255, "count": 1226, "position": 1257}
#: Parquet columns read from every shard (``bytes`` is the base64 text of the image).
COLUMNS = ("index", "question", "multi-choice options", "answer", "category", "l2-category", "bytes")
SHARD_PATTERN = "data/train-*.parquet"
_DATASET_NAME = "mmerealworld_rs"
#: Completion marker (``.mmerealworld_rs_complete.json``), written last (:mod:`lrs_plugin.data._install`).
MARKER_NAME = marker_name(_DATASET_NAME)
#: Lock file inside the root, held by a running preparation.
LOCK_NAME = ".mmerealworld_rs.lock"
ANNOTATIONS_NAME = "annotations.jsonl"
ENV_ROOT = "MME_RW_RS_ROOT"
PROMPT_STYLES = ("paper", "lmms_eval")

_INSTRUCTION = (
    "Select the best answer to the above multiple-choice question based on the image. "
    "Respond with only the letter (A, B, C, D, or E) of the correct option."
)


# ----------------------------------------------------------------------------------------------------------- fetch
def fetch(
    root: str | Path | None = None,
    *,
    revision: str = MME_REVISION,
    source_dir: str | Path | None = None,
    expected_rows: int | None = EXPECTED_ROWS,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Prepare the MME-RealWorld Remote Sensing rows under ``root`` (a no-op when already prepared).

    Args:
        root: Target folder; defaults to ``default_dataset_root("mmerealworld_rs")``.
        revision: Hub revision (branch, tag or commit sha) of :data:`REPO_ID`; recorded in the marker.
        source_dir: Folder holding already-downloaded ``*.parquet`` shards (searched recursively); skips the Hub.
        expected_rows: Number of RS rows the shards must hold (with the default, also the per-category counts of
            :data:`EXPECTED_PER_CATEGORY`); ``None`` accepts any non-zero number (fixtures, subsets).
        progress: Print one line per shard to stderr.
        force: Prepare again even when the marker records the same revision.

    Returns:
        The prepared root.

    Raises:
        DatasetNotFoundError: ``source_dir`` is missing or holds no shard, or the download matched no shard.
        DatasetSchemaError: A shard lacks a column, or an RS row has a bad answer, l2-category or field type.
        DatasetIntegrityError: Duplicate RS ``index``, an unreadable shard, or RS row counts differ from expected.
    """
    from lrs_plugin.data._mme_prepare import prepare_shards  # imports this module's constants

    root = Path(root) if root is not None else default_dataset_root(_DATASET_NAME)
    if not force and _marker_revision(root) == revision:
        return root
    with install_lock(root, LOCK_NAME, say=_say if progress else None):
        if not force and _marker_revision(root) == revision:  # another process finished while we waited
            return root
        shards, resolved_sha, source = _locate_shards(root, revision, source_dir)
        staging = root / ".prepare.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            summary = prepare_shards(shards, staging, say=_say if progress else None)
            _check_counts(summary["rows_per_category"], expected_rows)
            (root / MARKER_NAME).unlink(missing_ok=True)
            for name in ("images", ANNOTATIONS_NAME):
                _replace(staging / name, root / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        marker = {
            "repo_id": REPO_ID,
            "revision": revision,
            "resolved_sha": resolved_sha,
            "source": source,
            **summary,
            "shards": [_shard_name(path, shards) for path in shards],
            "prepared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_marker(root, MARKER_NAME, marker)
    if progress:
        _say(f"{summary['rows']} Remote Sensing rows, {summary['images']} images ready in {root}")
    return root


def _marker_revision(root: Path) -> str | None:
    """The revision recorded by a complete preparation, or ``None`` (no marker, or an unreadable one)."""
    return marker_revision(root, MARKER_NAME)


def _locate_shards(root: Path, revision: str, source_dir: str | Path | None) -> tuple[list[Path], str | None, str]:
    """Return ``(sorted shard paths, resolved commit sha or None, source description)``."""
    if source_dir is not None:
        source_dir = Path(source_dir)
        if not source_dir.is_dir():
            raise DatasetNotFoundError(f"MME-RealWorld source folder {str(source_dir)!r} does not exist")
        shards = sorted(source_dir.rglob("*.parquet"), key=lambda p: p.relative_to(source_dir).as_posix())
        if not shards:
            raise DatasetNotFoundError(f"no *.parquet shard found (recursively) in {str(source_dir)!r}")
        return shards, None, f"local:{source_dir.resolve()}"
    local_dir = root / "shards"
    folder = _hub.snapshot_download(
        REPO_ID, revision=revision, local_dir=local_dir, allow_patterns=[SHARD_PATTERN], repo_type="dataset"
    )
    shards = sorted(Path(folder).glob(SHARD_PATTERN))
    if not shards:
        raise DatasetNotFoundError(
            f"no shard matching {SHARD_PATTERN!r} in {REPO_ID} at revision {revision!r} (download folder "
            f"{str(folder)!r}); check the revision, or pass source_dir= with shards downloaded by hand"
        )
    pinned = revision if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision) else None
    return shards, _downloaded_sha(Path(folder), shards) or pinned, "hub"


def _downloaded_sha(folder: Path, shards: list[Path]) -> str | None:
    """The commit sha huggingface_hub recorded for every shard under ``folder``, when it is one and the same.

    huggingface_hub keeps ``<local_dir>/.cache/huggingface/download/<path>.metadata`` whose first line is the commit
    sha of the downloaded file. This is best effort: any other layout gives ``None`` (the marker then says unknown).
    """
    shas = set()
    for shard in shards:
        meta = folder / ".cache" / "huggingface" / "download" / f"{shard.relative_to(folder).as_posix()}.metadata"
        try:
            shas.add(meta.read_text(encoding="utf-8").split("\n", 1)[0].strip())
        except OSError:
            return None
    sha = shas.pop() if len(shas) == 1 else ""
    return sha if len(sha) == 40 and all(c in "0123456789abcdef" for c in sha) else None


def _shard_name(path: Path, shards: list[Path]) -> str:
    return path.name if len({p.name for p in shards}) == len(shards) else str(path)


def _replace(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    os.replace(src, dst)


def _say(message: str) -> None:
    say(_DATASET_NAME, message)


def _check_counts(per_category: Mapping[str, int], expected_rows: int | None) -> None:
    observed = sum(per_category.values())
    found = ", ".join(f"{name} {per_category[name]}" for name in L2_CATEGORIES)
    if observed == 0:
        raise DatasetIntegrityError(f"no {RS_CATEGORY!r} rows found in the shards of {REPO_ID}")
    if expected_rows is None:
        return
    wrong_split = expected_rows == EXPECTED_ROWS and dict(per_category) != EXPECTED_PER_CATEGORY
    if observed != expected_rows or wrong_split:
        wanted = (
            ", ".join(f"{k} {v}" for k, v in EXPECTED_PER_CATEGORY.items()) if expected_rows == EXPECTED_ROWS else ""
        )
        raise DatasetIntegrityError(
            f"MME-RealWorld-RS: observed {observed} Remote Sensing rows ({found}), expected {expected_rows}"
            + (f" ({wanted})" if wanted else "")
            + "; incomplete or different shards? Pass expected_rows=None to accept them as they are"
        )


# ------------------------------------------------------------------------------------------------------- reading
def resolve_root(root: str | Path | None = None) -> Path:
    """Find the prepared RS folder: ``root``, else ``$MME_RW_RS_ROOT``, else the default root if it is complete.

    Raises:
        DatasetNotFoundError: The folder given has no ``annotations.jsonl``, or nothing was found; says how to fetch.
    """
    given, origin = requested_root(root, ENV_ROOT)
    if given is not None:
        path = Path(given).expanduser()
        if not (path / ANNOTATIONS_NAME).is_file():
            raise DatasetNotFoundError(
                f"{origin} {str(path)!r} holds no {ANNOTATIONS_NAME}; prepare it with "
                f"`lrs-plugin fetch mmerealworld_rs --root {path}`"
            )
        return path
    default = default_dataset_root(_DATASET_NAME)
    if (default / MARKER_NAME).is_file():
        return default
    raise DatasetNotFoundError(
        f"MME-RealWorld-RS is not prepared (looked in {str(default)!r}); run `lrs-plugin fetch mmerealworld_rs` "
        f"or set {ENV_ROOT} to a folder prepared by it"
    )


def build_docs(root: str | Path) -> list[dict[str, Any]]:
    """Read ``<root>/annotations.jsonl`` into documents that carry image paths (pixels are never decoded here).

    Returns:
        One dict per RS row with exactly: ``question_id`` (str), ``index`` (int), ``question`` (str), ``options``
        (list[str]), ``answer`` (str), ``category`` (str, the l2-category), ``image`` (str relative to ``root`` or
        None), ``image_path`` (absolute str or None) and ``image_error`` (str or None).

    Raises:
        DatasetNotFoundError: The annotations file is missing.
        DatasetSchemaError: A line is not JSON, a field is missing / of the wrong type, or ``image`` is absolute or
            climbs out of the root with ``..`` (names file, line and value).
    """
    root = Path(root)
    path = root / ANNOTATIONS_NAME
    if not path.is_file():
        raise DatasetNotFoundError(f"{str(path)!r} not found; run `lrs-plugin fetch mmerealworld_rs --root {root}`")
    docs = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                docs.append(_doc_from_line(line, f"{path}:{number}", root))
    return docs


def _doc_from_line(line: str, where: str, root: Path) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise DatasetSchemaError(f"{where}: not a JSON object ({exc})") from exc
    if not isinstance(row, dict):
        raise DatasetSchemaError(f"{where}: not a JSON object (got {type(row).__name__})")
    types = {"question_id": str, "index": int, "question": str, "options": list, "answer": str, "category": str}
    for field, kind in types.items():
        if not isinstance(row.get(field), kind) or isinstance(row.get(field), bool):
            raise DatasetSchemaError(f"{where}: field {field!r} must be {kind.__name__}, got {row.get(field)!r}")
    if not all(isinstance(o, str) for o in row["options"]):
        raise DatasetSchemaError(f"{where}: field 'options' must be a list of strings, got {row['options']!r}")
    if row["category"] not in L2_CATEGORIES:
        raise DatasetSchemaError(f"{where}: unknown category {row['category']!r}; valid: {', '.join(L2_CATEGORIES)}")
    image, error = row.get("image"), row.get("image_error")
    for field, value in (("image", image), ("image_error", error)):
        if value is not None and not isinstance(value, str):
            raise DatasetSchemaError(f"{where}: field {field!r} must be a string or null, got {value!r}")
    if image is not None:
        require_inside_root(image, where=where)
    return {
        "question_id": row["question_id"],
        "index": row["index"],
        "question": row["question"],
        "options": list(row["options"]),
        "answer": row["answer"],
        "category": row["category"],
        "image": image,
        "image_path": str((root / image).absolute()) if image is not None else None,
        "image_error": error if error is not None or image is not None else "no image recorded for this row",
    }


def build_prompt(doc: Mapping[str, Any], style: str = "paper") -> str:
    r"""The multiple-choice prompt of a document (``question`` and ``options``).

    Args:
        doc: A document of :func:`build_docs`.
        style: ``"paper"``: the LRS-VQA authors' MME-RealWorld-RS driver (``model_vqa_mme_realworld.py``):
            ``(question + " The choices are listed below: \n" + "\n" + options).strip() + "\n" + instruction``;
            the blank line after the header is in their code (an f-string adds a second newline). ``"lmms_eval"``:
            lmms-eval's ``mme_realworld_doc_to_text``, ``" The choices are listed below:\n"``, no blank line, and
            ``"\nThe best answer is: "`` at the end. ``options`` are joined with ``"\n"``.

    Raises:
        ConfigError: ``style`` is not one of :data:`PROMPT_STYLES`.
    """
    options = "\n".join(doc["options"])
    if style == "paper":
        header = doc["question"] + " The choices are listed below: \n"
        return f"{header}\n{options}".strip() + "\n" + _INSTRUCTION
    if style == "lmms_eval":
        return (
            doc["question"]
            + " The choices are listed below:\n"
            + options
            + "\n"
            + _INSTRUCTION
            + "\nThe best answer is: "
        )
    raise ConfigError(f"unknown MME-RealWorld-RS prompt style {style!r}; valid: {', '.join(PROMPT_STYLES)}")
