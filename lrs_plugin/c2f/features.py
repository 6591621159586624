"""Per-image reuse of C2F's question-independent features: the thumbnail tokens and the base-level grid.

C2F encodes, for every question, the thumbnail and every tile of the pyramid's base level before the question is
used at all (scoring starts after). Both depend on the image and the reducer's settings only, so the questions on
one image can share them: :class:`ImageFeatures` keeps those of the last image (keyed by
:attr:`LargeImage.key <lrs_plugin.imagery.LargeImage.key>`; one image at a time, questions come grouped by image),
and :func:`~lrs_plugin.c2f.driver.run_c2f` takes them instead of rendering and encoding again. The zoomed tiles
depend on the question's focus scores and are encoded per question.

The reused tensors are the ones the first question computed (same batch of tiles, same kernels), so answers are
identical bit for bit. The record keeps counting every tile a question used in ``tiles_encoded`` (the paper's FLOPs
convention) and says how many of them were reused in ``tiles_reused``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["BaseFeatures", "ImageFeatures"]


@dataclass(frozen=True)
class BaseFeatures:
    """What C2F computes for an image before it reads the question.

    Attributes:
        thumbnail: ``[T, C]`` projected thumbnail tokens (unpooled), or ``None`` when the thumbnail is off.
        base_grid: The base level's grid (flattened tokens ``[N, C]``, validity mask, shape, newlines, tiles), never
            changed by its users.
        tiles: Tiles the vision tower encoded for them (thumbnail + base-level tiles).
    """

    thumbnail: torch.Tensor | None
    base_grid: Any
    tiles: int


class ImageFeatures:
    """The :class:`BaseFeatures` of the last image, for the next question on the same image."""

    def __init__(self) -> None:
        self._key: Any = None
        self._value: BaseFeatures | None = None

    def get(self, key: Any) -> BaseFeatures | None:
        """The features kept for the image ``key``, or ``None`` (another image, or none kept)."""
        return self._value if self._value is not None and self._key == key else None

    def put(self, key: Any, value: BaseFeatures) -> None:
        """Keep ``value`` as the features of image ``key`` (the previous image's are released)."""
        self._key, self._value = key, value

    def clear(self) -> None:
        """Forget the kept features."""
        self._key, self._value = None, None
