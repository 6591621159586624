"""Doc -> pixels: one reader for every method.

:class:`LargeImage` over a file or an in-memory image, its decoders, pixel stores and resampling (one pixel limit,
one 8-bit rule, windows decoded on demand), and torchvision's resize computed strip by strip.
"""

from lrs_plugin._lazy import lazy_exports

_EXPORTS = {
    "MAX_PIXELS": "large_image",
    "RAM_LIMIT_PIXELS": "large_image",
    "BACKENDS": "large_image",
    "RESAMPLE_MODES": "large_image",
    "pillow_pixel_limit": "large_image",
    "open_lazy": "large_image",
    "open_image": "large_image",
    "file_of": "large_image",
    "image_size": "large_image",
    "check_pixel_limit": "large_image",
    "LargeImage": "large_image",
    "ImageCache": "large_image",
    "streamed_resize": "_stream_resize",
    "streamed_pil_resize": "_stream_resize",
    "streams_exactly": "_stream_resize",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
