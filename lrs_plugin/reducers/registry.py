"""The reducer registry: :func:`register_reducer` adds a method under its user-facing name, :func:`build_reducer`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers.base import ARCHS, STAGES, Reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone

__all__ = [
    "ReducerSpec",
    "register_reducer",
    "available_reducers",
    "question_independent_reducers",
    "reducer_spec",
    "build_reducer",
]


@dataclass(frozen=True)
class ReducerSpec:
    """A registered reducer: its name, stage, supported architectures and ``factory(backbone, **options)``.

    ``question_independent`` is the factory's own ``question_independent`` attribute (``False`` when it has none):
    the reducer's vision tokens depend on the image and its settings only, so the questions on one image can share
    the KV cache of the prompt up to the last image token (:class:`~lrs_plugin.reducers._stock.PreLLMReducer`).
    ``reusable``: the factory offers ``set_reuse(enabled)``, which turns on whatever the reducer can share across the
    questions on one image (that prefix; C2F: its thumbnail and base-level features).
    """

    name: str
    stage: str
    factory: Callable[..., Reducer]
    archs: tuple[str, ...] = ARCHS
    question_independent: bool = False
    reusable: bool = False


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
        independent = getattr(factory, "question_independent", False) is True
        reusable = callable(getattr(factory, "set_reuse", None))
        if independent and not reusable:
            raise ConfigError(f"reducer {name!r} declares question_independent but has no set_reuse(enabled)")
        _REGISTRY[name] = ReducerSpec(
            name=name,
            stage=stage,
            factory=factory,
            archs=tuple(archs),
            question_independent=independent,
            reusable=reusable,
        )
        return factory

    return decorator


def _load_builtins() -> None:
    from lrs_plugin.reducers import (  # noqa: F401  (registration side effect)
        anyres,
        blind,
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


def question_independent_reducers() -> list[str]:
    """Sorted names of the registered reducers whose vision tokens never depend on the question."""
    return [name for name in available_reducers() if _REGISTRY[name].question_independent]


def build_reducer(
    name: str, backbone: Backbone, options: Mapping[str, Any] | None = None, *, reuse: bool = False
) -> Reducer:
    """Build the reducer ``name`` on ``backbone`` with its ``options`` (validated by the reducer's config).

    Args:
        name: A registered name.
        backbone: The loaded backbone.
        options: The reducer's options.
        reuse: Let the questions on one image share what does not depend on the question (``set_reuse``): the KV
            cache of the prompt up to the last image token for the ``question_independent`` reducers
            (:mod:`lrs_plugin.backbone.prefix_cache`), C2F's thumbnail and base-level features
            (:mod:`lrs_plugin.c2f.features`); it never changes which tokens a reducer sends.

    Raises:
        ConfigError: unknown name, bad options, a backbone architecture the reducer is not defined for, or a
            ``reuse`` that is not a bool.
    """
    if not isinstance(reuse, bool):
        raise ConfigError(f"reuse must be true or false; got {reuse!r}")
    spec = reducer_spec(name)
    if backbone.arch not in spec.archs:
        raise ConfigError(
            f"reducer {name!r} needs a backbone of architecture {' or '.join(spec.archs)}; "
            f"this checkpoint is {backbone.arch!r}"
        )
    reducer = spec.factory(backbone, **dict(options or {}))
    if reuse and spec.reusable:
        reducer.set_reuse(True)  # type: ignore[attr-defined]  (checked at registration)
    return reducer
