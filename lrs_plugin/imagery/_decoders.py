"""Decoders behind ``LargeImage``: header probing, the RGB normalisation rules, and the choice of pixel store.

Normalisation to 8-bit RGB (one rule for every decoder, so a file gives the same pixels whichever backend reads it):

* **Bit depth.** 8-bit samples are kept. 16-bit samples keep their high byte, ``v >> 8`` (= ``floor(v / 256)``,
  within 1 DN of ``v * 255 / 65535``; exact for 8-bit data stored as 16-bit, ``v8 * 257``). This is what Pillow
  itself does for 16-bit RGB PNG/TIFF, i.e. what the original ``convert('RGB')`` fed the model, and it is a fixed
  scale: scaling by the image's maximum would need a full pass before the first window could be read and would
  make every tile depend on pixels it does not contain. 1-bit images map 0 -> 0 and 1 -> 255.
* **Bands.** One band (gray) is replicated to R = G = B; two bands (gray + alpha) keep the gray band; three or more
  bands take the first three as R, G, B and drop the rest (alpha, NIR...). Alpha is dropped, not composited, as
  Pillow's ``convert('RGB')`` does.
* **Palette** images take their palette colours (transparency ignored). Other colour spaces (CMYK, YCbCr, LAB...)
  are converted by Pillow's ``convert('RGB')``.
* **Floating point** samples (float16/32/64, e.g. reflectance) map ``round(clip(v, 0, 1) * 255)``, NaN -> 0: a fixed
  scale for the same reason as 16-bit.
* Signed integers, 32/64-bit unsigned integers and anything else are refused with
  :class:`~lrs_plugin.errors.ImageReadError` naming the sample type.

The rule is :func:`to_rgb8` (arrays) and :func:`pil_to_rgb8` (Pillow images, mode by mode onto :func:`to_rgb8`), and
it is applied to every source: files through any decoder, in-memory PIL images and numpy arrays, so a method that
runs the stock processor on the whole image and C2F reading windows see the same pixels. JPEG and every format other
than PNG and TIFF are decoded by Pillow, the library lmms-eval's own models read with.

Stores (see :mod:`lrs_plugin.imagery._pixel_sources`), chosen by ``backend``:

* ``"auto"``: an uncompressed, striped 8-bit gray/RGB(A) TIFF is read in place (no decode). Otherwise an image of at
  most ``ram_limit_pixels`` is decoded into RAM (TIFF: tifffile, with imagecodecs' compiled codecs when installed
  (the ``images`` extra; Python's zlib is 2.4x slower on a deflate TIFF), falling back to Pillow for layouts it cannot
  decode; other formats: pyvips when installed, else Pillow); a larger one is streamed once by pyvips into an
  uncompressed row-major scratch file (under 100 MB of RSS whatever the size), or, without pyvips, decoded into RAM by
  tifffile/Pillow: about 7 bytes per pixel at peak while Pillow decodes (its 4-byte RGB buffer plus our copy), 3 bytes
  per pixel afterwards (5.2 GB and 2.2 GB for 27,328^2).
* ``"memory"``: always decode into RAM with the pure-Python stack (tifffile for plain TIFFs, else Pillow).
* ``"scratch"``: always stream through pyvips into a scratch file (needs ``pip install "pyvips[binary]"``).

Errors: a truncated TIFF is caught from its header (a strip or tile ends past the end of the file), a truncated PNG
by the decoder. libvips reports corrupt (not truncated) data in PNGs and striped TIFFs, but only warns on stderr for
a corrupt tile of a tiled TIFF, which is why TIFFs that fit in RAM are decoded by tifffile, which raises.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lrs_plugin.errors import ImageReadError, LrsPluginError, MissingDependencyError
from lrs_plugin.imagery._pixel_sources import ArraySource, RawFileSource

__all__ = [
    "BACKENDS",
    "RAM_LIMIT_PIXELS",
    "SUPPORTED_SAMPLES",
    "is_png",
    "is_tiff",
    "tiff_size",
    "import_pyvips",
    "open_pixels",
    "pil_to_rgb8",
    "to_rgb8",
]

BACKENDS = ("auto", "memory", "scratch")

#: Images up to this many pixels are decoded into RAM (60 Mpx = 180 MB of RGB; every LRS-VQA TIFF is <= 49 Mpx).
RAM_LIMIT_PIXELS = 60_000_000

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PYVIPS_HINT = 'pip install "pyvips[binary]"'


class _Unsupported(Exception):
    """The fast path cannot represent this image; the caller falls back to the general decoder."""


def is_tiff(path: Path) -> bool:
    """Whether the file starts with a (Big)TIFF signature."""
    with open(path, "rb") as fh:
        return fh.read(4) in _TIFF_MAGIC


def tiff_size(path: Path) -> tuple[int, int]:
    """``(W, H)`` of the first TIFF page, from the header only."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        return int(page.imagewidth), int(page.imagelength)


