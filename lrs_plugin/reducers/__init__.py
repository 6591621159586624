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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    from lrs_plugin.backbone import Backbone
    from lrs_plugin.imagery import LargeImage

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
    "ReducerSpec",
    "register_reducer",
    "available_reducers",
    "reducer_spec",
    "build_reducer",
]

STAGES = ("pre_llm", "pyramid", "in_llm")
ARCHS = ("llava", "llava_next")
"""Backbone architectures (``config.model_type``) a reducer may declare it supports."""


@dataclass
class ReducerOutput:
    """The answer to one question and its accounting.

    Attributes:
        text: The decoded answer (stripped).
        stats: ``vision_tokens_encoded``, ``vision_tokens_to_llm``, ``llm_input_len``, ``new_tokens``,
            ``tiles_encoded``, ``focus_passes`` (list of ``{"seq_len", "decoder_layers"}``) and method-specific
            entries (e.g. C2F's per-level statistics).
    """

    text: str
    stats: dict[str, Any] = field(default_factory=dict)


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
        stop_strings: list[str] | None = None,
    ) -> ReducerOutput:
        """Answer one question about ``image`` (a :class:`~lrs_plugin.imagery.LargeImage`, or a path)."""
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
    from lrs_plugin.imagery import LargeImage, open_image

    if isinstance(image, LargeImage):
        yield image
        return
    if not isinstance(image, (str, os.PathLike)):
        from lrs_plugin.errors import ImageReadError

        raise ImageReadError(f"a reducer takes a LargeImage or an image path; got {type(image).__name__}")
    with open_image(image) as opened:
        yield opened


@dataclass(frozen=True)
class ReducerSpec:
    """A registered reducer: its name, stage, supported architectures and ``factory(backbone, **options)``."""

    name: str
    stage: str
    factory: Callable[..., Reducer]
    archs: tuple[str, ...] = ARCHS


_REGISTRY: dict[str, ReducerSpec] = {}


def register_reducer(
    name: str, *, stage: str, archs: tuple[str, ...] = ARCHS
) -> Callable[[Callable[..., Reducer]], Callable[..., Reducer]]:
    """Class / factory decorator adding a reducer to the registry.

    Args:
        name: What users type in ``--model_args reducer=NAME``.
        stage: One of :data:`STAGES`.
        archs: Backbone architectures the method is defined for (e.g. anyres tile limits need LLaVA-NeXT);
            :func:`build_reducer` refuses the others.

    Raises:
        ConfigError: the name is taken, or the stage or an architecture is unknown.
    """
    if stage not in STAGES:
        raise ConfigError(f"reducer {name!r}: unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    bad = [a for a in archs if a not in ARCHS]
    if not archs or bad:
        raise ConfigError(f"reducer {name!r}: architectures {list(archs)!r} invalid; valid: {', '.join(ARCHS)}")

    def decorator(factory: Callable[..., Reducer]) -> Callable[..., Reducer]:
        if name in _REGISTRY:
            raise ConfigError(f"reducer name {name!r} is already registered by {_REGISTRY[name].factory!r}")
        _REGISTRY[name] = ReducerSpec(name=name, stage=stage, factory=factory, archs=tuple(archs))
        return factory

    return decorator


def _load_builtins() -> None:
    from lrs_plugin.reducers import (  # noqa: F401  (registration side effect)
        anyres,
        c2f,
        downsample,
        fastv,
        none,
        pdrop,
        prumerge,
        random,
        visionzip,
    )


def available_reducers() -> list[str]:
    """Sorted names of the registered reducers."""
    _load_builtins()
    return sorted(_REGISTRY)


def reducer_spec(name: str) -> ReducerSpec:
    """The registry entry of ``name``.

    Raises:
        ConfigError: unknown name (the registered ones are listed).
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown reducer {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_reducer(name: str, backbone: Backbone, options: Mapping[str, Any] | None = None) -> Reducer:
    """Build the reducer ``name`` on ``backbone`` with its ``options`` (validated by the reducer's config).

    Raises:
        ConfigError: unknown name, bad options, or a backbone architecture the reducer is not defined for.
    """
    spec = reducer_spec(name)
    if backbone.arch not in spec.archs:
        raise ConfigError(
            f"reducer {name!r} needs a backbone of architecture {' or '.join(spec.archs)}; "
            f"this checkpoint is {backbone.arch!r}"
        )
    return spec.factory(backbone, **dict(options or {}))
