"""``downsample``: shrink the image to at most ``max_pixels`` pixels, then run the stock model (baselines.md §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers._stock import PlainVision, PreLLMReducer
from lrs_plugin.reducers._tiles import option_int, take_options
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from PIL import Image

    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.imagery.large_image import LargeImage

__all__ = ["DownsampleConfig", "DownsampleReducer", "downsampled_size"]


@dataclass(frozen=True)
class DownsampleConfig:
    """Knobs of the ``downsample`` reducer."""

    max_pixels: int | None = None  # largest width*height fed to the processor; None keeps the image; >= 1

    def __post_init__(self) -> None:
        if self.max_pixels is not None and int(self.max_pixels) < 1:
            raise ConfigError(f"downsample: max_pixels must be an int >= 1 or None; got {self.max_pixels!r}")


def downsampled_size(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """Largest ``(w, h)`` with the image's aspect ratio and ``w * h <= max_pixels`` (never upscales, sides >= 1)."""
    if max_pixels is None or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    while w * h > max_pixels and (w > 1 or h > 1):  # floor rounding can still overshoot by a row
        w, h = (w - 1, h) if w >= h and w > 1 else (w, h - 1)
    return w, h


@register_reducer("downsample", stage="pre_llm")
class DownsampleReducer(PreLLMReducer):
    """Resize (bicubic) to at most ``max_pixels`` before the processor; every resulting vision token is kept."""

    name = "downsample"
    stage = "pre_llm"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        tiles, options = take_options(options, "downsample", ("max_pixels",))
        mp = options.get("max_pixels")
        self.config = DownsampleConfig(max_pixels=option_int(mp, "max_pixels", "downsample", allow_none=True))
        self.backbone = backbone
        self.vision = PlainVision(backbone, prepare=self._shrink, grid_pinpoints=tiles.grid_pinpoints(backbone))
        self.max_tiles = tiles.max_tiles

    def _shrink(self, image: LargeImage) -> LargeImage | Image.Image:
        """The image resized (Pillow bicubic) to at most ``max_pixels`` pixels; unchanged when already small enough.

        The resize reads the image in strips (:func:`~lrs_plugin.imagery.streamed_pil_resize`, the same pixels as
        Pillow's resize of the whole image), so only the small result is held whole.
        """
        from lrs_plugin.imagery import streamed_pil_resize

        size = downsampled_size(*image.size, self.config.max_pixels)
        return image if size == image.size else streamed_pil_resize(image, size)
