"""``downsample``: shrink the image to at most ``max_pixels`` pixels, then run the stock model (baselines.md §7)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers import ReducerOutput, register_reducer
from lrs_plugin.reducers.none import _num_tiles

if TYPE_CHECKING:
    from PIL import Image

    from lrs_plugin.backbone import Backbone

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
class DownsampleReducer:
    """Resize (bicubic) to at most ``max_pixels`` before the processor; every resulting vision token is kept."""

    name = "downsample"
    stage = "pre_llm"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        known = {"max_pixels"}
        if set(options) - known:
            raise ConfigError(
                f"reducer 'downsample' got unknown options {sorted(set(options) - known)}; valid: {sorted(known)}"
            )
        mp = options.get("max_pixels")
        self.config = DownsampleConfig(max_pixels=None if mp in (None, "None", "") else int(mp))
        self.backbone = backbone
        self._last: tuple[str, Any, int] | None = None

    def _vision(self, image_path: str) -> tuple[Any, int]:
        if self._last is None or self._last[0] != image_path:
            from PIL import Image as PILImage

            from lrs_plugin.imagery import open_lazy

            self._last = None
            with open_lazy(image_path) as lazy:
                image: Image.Image = lazy.convert("RGB")
            size = downsampled_size(*image.size, self.config.max_pixels)
            if size != image.size:
                image = image.resize(size, PILImage.Resampling.BICUBIC)
            self._last = (image_path, self.backbone.plain_vision_embeds(image), _num_tiles(self.backbone, image.size))
        return self._last[1], self._last[2]

    def answer(
        self,
        image_path: str,
        question: str,
        *,
        doc: Mapping[str, Any],
        max_new_tokens: int,
        stop_strings: list[str] | None = None,
    ) -> ReducerOutput:
        """Answer with the stock model on the downsampled image."""
        vision, tiles = self._vision(image_path)
        prefix, suffix = self.backbone.split_prompt(question)
        embeds, _ = self.backbone.assemble(prefix, vision, suffix)
        out = self.backbone.generate(embeds, max_new_tokens=max_new_tokens, stop_strings=stop_strings)
        stats = {
            "tiles_encoded": tiles,
            "vision_tokens_encoded": tiles * self.backbone.tokens_per_tile,
            "vision_tokens_to_llm": int(vision.shape[0]),
            "llm_input_len": int(embeds.shape[1]),
            "new_tokens": out.num_new_tokens,
            "focus_passes": [],
        }
        return ReducerOutput(text=out.text, stats=stats)

    def close(self) -> None:
        """Forget the last image's vision tokens."""
        self._last = None