def import_pyvips(required: bool) -> Any:
    """Import pyvips lazily; ``None`` when missing and not required.

    Raises:
        MissingDependencyError: pyvips is required but not importable (shows the ``pip install`` line).
    """
    try:
        import pyvips
    except (ImportError, OSError) as exc:  # OSError: the Python package is there but libvips is not
        if required:
            raise MissingDependencyError(f"the scratch backend needs pyvips with libvips: {_PYVIPS_HINT}") from exc
        return None
    return pyvips


SUPPORTED_SAMPLES = "uint8, uint16, 1-bit (bool) or floating point"


def to_rgb8(pixels: np.ndarray, path: Path | str) -> np.ndarray:
    """Apply the normalisation rule to decoded samples ``[H, W]`` or ``[H, W, S]``; returns uint8 ``[H, W, 3]``.

    Raises:
        ImageReadError: an unsupported sample type or array shape (names ``path`` and the valid ones).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] < 1) or 0 in pixels.shape[:2]:
        raise ImageReadError(f"image {str(path)!r} has shape {list(pixels.shape)}; expected [H, W] or [H, W, bands]")
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * np.uint8(255)
    elif pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype.kind == "f":
        scaled = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        pixels = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ImageReadError(f"unsupported sample type {pixels.dtype} in {str(path)!r}; supported: {SUPPORTED_SAMPLES}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] < 3:
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def _tiff_page_info(path: Path) -> dict[str, Any]:
    """Layout facts of page 0, after checking that every strip/tile lies inside the file (truncation)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True) if c]
        if ends and max(ends) > os.path.getsize(path):
            raise ImageReadError(f"truncated TIFF {str(path)!r}: pixel data ends at byte {max(ends)}")
        bands = int(page.samplesperpixel)
        plain = page.photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)
        contiguous = page.is_contiguous  # (offset, size) in older tifffile, a bool in newer ones
        raw = (
            plain
            and bool(contiguous)
            and not page.is_tiled
            and page.compression == tifffile.COMPRESSION.NONE
            and page.dtype == np.uint8
            and int(page.bitspersample) == 8
            and (bands == 1 or page.planarconfig == tifffile.PLANARCONFIG.CONTIG)
            and int(page.imagedepth) == 1
        )
        offset = int(contiguous[0]) if isinstance(contiguous, tuple) else int(page.dataoffsets[0])
        return {"plain": plain, "raw_offset": offset if raw else None, "bands": bands}


