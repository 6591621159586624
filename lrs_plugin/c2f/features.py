"""Per-image reuse of C2F's tile features across the questions on one image.

C2F encodes, for every question, the thumbnail and every tile of the pyramid's base level before the question is
used at all (scoring starts after). Both depend on the image and the reducer's settings only, so the questions on
one image can share them: :class:`ImageFeatures` keeps those of the last image (keyed by
:attr:`LargeImage.key <lrs_plugin.imagery.LargeImage.key>`; one image at a time, questions come grouped by image),
and :func:`~lrs_plugin.c2f.driver.run_c2f` takes them instead of rendering and encoding again. Which zoomed tiles a
question needs depends on its focus scores; the features of a zoomed level's tiles are kept too, in a
least-recently-used store bounded in bytes (``zoom_cache_bytes``) and keyed by the level and the tiles encoded together
(``(level, ((row, col), ...))``), so a question that zooms into the same tiles as an earlier question on the image
(a second question about the same object) takes their features from there.

Why the tiles encoded together and not each tile: the vision tower's kernels may sum in another order for another batch
size, so a tile encoded beside other tiles can differ in its last bits from the same tile encoded in another batch
(measured: up to 1.2e-4 on a tiny CLIP tower on the CPU), and reuse must never change an answer. Every reused tensor is
one that an identical computation produced, so answers are identical bit for bit. The record keeps counting every
tile a question used in ``tiles_encoded`` (the paper's FLOPs convention) and says how many of them were reused in
``tiles_reused``; ``tflops_computed`` prices what was computed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError

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


#: Default bound of the zoomed-tile store: 64 MiB (at LLaVA-NeXT-7B's widths a pooled tile is 144 x 4096 float16
#: values, 1.2 MB: about 55 tiles).
ZOOM_CACHE_BYTES = 64 * 2**20


class ImageFeatures:
    """The :class:`BaseFeatures` and zoomed-tile features of the last image, for the next question on it.

    Args:
        zoom_cache_bytes: Bound of the zoomed-tile store (least recently used tiles dropped first); 0 keeps none.

    Raises:
        ConfigError: ``zoom_cache_bytes`` is not an int ``>= 0``.
    """

    def __init__(self, zoom_cache_bytes: int = ZOOM_CACHE_BYTES) -> None:
        if isinstance(zoom_cache_bytes, bool) or not isinstance(zoom_cache_bytes, int) or zoom_cache_bytes < 0:
            raise ConfigError(f"zoom_cache_bytes must be an int >= 0; got {zoom_cache_bytes!r}")
        self.zoom_cache_bytes = zoom_cache_bytes
        self._key: Any = None
        self._value: BaseFeatures | None = None
        self._tiles: OrderedDict[tuple[int, tuple[tuple[int, int], ...]], torch.Tensor] = OrderedDict()
        self._tile_bytes = 0

    def get(self, key: Any) -> BaseFeatures | None:
        """The features kept for the image ``key``, or ``None`` (another image, or none kept)."""
        return self._value if self._value is not None and self._key == key else None

    def put(self, key: Any, value: BaseFeatures) -> None:
        """Keep ``value`` as the features of image ``key`` (the previous image's, and its zoomed tiles, released)."""
        if key != self._key:
            self._drop_tiles()
        self._key, self._value = key, value

    def zoomed(self, key: Any, level: int, tiles: Sequence[tuple[int, int]]) -> torch.Tensor | None:
        """The kept features ``[n, t, C]`` of ``tiles`` of ``level`` of image ``key`` encoded together, or ``None``."""
        entry = (int(level), tuple((int(r), int(c)) for r, c in tiles))
        if key != self._key or entry not in self._tiles:
            return None
        self._tiles.move_to_end(entry)
        return self._tiles[entry]

    def keep_zoomed(self, key: Any, level: int, tiles: Sequence[tuple[int, int]], feats: torch.Tensor) -> None:
        """Keep the features ``[n, t, C]`` of ``tiles`` of ``level`` encoded together (only for the kept image)."""
        entry = (int(level), tuple((int(r), int(c)) for r, c in tiles))
        size = feats.element_size() * feats.numel()
        if key != self._key or size > self.zoom_cache_bytes or entry in self._tiles:
            return
        self._tiles[entry] = feats
        self._tile_bytes += size
        while self._tile_bytes > self.zoom_cache_bytes:
            _, dropped = self._tiles.popitem(last=False)
            self._tile_bytes -= dropped.element_size() * dropped.numel()

    @property
    def zoomed_tiles(self) -> int:
        """How many zoomed tiles are kept (over every kept level and batch)."""
        return sum(len(tiles) for _, tiles in self._tiles)

    def _drop_tiles(self) -> None:
        self._tiles.clear()
        self._tile_bytes = 0

    def clear(self) -> None:
        """Forget the kept features."""
        self._key, self._value = None, None
        self._drop_tiles()
