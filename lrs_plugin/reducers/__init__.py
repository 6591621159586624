"""Token reducers: every method the harness compares, behind one registry and one interface.

A reducer turns ``(image, question)`` into an answer plus the per-sample accounting the tasks report. All reducers
run on the same :class:`~lrs_plugin.backbone.Backbone`, prompt, greedy decoding and image reader, so their results
are comparable. Each declares its *stage*:

* ``pre_llm``: shortens the vision sequence before the LLM (``none`` keeps it whole);
* ``pyramid``: chooses which image regions are encoded at all, then prunes (``c2f``);
* ``in_llm``: drops tokens between decoder layers during prefill.

Register one with :func:`register_reducer`; build one with :func:`build_reducer` (the key is what users type in
``--model_args reducer=NAME``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    from lrs_plugin.backbone import Backbone

__all__ = [
    "STAGES",
    "ReducerOutput",
    "Reducer",
    "ReducerSpec",
    "register_reducer",
    "available_reducers",
    "reducer_spec",
    "build_reducer",
]

STAGES = ("pre_llm", "pyramid", "in_llm")


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
        image_path: str,
        question: str,
        *,
        doc: Mapping[str, Any],
        max_new_tokens: int,
        stop_strings: list[str] | None = None,
    ) -> ReducerOutput:
        """Answer one question about the image at ``image_path``."""
        ...

    def close(self) -> None:
        """Release cached images and scratch files."""
        ...


@dataclass(frozen=True)
class ReducerSpec:
    """A registered reducer: its name, stage and factory ``factory(backbone, **options) -> Reducer``."""

    name: str
    stage: str
    factory: Callable[..., Reducer]


_REGISTRY: dict[str, ReducerSpec] = {}


def register_reducer(name: str, *, stage: str) -> Callable[[Callable[..., Reducer]], Callable[..., Reducer]]:
    """Class / factory decorator adding a reducer to the registry.

    Raises:
        ConfigError: the name is taken or the stage is unknown.
    """
    if stage not in STAGES:
        raise ConfigError(f"reducer {name!r}: unknown stage {stage!r}; valid: {', '.join(STAGES)}")

    def decorator(factory: Callable[..., Reducer]) -> Callable[..., Reducer]:
        if name in _REGISTRY:
            raise ConfigError(f"reducer name {name!r} is already registered by {_REGISTRY[name].factory!r}")
        _REGISTRY[name] = ReducerSpec(name=name, stage=stage, factory=factory)
        return factory

    return decorator


def _load_builtins() -> None:
    from lrs_plugin.reducers import c2f, downsample, fastv, none, pdrop, random  # noqa: F401  (registration side effect)


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
    """Build the reducer ``name`` on ``backbone`` with its ``options`` (validated by the reducer's config)."""
    return reducer_spec(name).factory(backbone, **dict(options or {}))
