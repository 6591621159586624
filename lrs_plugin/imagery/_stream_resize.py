"""torchvision's resize of a whole image, computed strip by strip from a :class:`LargeImage` (bounded memory).

The stock image processors (transformers' torchvision backend) turn the whole image into one uint8 tensor and resize
it; on a 27k-px LRS-VQA image that is gigabytes. On the CPU, torchvision resizes uint8 images with PyTorch's native
uint8 kernels (antialiased bicubic, Lanczos, and bilinear where the CPU has AVX2 / AVX-512 or is ARM), which are
separable: a width pass over every row into a uint8 buffer, then a height pass over every column, a pass being skipped
when its side keeps its length. Each row's width pass depends on that row only, so running it on strips of rows and
stacking the strips gives the very buffer the whole-image call builds; the height pass then runs on that buffer
(``H x w`` bytes instead of ``H x W``) by blocks of columns, each column's pass being its own too. The result is
bit-identical to ``tvF.resize`` of the whole tensor where the native uint8 kernel runs (:func:`streams_exactly`);
elsewhere (a float kernel with one rounding at the end) a strip would round early, so callers decode the whole image
instead. Pillow's resize is separable the same way (:func:`streamed_pil_resize`).
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import numpy as np

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from lrs_plugin.imagery.large_image import LargeImage

__all__ = ["streamed_pil_resize", "streamed_resize", "streams_exactly"]

_STRIP_BYTES = 16 * 2**20  # source bytes read per strip (one strip and its CHW copy live at a time)


def _mode(interpolation: Any) -> Any:
    from torchvision.transforms import InterpolationMode

    if isinstance(interpolation, InterpolationMode):
        return interpolation
    try:
        return InterpolationMode(str(interpolation).lower())
    except ValueError:
        valid = ", ".join(m.value for m in InterpolationMode)
        raise ConfigError(f"unknown interpolation {interpolation!r}; choose one of {valid}") from None


def streams_exactly(interpolation: Any) -> bool:
    """Whether torchvision resizes uint8 images with ``interpolation`` by a native separable kernel on this CPU.

    Bicubic and Lanczos always (torchvision sends uint8 to PyTorch's uint8 kernel for both); bilinear where PyTorch's
    CPU capability is AVX2 or AVX-512, or on ARM, as torchvision decides.
    """
    import torch
    from torchvision.transforms import InterpolationMode

    mode = _mode(interpolation)
    if mode in (InterpolationMode.BICUBIC, InterpolationMode.LANCZOS):
        return True
    if mode == InterpolationMode.BILINEAR:
        arm = platform.machine() in ("aarch64", "arm64")
        return arm or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return False


def streamed_resize(
    image: LargeImage,
    size_hw: tuple[int, int],
    interpolation: Any = "bicubic",
    *,
    antialias: bool = True,
    strip_bytes: int = _STRIP_BYTES,
) -> torch.Tensor:
    """``tvF.resize`` of the whole image to ``size_hw``, reading it in strips of rows.

    Args:
        image: The source image (its pixels are read with :meth:`LargeImage.rows`).
        size_hw: ``(h, w)`` of the result, both ``>= 1``.
        interpolation: A torchvision ``InterpolationMode`` or its name; see :func:`streams_exactly`.
        antialias: As for ``tvF.resize``.
        strip_bytes: Source bytes per strip (at least one row).

    Returns:
        uint8 ``[3, h, w]``, on the CPU.

    Raises:
        ConfigError: a size below 1, or an interpolation this CPU does not resize by a separable uint8 kernel (the
            result would not be exact).
    """
    import torch
    from torchvision.transforms.v2 import functional as tvF

    h, w = (int(v) for v in size_hw)
    if h < 1 or w < 1:
        raise ConfigError(f"resize size must be at least 1 x 1; got {tuple(size_hw)}")
    mode = _mode(interpolation)
    if not streams_exactly(mode):
        raise ConfigError(
            f"{mode.value} resizing of uint8 images is not a separable uint8 kernel on this CPU, so a strip-wise "
            "resize would not be exact; decode the whole image instead"
        )
    opts = {"interpolation": mode, "antialias": antialias}
    width, height = image.size
    step = max(1, strip_bytes // (3 * width))
    across = torch.empty((3, height, w), dtype=torch.uint8)  # the width pass of every row: H x w bytes
    for start in range(0, height, step):
        stop = min(height, start + step)
        rows = image.rows(start, stop)  # a read-only view of an in-memory image: copied (one strip) for torch
        strip = torch.from_numpy(rows if rows.flags.writeable else rows.copy()).permute(2, 0, 1).contiguous()
        across[:, start:stop] = strip if w == width else tvF.resize(strip, [stop - start, w], **opts)
        del rows, strip
    if h == height:
        return across
    # The height pass, by blocks of columns (each column's pass is its own): no full-size temporary beside ``across``.
    out = torch.empty((3, h, w), dtype=torch.uint8)
    block = max(1, strip_bytes // (3 * height))
    for start in range(0, w, block):
        stop = min(w, start + block)
        out[:, :, start:stop] = tvF.resize(across[:, :, start:stop].contiguous(), [h, stop - start], **opts)
    return out


def streamed_pil_resize(image: LargeImage, size_wh: tuple[int, int], resample: Any = None) -> Any:
    """Pillow's ``Image.resize`` of the whole image to ``size_wh``, reading it in strips of rows.

    Pillow resizes 8-bit RGB separably too (a horizontal pass into an 8-bit image, skipped when the width is kept, then
    a vertical one), so the strips' horizontal passes stacked and resized vertically give the same pixels, bit for bit.

    Args:
        image: The source image.
        size_wh: ``(w, h)`` of the result (Pillow's order), both ``>= 1``.
        resample: A ``PIL.Image.Resampling`` filter; default bicubic. ``NEAREST`` and ``BOX`` work the same way.

    Returns:
        An RGB ``PIL.Image.Image``.

    Raises:
        ConfigError: a size below 1.
    """
    from PIL import Image

    w, h = (int(v) for v in size_wh)
    if w < 1 or h < 1:
        raise ConfigError(f"resize size must be at least 1 x 1; got {tuple(size_wh)}")
    resample = Image.Resampling.BICUBIC if resample is None else resample
    width, height = image.size
    step = max(1, _STRIP_BYTES // (3 * width))
    across = np.empty((height, w, 3), np.uint8)
    for start in range(0, height, step):
        stop = min(height, start + step)
        strip = Image.fromarray(image.rows(start, stop), "RGB")
        across[start:stop] = np.asarray(strip if w == width else strip.resize((w, stop - start), resample))
    out = Image.fromarray(across, "RGB")
    return out if h == height else out.resize((w, h), resample)
