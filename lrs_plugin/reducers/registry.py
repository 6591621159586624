"""The reducer registry: :func:`register_reducer` adds a method under its user-facing name, :func:`build_reducer`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers.base import ARCHS, STAGES, Reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone

__all__ = ["ReducerSpec", "register_reducer", "available_reducers", "reducer_spec", "build_reducer"]


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
