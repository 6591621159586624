"""Token reducers: every method the harness compares, behind one registry and one interface.

A reducer turns ``(image, question)`` into an answer plus the per-sample accounting the tasks report. All reducers
run on the same :class:`~lrs_plugin.backbone.Backbone`, prompt, greedy decoding and image reader, so their results
are comparable: the image always arrives as one :class:`~lrs_plugin.imagery.LargeImage` (over a file or over an
in-memory image), and every method reads its pixels through it, with the same decoders, pixel limit and 8-bit rule.
Every built-in reducer takes exactly one image per question (the model records a request with several images as a
failure). Each declares its *stage*:

* ``pre_llm``: shortens the vision sequence before the LLM (``none`` keeps it whole);
* ``pyramid``: chooses which image regions are encoded at all, then prunes (``c2f``);
* ``in_llm``: drops tokens between decoder layers during prefill.

Register one with :func:`register_reducer`; build one with :func:`build_reducer` (the key is what users type in
``--model_args reducer=NAME``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union

from lrs_plugin.backbone.adapter import SUPPORTED_ARCHS
from lrs_plugin.harness.record import SampleRecord

if TYPE_CHECKING:
    from lrs_plugin.harness.costs import StageClock
    from lrs_plugin.imagery.large_image import LargeImage

#: What :meth:`Reducer.answer` accepts: the model always passes a :class:`~lrs_plugin.imagery.LargeImage`; a path is
#: accepted for scripts and tests (opened for the call through the same reader, closed after it).
ImageInput = Union["LargeImage", str, os.PathLike]

__all__ = [
    "ARCHS",
    "STAGES",
    "ImageInput",
    "ReducerOutput",
    "Reducer",
    "borrow_image",
]

STAGES = ("pre_llm", "pyramid", "in_llm")
ARCHS = SUPPORTED_ARCHS
"""Backbone architectures (``config.model_type``) a reducer may declare it supports: the adapter's."""


@dataclass
class ReducerOutput:
    """The answer to one question and its accounting.

    Attributes:
        text: The decoded answer, cut before the first stop string and stripped.
        record: Its :class:`~lrs_plugin.harness.record.SampleRecord`: every reducer fills ``tiles_encoded``,
            ``vision_tokens_encoded``, ``vision_tokens_to_llm``, ``llm_input_len``, ``new_tokens`` and
            ``focus_passes``, plus its method's own fields (e.g. C2F's levels, FastV's schedule, the focus recall).
    """

    text: str
    record: SampleRecord = field(default_factory=SampleRecord)


class Reducer(Protocol):
    """What the model class calls for every question."""

    name: str
    stage: str

    def answer(
        self,
        image: ImageInput,
        question: str,
        *,
        doc: Mapping[str, Any],
        max_new_tokens: int,
        stop_strings: Sequence[str] | None = None,
        clock: StageClock | None = None,
    ) -> ReducerOutput:
        """Answer one question about ``image`` (a :class:`~lrs_plugin.imagery.LargeImage`, or a path).

        Generation ends at the first of ``stop_strings`` (the task's ``until``) or after ``max_new_tokens``; the text
        is cut before the stop string (:mod:`lrs_plugin.backbone.stops`). ``clock`` (the model's, one per question)
        times the stages (:mod:`lrs_plugin.harness.costs`): a reducer passes it to what it calls (``PlainVision.get``,
        :meth:`Backbone.generate <lrs_plugin.backbone.Backbone.generate>`) and wraps its own selection in
        ``clock.stage("focus")``.
        """
        ...

    def close(self) -> None:
        """Release what the reducer keeps per image (vision tokens, scratch files)."""
        ...


@contextlib.contextmanager
def borrow_image(image: ImageInput) -> Iterator[LargeImage]:
    """The image a reducer reads: ``image`` itself, or the file at a path opened for the block.

    A :class:`~lrs_plugin.imagery.LargeImage` is yielded as it is (its caller owns it); a path is opened through
    :func:`~lrs_plugin.imagery.open_image` and closed when the block ends.

    Raises:
        ImageReadError: ``image`` is neither a ``LargeImage`` nor a readable image path.
    """
    from lrs_plugin.imagery.large_image import LargeImage, open_image

    if isinstance(image, LargeImage):
        yield image
        return
    if not isinstance(image, (str, os.PathLike)):
        from lrs_plugin.errors import ImageReadError

        raise ImageReadError(f"a reducer takes a LargeImage or an image path; got {type(image).__name__}")
    with open_image(image) as opened:
        yield opened
