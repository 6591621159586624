"""``open_image``: one :class:`LargeImage` for every kind of visual, one pixel limit on every format's header."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from lrs_plugin.errors import ImageReadError, ImageTooLargeError, MultipleImagesError
from lrs_plugin.imagery.large_image import MAX_PIXELS, LargeImage, open_image


def _png_header(path, width, height):
    """A PNG whose IHDR claims ``width x height`` RGB pixels, with a tiny (invalid) IDAT: only the header matters."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)))
    return path


def _jpeg_header(path, width, height):
    """A JPEG whose SOF0 claims ``width x height`` (baseline, 3 components), no scan data."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    path.write_bytes(b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9")
    return path


def _tiff_header(path, width, height, *, big: bool = False):
    """A (Big)TIFF whose first IFD claims ``width x height`` 8-bit RGB deflate pixels (a few hundred bytes)."""
    entries = [(256, width), (257, height), (258, 8), (259, 8), (262, 2), (273, 0), (277, 3), (278, height), (279, 1)]
    if not big:
        ifd = struct.pack("<H", len(entries))
        for tag, value in entries:
            ifd += struct.pack("<HHII", tag, 4, 1, value)
        path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0))
    else:
        ifd = struct.pack("<Q", len(entries))
        for tag, value in entries:
            ifd += struct.pack("<HHQQ", tag, 16, 1, value)
        path.write_bytes(b"II+\0" + struct.pack("<HHQ", 8, 0, 16) + ifd + struct.pack("<Q", 0))
    return path


HEADERS = {
    "png-50000": (lambda p: _png_header(p / "a.png", 50_000, 50_000), "50000 x 50000"),
    "jpeg-65000": (lambda p: _jpeg_header(p / "a.jpg", 65_000, 65_000), "65000 x 65000"),
    "tiff-200000": (lambda p: _tiff_header(p / "a.tif", 200_000, 200_000), "200000 x 200000"),
    "bigtiff-300000": (lambda p: _tiff_header(p / "a.tif", 300_000, 300_000, big=True), "300000 x 300000"),
}


@pytest.mark.parametrize("kind", list(HEADERS))
def test_one_pixel_limit_on_every_formats_header_before_any_decode(tmp_path, kind):
    write, size = HEADERS[kind]
    path = write(tmp_path)
    assert path.stat().st_size < 1000  # nothing to decode: the header alone must be refused
    with pytest.raises(ImageTooLargeError, match=rf"{size} = [\d,]+ pixels, above the limit of {MAX_PIXELS:,}"):
        LargeImage(path)
    with pytest.raises(ImageTooLargeError):
        open_image(str(path))


def test_pillows_twice_the_limit_gap_is_closed(tmp_path):
    # 2.5 Gpx is above MAX_PIXELS = 2e9 but below the 4e9 at which Pillow's own bomb check raises
    path = _png_header(tmp_path / "a.png", 50_000, 50_000)
    assert 50_000**2 < 2 * MAX_PIXELS
    with pytest.raises(ImageTooLargeError):
        open_image(path)


def test_the_limit_applies_to_in_memory_images_and_can_be_set(tmp_path):
    with pytest.raises(ImageTooLargeError, match="20 x 10 = 200 pixels, above the limit of 100"):
        LargeImage.from_array(np.zeros((10, 20), np.uint8), max_pixels=100)
    with pytest.raises(ImageTooLargeError):
        open_image(Image.new("RGB", (20, 10)), max_pixels=100)
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    with pytest.raises(ImageTooLargeError):
        LargeImage(tmp_path / "a.png", max_pixels=199)
    assert LargeImage(tmp_path / "a.png", max_pixels=200).size == (20, 10)


def test_a_pil_image_opened_from_a_file_is_read_from_that_file_without_decoding(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.full((30, 40), 40000, np.uint16))
    lazy = Image.open(tmp_path / "a.tif")
    image = open_image([lazy])
    assert image.key[0] == "file" and image.path == tmp_path / "a.tif" and image.backend is None  # not decoded yet
    assert np.unique(image.rgb8()).tolist() == [156]


def test_derived_and_decoded_pil_images_are_in_memory_images_read_by_the_same_rule():
    pil = Image.fromarray(np.full((30, 40), 40000, np.uint16))
    image = open_image(pil)
    assert image.key[0] == "memory" and image.size == (40, 30) and image.path is None
    assert np.unique(image.rgb8()).tolist() == [156]
    other = open_image(pil)
    assert other.key != image.key  # two in-memory images never share cached results


def test_a_truncated_lazy_image_opened_outside_our_guard_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as lmms-eval leaves it
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    lazy = Image.open(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match="a.png"):
        open_image(lazy).load()
    stream = Image.open(open(tmp_path / "a.png", "rb"))  # a lazy image with no file name: read in memory
    stream.filename = ""
    with pytest.raises(ImageReadError):
        open_image(stream)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "JPEG"])
def test_ordinary_8_bit_images_read_exactly_as_pillow_converts_them(tmp_path, mode):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    if mode == "JPEG":
        path = tmp_path / "a.jpg"
        Image.fromarray(pixels).save(path, quality=90)
    else:
        path = tmp_path / "a.png"
        base = Image.fromarray(pixels)
        (base.convert(mode) if mode != "RGBA" else base.convert("RGBA")).save(path)
    want = np.asarray(Image.open(path).convert("RGB"))
    for visual in (str(path), Image.open(path), Image.open(path).convert("RGB")):
        np.testing.assert_array_equal(open_image(visual).rgb8(), want)
        assert open_image(visual).to_pil().mode == "RGB"


def test_lists_and_unsupported_visuals_get_typed_errors():
    image = Image.new("RGB", (4, 4))
    assert open_image([image]).size == (4, 4)
    with pytest.raises(MultipleImagesError, match="2 images"):
        open_image([image, image])
    with pytest.raises(ImageReadError, match="empty list"):
        open_image([])
    with pytest.raises(ImageReadError, match="builtins.dict.*accepted: a file path, a PIL image, a numpy array"):
        open_image({"bytes": b""})
    with pytest.raises(ImageReadError, match=r"shape \[4\]"):
        open_image(np.zeros(4, np.uint8))
