from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from lrs_plugin.errors import ConfigError, ImageReadError
from lrs_plugin.imagery.large_image import ImageCache, LargeImage, image_size, open_lazy, pillow_pixel_limit


def _bomb_png(tree):
    found = []
    limit = Image.MAX_IMAGE_PIXELS  # read outside the block, where it is None
    for path in (tree / "LRS_VQA" / "image").glob("*.png"):
        with pillow_pixel_limit(None):
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > 2 * limit:
                    found.append(path)
    assert found, "the generated set must hold one image above twice Pillow's bomb limit"
    return found[0]


def test_bomb_sized_header_is_read_without_touching_the_global_limit(lrs_vqa_tree):
    before = Image.MAX_IMAGE_PIXELS
    path = _bomb_png(lrs_vqa_tree)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    w, h = image_size(path)
    assert w * h > 2 * before
    assert Image.MAX_IMAGE_PIXELS == before


def test_pixel_limit_is_restored_after_an_error():
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(RuntimeError):
        with pillow_pixel_limit(5):
            assert Image.MAX_IMAGE_PIXELS == 5
            raise RuntimeError("boom")
    assert Image.MAX_IMAGE_PIXELS == before


def test_missing_and_unreadable_files_raise_typed_errors(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        image_size(tmp_path / "nope.tif")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n-not-really")
    with pytest.raises(ImageReadError, match="bad.png"):
        open_lazy(bad)


# --- LargeImage / ImageCache ---------------------------------------------------------------------------------------

try:
    import pyvips  # noqa: F401

    HAVE_PYVIPS = True
except (ImportError, OSError):
    HAVE_PYVIPS = False

needs_pyvips = pytest.mark.skipif(not HAVE_PYVIPS, reason='needs pip install "pyvips[binary]"')

# (file suffix, LargeImage kwargs, expected backend prefix)
LAYOUTS = [
    pytest.param("png", {"backend": "memory"}, "memory:pillow", id="png-pillow"),
    pytest.param("png", {}, "memory:pyvips" if HAVE_PYVIPS else "memory:pillow", id="png-auto"),
    pytest.param("png", {"backend": "scratch"}, "scratch:pyvips", id="png-scratch", marks=needs_pyvips),
    pytest.param("tif", {}, "direct", id="tif-direct"),
    pytest.param("deflate.tif", {}, "memory:tifffile", id="tif-deflate"),
    pytest.param("deflate.tif", {"backend": "scratch"}, "scratch:pyvips", id="tif-scratch", marks=needs_pyvips),
]


def _write(path, pixels):
    if path.name.endswith("deflate.tif"):
        tifffile.imwrite(path, pixels, compression="zlib", tile=(32, 32))
    elif path.suffix == ".tif":
        tifffile.imwrite(path, pixels)
    else:
        Image.fromarray(pixels).save(path)
    return path


def _random_image(tmp_path, suffix, h, w, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return _write(tmp_path / f"img.{suffix}", pixels), pixels


def _torch_resize(pixels, out_hw):
    full = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(full, size=out_hw, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


def _reference_bilinear(pixels, box, out_size):
    """float64 transcription of the read_region contract (sample formula, PyTorch clamping)."""
    (x0, y0, x1, y1), (w, h) = box, out_size
    img = pixels.astype(np.float64)

    def taps(start, stop, n, size):
        src = np.maximum(start + (np.arange(n) + 0.5) * (stop - start) / n - 0.5, 0)
        i0 = np.minimum(np.floor(src).astype(int), size - 1)
        return i0, np.minimum(i0 + 1, size - 1), np.clip(src - i0, 0, 1)

    ix0, ix1, fx = taps(x0, x1, w, img.shape[1])
    iy0, iy1, fy = taps(y0, y1, h, img.shape[0])
    across = img[:, ix0] * (1 - fx)[None, :, None] + img[:, ix1] * fx[None, :, None]
    return across[iy0] * (1 - fy)[:, None, None] + across[iy1] * fy[:, None, None]


@pytest.mark.parametrize("suffix,kwargs,backend", LAYOUTS)
def test_full_resize_and_tile_windows_equal_torch_bilinear(tmp_path, suffix, kwargs, backend):
    h, w = 270, 540
    path, pixels = _random_image(tmp_path, suffix, h, w)
    with LargeImage(path, **kwargs) as image:
        assert image.size == (w, h)
        # strong downscales (1/27), mixed, identity and upscales
        for rw, rh in [(20, 10), (7, 100), (w, h), (1000, 333), (541, 271), (1, 1)]:
            ref = _torch_resize(pixels, (rh, rw))
            np.testing.assert_allclose(image.read_region((0, 0, w, h), (rw, rh)), ref, atol=1e-3)
            c0, r0, c1, r1 = rw // 3, rh // 2, max(rw // 3 + 1, rw - 2), rh
            window = image.read_region((c0 * w / rw, r0 * h / rh, c1 * w / rw, r1 * h / rh), (c1 - c0, r1 - r0))
            np.testing.assert_allclose(window, ref[r0:r1, c0:c1], atol=1e-3)
        assert image.backend == backend


def test_fractional_and_out_of_image_boxes_follow_the_sampling_formula(tmp_path):
    path, pixels = _random_image(tmp_path, "png", 40, 60)
    with LargeImage(path) as image:
        for box, out in [
            ((2.5, 3.25, 17.75, 30.1), (9, 13)),
            ((-4.0, -2.5, 70.0, 45.0), (31, 17)),  # clamped like torch at both ends
            ((10.3, 0.0, 10.9, 1.0), (5, 4)),  # upscale inside one pixel
        ]:
            np.testing.assert_allclose(image.read_region(box, out), _reference_bilinear(pixels, box, out), atol=1e-2)


def test_only_the_sampled_rows_and_columns_are_read(tmp_path):
    h, w = 540, 270
    path, pixels = _random_image(tmp_path, "tif", h, w)
    with LargeImage(path) as image:
        source = image.load()._source
        seen_rows, seen_cols = set(), set()
        gather = source.gather

        def spy(rows, cols):
            seen_rows.update(rows.tolist())
            seen_cols.update(cols.tolist())
            return gather(rows, cols)

        source.gather = spy
        out = image.read_region((0, 0, w, h), (10, 20))  # 1/27
        np.testing.assert_allclose(out, _torch_resize(pixels, (20, 10)), atol=1e-3)
    assert len(seen_rows) <= 2 * 20 and len(seen_cols) <= 2 * 10


def test_area_resample_is_the_exact_box_average(tmp_path):
    path, pixels = _random_image(tmp_path, "png", 30, 42)
    with LargeImage(path) as image:
        out = image.read_region((0, 0, 42, 30), (14, 6), resample="area")  # integer factors 3 x 5
        np.testing.assert_allclose(out, pixels.reshape(6, 5, 14, 3, 3).mean(axis=(1, 3)), atol=1e-3)
        # fractional coverage: upsample by the output size so every edge is integral, then average blocks
        out = image.read_region((0, 0, 42, 30), (4, 7), resample="area")
        fine = pixels.astype(np.float64).repeat(7, axis=0).repeat(4, axis=1)  # 210 x 168
        np.testing.assert_allclose(out, fine.reshape(7, 30, 4, 42, 3).mean(axis=(1, 3)), atol=1e-3)
        box = (1.5, 2.25, 40.0, 29.0)
        out = image.read_region(box, (5, 3), resample="area")
        assert out.shape == (3, 5, 3) and np.isfinite(out).all()
        with pytest.raises(ConfigError, match="inside"):
            image.read_region((-1, 0, 10, 10), (2, 2), resample="area")


def test_level_is_a_full_resize_to_the_long_side(tmp_path):
    path, pixels = _random_image(tmp_path, "png", 90, 200)
    with LargeImage(path) as image:
        level = image.level(64)
    assert level.shape == (29, 64, 3)  # round(90 * 64 / 200) = round(28.8)
    np.testing.assert_allclose(level, _torch_resize(pixels, (29, 64)), atol=1e-3)


def test_size_is_read_from_the_header_without_decoding(tmp_path):
    for suffix in ("png", "deflate.tif"):
        path, _ = _random_image(tmp_path, suffix, 30, 50)
        image = LargeImage(path)
        assert image.size == (50, 30)
        assert image.backend is None  # nothing decoded yet
        image.close()


# --- RGB normalisation rule ---


def _png16(path, values):
    """A 16-bit PNG (gray or RGB) written by hand: Pillow cannot write 48-bit RGB."""
    h, w = values.shape[:2]
    color = 2 if values.ndim == 3 else 0
    raw = b"".join(b"\x00" + values[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def _mode_cases(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    alpha = rng.integers(0, 256, (9, 11, 1), dtype=np.uint8)
    bits = rng.integers(0, 2, (9, 11)).astype(bool)
    v16 = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    index = rng.integers(0, 4, (9, 11), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    rep = lambda g: np.repeat(g[:, :, None], 3, axis=2)  # noqa: E731
    cases = {}

    def pil(name, array, mode, expected):
        img = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
        img.save(tmp_path / name)
        cases[name] = expected

    pil("rgba.png", np.concatenate([rgb, alpha], axis=2), None, rgb)  # alpha dropped, not composited
    pil("gray.png", gray, None, rep(gray))
    pil("la.png", np.concatenate([gray[:, :, None], alpha], axis=2), "LA", rep(gray))
    pil("bits.png", bits, None, rep(bits.astype(np.uint8) * 255))
    pal = Image.fromarray(index, "P")
    pal.putpalette(palette.ravel().tolist())
    pal.save(tmp_path / "palette.png")
    cases["palette.png"] = palette[index]
    _png16(tmp_path / "rgb16.png", v16)
    cases["rgb16.png"] = (v16 >> 8).astype(np.uint8)
    _png16(tmp_path / "gray16.png", v16[:, :, 0])
    cases["gray16.png"] = rep((v16[:, :, 0] >> 8).astype(np.uint8))
    tifffile.imwrite(tmp_path / "rgb16.tif", v16)
    cases["rgb16.tif"] = (v16 >> 8).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgbn.tif", np.concatenate([rgb, alpha], axis=2), extrasamples=[0])  # 4 bands
    cases["rgbn.tif"] = rgb
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate")
    cases["planar.tif"] = rgb
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    cases["gray.tif"] = rep(gray)
    Image.fromarray(bits).save(tmp_path / "bits.tif")
    cases["bits.tif"] = rep(bits.astype(np.uint8) * 255)
    pal.save(tmp_path / "palette.tif")
    cases["palette.tif"] = palette[index]
    return cases


BACKENDS = [
    pytest.param({"backend": "memory"}, id="memory"),
    pytest.param({}, id="auto"),
    pytest.param({"backend": "scratch"}, id="scratch", marks=needs_pyvips),
]


@pytest.mark.parametrize("kwargs", BACKENDS)
def test_every_mode_is_normalised_to_rgb_by_the_documented_rule(tmp_path, kwargs):
    for name, expected in _mode_cases(tmp_path).items():
        with LargeImage(tmp_path / name, **kwargs) as image:
            h, w = expected.shape[:2]
            got = image.read_region((0, 0, w, h), (w, h))  # identity: exact pixels
            np.testing.assert_array_equal(got, expected.astype(np.float32), err_msg=f"{name} via {image.backend}")


@pytest.mark.parametrize("backend", ["auto", "memory"])
def test_float_samples_map_by_the_documented_rule(tmp_path, backend):
    # round(clip(v, 0, 1) * 255), NaN -> 0: the same for a file, a PIL "F" image and an array
    values = np.array([[-1.0, 0.0, 0.25, 0.5], [0.6, 1.0, 7.0, np.nan]], np.float32)
    want = np.array([[0, 0, 64, 128], [153, 255, 255, 0]], np.uint8)
    tifffile.imwrite(tmp_path / "float.tif", values)
    with LargeImage(tmp_path / "float.tif", backend=backend) as image:
        np.testing.assert_array_equal(image.rgb8(), np.repeat(want[:, :, None], 3, axis=2))
    for memory in (LargeImage.from_array(values), LargeImage.from_pil(Image.fromarray(values))):
        np.testing.assert_array_equal(memory.rgb8(), np.repeat(want[:, :, None], 3, axis=2))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint32, np.int64])
def test_signed_and_wide_integer_samples_are_refused_naming_the_type(tmp_path, dtype):
    tifffile.imwrite(tmp_path / "int.tif", np.zeros((4, 5), dtype))
    with LargeImage(tmp_path / "int.tif") as image, pytest.raises(ImageReadError, match=f"{np.dtype(dtype)}.*int.tif"):
        image.load()
    with pytest.raises(ImageReadError, match="unsupported sample type"):
        LargeImage.from_array(np.zeros((4, 5), dtype))


# --- errors, lifecycle, cache ---


def test_missing_and_garbage_files_fail_at_construction(tmp_path):
    with pytest.raises(ImageReadError, match="not found.*nope.png"):
        LargeImage(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"definitely not an image")
    with pytest.raises(ImageReadError, match="junk.png"):
        LargeImage(tmp_path / "junk.png")
    with pytest.raises(ConfigError, match="auto, memory, scratch"):
        LargeImage(tmp_path / "junk.png", backend="gdal")


@pytest.mark.parametrize("suffix", ["png", "tif", "deflate.tif"])
@pytest.mark.parametrize("kwargs", BACKENDS)
def test_truncated_files_raise_a_typed_error_naming_the_path(tmp_path, suffix, kwargs):
    path, _ = _random_image(tmp_path, suffix, 120, 80)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with LargeImage(path, **kwargs) as image:
        with pytest.raises(ImageReadError, match=path.name):
            image.read_region((0, 0, 80, 120), (8, 12))


@pytest.mark.parametrize("suffix", ["png", "deflate.tif"])
@pytest.mark.parametrize("kwargs", BACKENDS[:2])
def test_corrupt_pixel_data_raises_a_typed_error(tmp_path, suffix, kwargs):
    path, _ = _random_image(tmp_path, suffix, 120, 80)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    with LargeImage(path, **kwargs) as image, pytest.raises(ImageReadError, match=path.name):
        image.load()


def test_bad_read_arguments_name_the_value(tmp_path):
    path, _ = _random_image(tmp_path, "png", 10, 10)
    with LargeImage(path) as image:
        with pytest.raises(ConfigError, match="bicubic.*bilinear, area"):
            image.read_region((0, 0, 10, 10), (5, 5), resample="bicubic")
        with pytest.raises(ConfigError, match="empty region"):
            image.read_region((3, 0, 3, 10), (5, 5))


def test_the_pillow_limit_is_raised_only_while_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 40x40 image is a "bomb" for Pillow now
    path, pixels = _random_image(tmp_path, "png", 40, 40)
    with LargeImage(path, backend="memory") as image:
        np.testing.assert_array_equal(image.read_region((0, 0, 40, 40), (40, 40)), pixels)
    assert Image.MAX_IMAGE_PIXELS == 100


@needs_pyvips
def test_large_images_stream_into_a_scratch_file_deleted_on_close(tmp_path):
    path, pixels = _random_image(tmp_path, "png", 64, 48)
    image = LargeImage(path, ram_limit_pixels=1000, scratch_dir=tmp_path)
    np.testing.assert_array_equal(image.read_region((0, 0, 48, 64), (48, 64)), pixels)
    assert image.backend == "scratch:pyvips"
    scratch = image.scratch_dir
    assert os.path.isdir(scratch) and os.listdir(scratch)
    image.close()
    assert not os.path.exists(scratch) and image.closed
    with pytest.raises(ValueError, match="closed"):
        image.read_region((0, 0, 48, 64), (4, 4))


def test_image_cache_keeps_at_most_max_open_images(tmp_path):
    paths = [_write(tmp_path / f"{i}.png", np.full((8, 8, 3), i, np.uint8)) for i in range(3)]
    kwargs = {"ram_limit_pixels": 10, "scratch_dir": tmp_path} if HAVE_PYVIPS else {}
    with ImageCache(max_open=2, **kwargs) as cache:
        first = cache.get(paths[0])
        first.load()
        assert cache.get(str(paths[0])) is first
        cache.get(paths[1]).load()
        cache.get(paths[0])  # most recently used again
        third = cache.get(paths[2])
        assert len(cache) == 2 and paths[1] not in cache and paths[0] in cache
        assert not first.closed and third.read_region((0, 0, 8, 8), (1, 1))[0, 0, 0] == 2
        reopened = cache.get(paths[1])
        assert reopened.read_region((0, 0, 8, 8), (1, 1))[0, 0, 0] == 1 and first.closed
    assert third.closed and reopened.closed
    if HAVE_PYVIPS:
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("lrs-largeimage-")] == []
    with pytest.raises(ConfigError, match="max_open"):
        ImageCache(max_open=0)


def test_without_pyvips_scratch_names_the_install_line_and_auto_decodes_in_memory(tmp_path, monkeypatch):
    import sys

    from lrs_plugin.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "pyvips", None)  # import pyvips -> ImportError
    path, pixels = _random_image(tmp_path, "png", 20, 30)
    with LargeImage(path, backend="scratch") as image:
        with pytest.raises(MissingDependencyError, match=r'pip install "pyvips\[binary\]"'):
            image.load()
    with LargeImage(path, ram_limit_pixels=10) as image:
        np.testing.assert_array_equal(image.read_region((0, 0, 30, 20), (30, 20)), pixels)
        assert image.backend == "memory:pillow"


def test_repeated_regions_come_from_the_bounded_cache_as_copies(tmp_path):
    path, pixels = _random_image(tmp_path, "png", 40, 60)
    with LargeImage(path, region_cache_bytes=2 * 20 * 30 * 3 * 4) as image:
        first = image.read_region((0, 0, 60, 40), (30, 20))
        first[:] = -1  # callers own what they get
        source = image._source
        source.gather = None  # a cache hit must not read pixels
        again = image.read_region((0, 0, 60, 40), (30, 20))
        np.testing.assert_allclose(again, _torch_resize(pixels, (20, 30)), atol=1e-3)
        with pytest.raises(TypeError):
            image.read_region((0, 0, 60, 40), (10, 5))  # a miss reads (and here fails)
        source.gather = type(source).gather.__get__(source)
        for n in range(2, 6):  # the cache stays within its byte budget
            image.read_region((0, 0, 60, 40), (30, 20 - n))
        assert image._memo_bytes <= 2 * 20 * 30 * 3 * 4 and len(image._memo) == 2


def test_truncated_png_raises_even_when_pillow_is_told_to_load_truncated_images(tmp_path, monkeypatch):
    # lmms-eval 0.7.3 sets ImageFile.LOAD_TRUNCATED_IMAGES = True when its task module is imported.
    from PIL import ImageFile

    from lrs_plugin.imagery.large_image import LargeImage

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with LargeImage(path, backend="memory") as image, pytest.raises(ImageReadError, match="cut.png"):
        image.read_region((0, 0, 160, 120), (16, 12))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