def _decode_tifffile(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        data, axes = page.asarray(), page.axes
    if axes.startswith("S") and data.ndim == 3:  # planar (separate) layout
        data = np.moveaxis(data, 0, -1)
    return to_rgb8(data, path)


_PILLOW_DIRECT = {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def pil_to_rgb8(image: Any, name: Path | str) -> np.ndarray:
    """The normalisation rule on a loaded Pillow image: uint8 ``[H, W, 3]``.

    Copied strip by strip so that only Pillow's buffer and ours coexist (~7 B/px at peak). Mode ``F`` (float32) takes
    the float rule, ``I;16*`` the 16-bit rule, ``1`` the 1-bit rule; palette, CMYK, YCbCr, LAB... go through
    Pillow's ``convert("RGB")``; 32-bit integer modes are refused.

    Raises:
        ImageReadError: a mode with 32-bit integer samples.
    """
    if image.mode in ("I", "I;32", "I;32L", "I;32B"):
        raise ImageReadError(
            f"unsupported sample type int32 (Pillow mode {image.mode!r}) in {str(name)!r}; "
            f"supported: {SUPPORTED_SAMPLES}"
        )
    width, height = image.size
    out = np.empty((height, width, 3), np.uint8)
    step = max(1, 2**24 // max(width, 1))
    for y in range(0, height, step):
        strip = image.crop((0, y, width, min(y + step, height)))
        if strip.mode == "1":
            strip = strip.convert("L")
        elif strip.mode not in _PILLOW_DIRECT:  # palette, CMYK, YCbCr, LAB, ...
            strip = strip.convert("RGB")
        pixels = np.asarray(strip)
        if pixels.dtype.byteorder not in ("=", "|"):
            pixels = pixels.astype(pixels.dtype.newbyteorder("="))
        out[y : y + strip.height] = to_rgb8(pixels, name)
    return out


def _decode_pillow(path: Path) -> np.ndarray:
    """Decode with Pillow (bomb limit and truncation check scoped to the call) and apply the rule."""
    from PIL import Image

    from lrs_plugin.imagery._headers import pillow_pixel_limit

    with pillow_pixel_limit(), Image.open(path) as image:
        image.load()
        return pil_to_rgb8(image, path)


def _vips_rgb8(image: Any) -> Any:
    if image.format not in ("uchar", "ushort") or image.interpretation not in (
        "b-w",
        "grey16",
        "srgb",
        "rgb16",
        "multiband",
    ):
        raise _Unsupported(f"{image.format}/{image.interpretation}")
    if image.format == "ushort":
        image = (image >> 8).cast("uchar")
    if image.bands < 3:
        return image[0].bandjoin([image[0], image[0]])
    return image.extract_band(0, n=3) if image.bands > 3 else image


def _vips_open(pyvips: Any, path: Path) -> Any:
    return _vips_rgb8(pyvips.Image.new_from_file(str(path), access="sequential", fail_on="error"))


def _vips_scratch(path: Path, size: tuple[int, int], scratch_dir: str | Path | None) -> RawFileSource:
    pyvips = import_pyvips(required=True)
    image = _vips_open(pyvips, path)
    need = size[0] * size[1] * 3
    tmp = tempfile.mkdtemp(prefix="lrs-largeimage-", dir=scratch_dir)
    free = shutil.disk_usage(tmp).free
    if free < need:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(
            errno.ENOSPC, f"{need / 1e9:.1f} GB of scratch needed for {str(path)!r}, {free / 1e9:.1f} free", tmp
        )
    scratch = Path(tmp) / "pixels.rgb"
    try:
        image.rawsave(str(scratch))
        if scratch.stat().st_size != need:
            raise ImageReadError(f"scratch for {str(path)!r} has {scratch.stat().st_size} bytes, expected {need}")
        return RawFileSource(scratch, 0, size, 3, "pyvips", owned_dir=tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_png(path: Path) -> bool:
    """Whether the file starts with the PNG signature."""
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


def _decode_memory(path: Path, tiff_plain: bool, use_pyvips: bool) -> ArraySource:
    if use_pyvips and is_png(path):  # lossless: libvips and Pillow agree; anything else goes to Pillow
        pyvips = import_pyvips(required=False)
        if pyvips is not None:
            try:
                return ArraySource(np.ascontiguousarray(_vips_open(pyvips, path).numpy()), "pyvips")
            except _Unsupported:
                pass
    if tiff_plain:
        try:
            return ArraySource(_decode_tifffile(path), "tifffile")
        except (ImageReadError, MemoryError):
            raise
        except Exception:  # e.g. a codec tifffile lacks without imagecodecs: Pillow (libtiff) may have it
            pass
    return ArraySource(_decode_pillow(path), "pillow")


def open_pixels(
    path: Path, size: tuple[int, int], *, backend: str, ram_limit_pixels: int, scratch_dir: str | Path | None
) -> ArraySource | RawFileSource:
    """Decode ``path`` once into the store chosen by ``backend`` (rules in the module docstring).

    Raises:
        ImageReadError: Truncated or undecodable file (names the path and the decoder's message).
        MissingDependencyError: ``backend="scratch"`` without pyvips.
    """
    try:
        tiff = _tiff_page_info(path) if is_tiff(path) else None
        if backend == "auto" and tiff is not None and tiff["raw_offset"] is not None:
            return RawFileSource(path, tiff["raw_offset"], size, tiff["bands"], "none")
        big = size[0] * size[1] > ram_limit_pixels
        if backend == "scratch" or (backend == "auto" and big and import_pyvips(required=False) is not None):
            try:
                return _vips_scratch(path, size, scratch_dir)
            except _Unsupported:
                if backend == "scratch":
                    raise
        # TIFFs go to tifffile: libvips only warns about corrupt tiles of a tiled TIFF, even with fail_on="error".
        return _decode_memory(path, bool(tiff and tiff["plain"]), use_pyvips=backend == "auto" and tiff is None)
    except (LrsPluginError, MemoryError):
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise ImageReadError(f"cannot decode image {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    except _Unsupported as exc:
        raise ImageReadError(f"pyvips cannot normalise {str(path)!r} to RGB ({exc}); use backend='memory'") from exc
    except Exception as exc:  # decoder-specific errors (OSError, ValueError, zlib.error, pyvips.Error, ...)
        raise ImageReadError(f"cannot decode image {str(path)!r}: {type(exc).__name__}: {exc}") from exc
