"""The ``max_tiles`` / ``pinpoints`` options every stock-layout reducer accepts (the paper's ``anyres-pN`` base).

The C2F paper compares reducers *on top of* an anyres limit ("anyres-p144 w/ FastV", "anyres-p25 w/ VisionZip"),
so ``random``, ``downsample``, ``fastv``, ``pdrop``, ``visionzip``, ``prumerge`` and ``anyres`` itself take the same
two options: ``max_tiles=N`` (grid tiles allowed, base image not counted; LLaVA-NeXT only) and
``pinpoints=square|checkpoint`` (see :func:`lrs_plugin.backbone.anyres.anyres_pinpoints`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.backbone.anyres import PINPOINT_MODES, anyres_pinpoints
from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone

__all__ = ["TILE_OPTIONS", "TileLimit", "is_finite_number", "option_int", "take_options"]

TILE_OPTIONS = ("max_tiles", "pinpoints")


def is_finite_number(value: object) -> bool:
    """Whether a config value is a finite ``int`` or ``float`` (not a bool): the reducers' configs check numbers so."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def option_int(value: object, name: str, reducer: str, *, allow_none: bool = False) -> int | None:
    """An integer option as ``--model_args`` hands it over: ``4``, ``4.0`` or ``"4"``.

    ``None`` / ``"None"`` / ``""`` give ``None`` when ``allow_none``; range checks are left to the reducer's config.

    Raises:
        ConfigError: anything else, e.g. ``"abc"``, ``4.5`` (never truncated), ``True``.
    """
    if allow_none and (value is None or value in ("None", "none", "")):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{reducer}: {name} must be an integer; got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{reducer}: {name} must be an integer{' or None' if allow_none else ''}; got {value!r}")


def _parse_max_tiles(value: object, reducer: str) -> int | None:
    """``max_tiles`` as given: ``None`` / ``"None"`` / ``""`` or an integer (range checked by :class:`TileLimit`)."""
    try:
        return option_int(value, "max_tiles", reducer, allow_none=True)
    except ConfigError:
        raise ConfigError(f"{reducer}: max_tiles must be an int >= 1 or None; got {value!r}") from None


@dataclass(frozen=True)
class TileLimit:
    """An anyres grid limit.

    Attributes:
        max_tiles: Grid tiles allowed (the base image is not counted); ``None`` keeps the checkpoint's grids.
        pinpoints: ``"square"`` (every grid up to ``k x k`` with ``max_tiles = k*k``, the paper's ``pN``) or
            ``"checkpoint"`` (the checkpoint's own grids with at most ``max_tiles`` tiles).
        reducer: Name used in error messages.
    """

    max_tiles: int | None = None
    pinpoints: str = "square"
    reducer: str = "reducer"

    def __post_init__(self) -> None:
        if self.max_tiles is not None and (
            isinstance(self.max_tiles, bool) or not isinstance(self.max_tiles, int) or self.max_tiles < 1
        ):
            raise ConfigError(f"{self.reducer}: max_tiles must be an int >= 1 or None; got {self.max_tiles!r}")
        if self.pinpoints not in PINPOINT_MODES:
            raise ConfigError(
                f"{self.reducer}: pinpoints={self.pinpoints!r} is not valid; valid: {', '.join(PINPOINT_MODES)}"
            )

    @classmethod
    def pop_from(cls, options: dict[str, Any], reducer: str) -> TileLimit:
        """Take ``max_tiles`` / ``pinpoints`` out of a reducer's options (the rest stays for its own config)."""
        max_tiles = _parse_max_tiles(options.pop("max_tiles", None), reducer)
        pinpoints = str(options.pop("pinpoints", "square")).strip()
        return cls(max_tiles=max_tiles, pinpoints=pinpoints, reducer=reducer)

    def grid_pinpoints(self, backbone: Backbone) -> list[list[int]] | None:
        """The pinpoints to encode with, or ``None`` for the checkpoint's own.

        Raises:
            ConfigError: ``max_tiles`` on a LLaVA-1.5 checkpoint (no anyres grid), or a bad ``max_tiles`` for the mode.
        """
        if self.max_tiles is None:
            return None
        if backbone.arch != "llava_next":
            raise ConfigError(
                f"{self.reducer}: max_tiles needs a llava_next (LLaVA-NeXT) checkpoint; this one is {backbone.arch!r}"
            )
        return anyres_pinpoints(
            self.max_tiles, backbone.tile_size, mode=self.pinpoints, checkpoint=backbone.config.image_grid_pinpoints
        )


def take_options(options: Mapping[str, Any], reducer: str, known: Iterable[str]) -> tuple[TileLimit, dict[str, Any]]:
    """Split a reducer's options into its :class:`TileLimit` and its own knobs (a new dict; ``options`` untouched).

    Raises:
        ConfigError: an option that is neither a tile option nor in ``known`` (the valid names are listed).
    """
    rest = dict(options)
    tiles = TileLimit.pop_from(rest, reducer)
    unknown = sorted(set(rest) - set(known))
    if unknown:
        raise ConfigError(
            f"reducer {reducer!r} got unknown options {unknown}; valid: {sorted([*known, *TILE_OPTIONS])}"
        )
    return tiles, rest
