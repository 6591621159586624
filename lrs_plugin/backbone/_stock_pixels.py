"""The stock image processor's output for a :class:`~lrs_plugin.imagery.LargeImage`, in bounded memory.

transformers' torchvision-backend processors (LLaVA-NeXT's, CLIP's for LLaVA-1.5) take the whole image as one uint8
tensor; the only thing they do to that whole tensor is resize it (LLaVA-NeXT: to the anyres canvas and to the base
tile; CLIP: to the short side). Everything after works on the resized copies. So the stock ``preprocess`` is run
unchanged on a shape-only stand-in of the image (a ``meta`` tensor, no pixels), through a shallow copy of the
processor whose ``resize`` answers a resize of the stand-in with :func:`~lrs_plugin.imagery.streamed_resize` (strips
of source rows, bit-identical to the whole-tensor resize) and hands every other call to the processor's own
``resize``. Peak memory is then the resized copies plus one strip, not three copies of the source.

Where this cannot be exact the whole image is decoded and the processor runs on it as it always did: a processor that
is not a torchvision backend (a PIL backend, a custom one), a resampling the CPU does not do by a separable uint8 kernel
(:func:`~lrs_plugin.imagery._stream_resize.streams_exactly`), small images (:data:`STREAM_ABOVE_PIXELS`), or a
processor that touches the stand-in with anything but ``resize`` (its output would be shape-only, or it fails on the
stand-in: caught and redone on the decoded image).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lrs_plugin.imagery.large_image import LargeImage

__all__ = ["STREAM_ABOVE_PIXELS", "processor_pixels", "streams_for"]

#: Images with more pixels are resized strip-wise; below it the whole image is decoded (a few MB at most).
STREAM_ABOVE_PIXELS = 2**22


class _NotStreamable(Exception):
    """The processor did something to the stand-in other than resize it."""


def _interpolation(resample: Any) -> Any:
    """The torchvision interpolation for a processor's ``resample`` (as the torchvision backend maps it)."""
    from torchvision.transforms import InterpolationMode
    from transformers.image_utils import PILImageResampling, pil_torch_interpolation_mapping

    if resample is None:
        return InterpolationMode.BILINEAR
    if isinstance(resample, (PILImageResampling, int)):
        return pil_torch_interpolation_mapping[resample]
    return resample


def streams_for(image_processor: Any, image: LargeImage, stream_above_pixels: int | None = None) -> bool:
    """Whether :func:`processor_pixels` resizes ``image`` strip-wise with ``image_processor`` (see the module doc).

    ``stream_above_pixels`` defaults to :data:`STREAM_ABOVE_PIXELS`.
    """
    from transformers.image_processing_backends import TorchvisionBackend

    from lrs_plugin.imagery._stream_resize import streams_exactly

    limit = STREAM_ABOVE_PIXELS if stream_above_pixels is None else stream_above_pixels
    width, height = image.size
    if width * height <= limit or not isinstance(image_processor, TorchvisionBackend):
        return False
    return streams_exactly(_interpolation(getattr(image_processor, "resample", None)))


def processor_pixels(image_processor: Any, image: Any, *, stream_above_pixels: int | None = None, **kwargs: Any) -> Any:
    """``image_processor(images=[image], return_tensors="pt", **kwargs)`` for a PIL image or a ``LargeImage``.

    A PIL image goes to the processor as it is. A ``LargeImage`` is resized strip-wise where :func:`streams_for` says
    so (the same tensors, bit for bit), else decoded whole (:meth:`LargeImage.to_pil`) and processed.

    Args:
        image_processor: A transformers image processor.
        image: An RGB PIL image or a :class:`~lrs_plugin.imagery.LargeImage`.
        stream_above_pixels: Pixel count above which a ``LargeImage`` is streamed (0 streams every one); default
            :data:`STREAM_ABOVE_PIXELS`.
        **kwargs: Passed to the processor (e.g. ``image_grid_pinpoints``).

    Returns:
        The processor's ``BatchFeature`` (``pixel_values``, and ``image_sizes`` for LLaVA-NeXT).
    """
    from lrs_plugin.errors import LrsPluginError
    from lrs_plugin.imagery.large_image import LargeImage

    if not isinstance(image, LargeImage):
        return image_processor(images=[image], return_tensors="pt", **kwargs)
    if streams_for(image_processor, image, stream_above_pixels):
        try:
            return _streamed(image_processor, image, **kwargs)
        except (LrsPluginError, MemoryError):  # the image cannot be read: the same error as a whole decode's
            raise
        except Exception:  # noqa: BLE001 - the processor did what a shape-only stand-in cannot answer
            pass
    return image_processor(images=[image.to_pil()], return_tensors="pt", **kwargs)


def _streamed(image_processor: Any, source: LargeImage, **kwargs: Any) -> Any:
    import torch

    from lrs_plugin.imagery._stream_resize import streamed_resize

    width, height = source.size
    stand_in = torch.empty((3, height, width), dtype=torch.uint8, device="meta")
    own_resize = image_processor.resize

    def resize(image: torch.Tensor, size: Any, resample: Any = None, antialias: bool = True, **kw: Any) -> Any:
        if image.device.type != "meta":
            return own_resize(image, size, resample=resample, antialias=antialias, **kw)
        if tuple(image.shape[-3:]) != (3, height, width):
            raise _NotStreamable
        target = own_resize(image, size, resample=resample, antialias=antialias, **kw)  # shapes only
        out = streamed_resize(source, tuple(target.shape[-2:]), _interpolation(resample), antialias=antialias)
        return out.reshape(target.shape)

    proxy = copy.copy(image_processor)
    proxy.resize = resize
    out = proxy(images=[stand_in], return_tensors="pt", **kwargs)
    if any(isinstance(v, torch.Tensor) and v.device.type == "meta" for v in out.values()):
        raise _NotStreamable
    return out
