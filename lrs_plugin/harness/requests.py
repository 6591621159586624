"""One lmms-eval request as ``c2f_llava`` reads it, and the device of this process.

Pure helpers of :class:`lrs_plugin.models.c2f_llava.C2FLlava`: the request's one image (an image file from the
model's cache, or an in-memory image opened for that request), its ``image_path`` (to answer the questions on one
file in a row without decoding images), its stop strings, and the device of this rank under ``accelerate launch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from loguru import logger

from lrs_plugin.backbone.stops import stop_strings_of

if TYPE_CHECKING:
    from lrs_plugin.imagery.large_image import ImageCache, LargeImage

__all__ = ["rank_device", "request_image", "request_image_path", "request_stop_strings"]


def rank_device(accelerator: Any, requested: str | None) -> str:
    """The device of this process, as a string torch and the collectives accept.

    The requested one (a bare ``cuda`` becomes the rank's GPU when several processes run), else the rank's CUDA device
    when accelerate uses CUDA, else the CPU (also with ``ACCELERATE_USE_CPU=true`` on a GPU machine: gloo).
    """
    if requested:
        if requested == "cuda" and accelerator.num_processes > 1:
            return f"cuda:{accelerator.local_process_index}"
        return requested
    if accelerator.device.type == "cuda":
        return f"cuda:{accelerator.local_process_index}"
    return "cpu"


def request_image(
    visuals: Any, doc: Mapping[str, Any], images: ImageCache, reducer: str
) -> tuple[LargeImage | None, bool]:
    """The request's one image (``None`` for a text-only request) and whether the caller must close it.

    An in-memory image is the caller's, to close after the request; an image file belongs to the model's cache.
    ``visuals`` is what the task's ``doc_to_visual(doc)`` returned: a PIL image (eager or lazy), a path, an
    array, or a list of one of them. An empty list falls back to the document's ``image_path`` (so a missing file
    is recorded as such) or its ``image_error``. Image files are kept open in the model's cache (questions come
    grouped by image); in-memory images are opened for this request only.

    Args:
        visuals: What ``doc_to_visual(doc)`` returned.
        doc: The request's document.
        images: The model's cache of open image files.
        reducer: The reducer's name (named when a request holds several images).

    Raises:
        MultipleImagesError: more than one image (no registered reducer takes several).
        ImageReadError: the image cannot be read (names the file and the reason).
    """
    from lrs_plugin.errors import ImageReadError, MultipleImagesError
    from lrs_plugin.imagery.large_image import file_of, open_image

    items = list(visuals) if isinstance(visuals, (list, tuple)) else ([] if visuals is None else [visuals])
    if len(items) > 1:
        raise MultipleImagesError(
            f"the request holds {len(items)} images; reducer {reducer!r} (like every registered "
            "reducer) answers about exactly one image"
        )
    if not items:
        if doc.get("image_error"):
            raise ImageReadError(str(doc["image_error"]))
        if not doc.get("image_path"):
            return None, False
        items = [doc["image_path"]]
    path = file_of(items[0])
    if path is not None:  # one decode serves every question on the file
        return images.get(path), False
    return open_image(items[0]), True


def request_image_path(task_dict: Any, request: Any, columns: dict[tuple[str, str], list[Any] | None]) -> str:
    """The request's ``doc["image_path"]`` ("" when none), to answer the questions on one file in a row.

    From a ``datasets`` split only that column is read, once per split (``columns`` caches it): indexing a row
    would decode its images. Other containers (lists of documents) are indexed directly.
    """
    _context, _gen, _visual, doc_id, task, split = request.args
    try:
        docs = task_dict[task][split]
        names = getattr(docs, "column_names", None)
        if names is None:  # not a datasets split
            return str(docs[doc_id].get("image_path") or "")
        if (task, split) not in columns:
            columns[(task, split)] = list(docs["image_path"]) if "image_path" in names else None
        column = columns[(task, split)]
        return str(column[doc_id] or "") if column is not None else ""
    except Exception:  # noqa: BLE001 - reported when the request is answered
        return ""


def request_stop_strings(gen_kwargs: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """The request's stop strings (its ``until``); a malformed ``until`` is logged and none are used."""
    try:
        return stop_strings_of(gen_kwargs.get("until"))
    except Exception as exc:  # noqa: BLE001 - a task bug: keep the whole answer, as a run without until would
        logger.error("c2f_llava: {}: cannot use until={!r}: {}", name, gen_kwargs.get("until"), exc)
        return ()
