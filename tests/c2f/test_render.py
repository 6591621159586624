from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from lrs_plugin.c2f.render import CLIP_MEAN, CLIP_STD, render_thumbnail, render_tiles
from lrs_plugin.imagery.large_image import LargeImage

try:
    import pyvips  # noqa: F401

    HAVE_PYVIPS = True
except (ImportError, OSError):
    HAVE_PYVIPS = False

TILE = 56


def _level(h, w, scale, tile=TILE):
    """method.md §1.3 geometry (duck-typed like lrs_plugin.c2f.pyramid.LevelGeometry)."""
    h0, w0 = round(h * scale), round(w * scale)
    k = min(math.ceil(h0 / tile) * tile / h0, math.ceil(w0 / tile) * tile / w0)
    rh, rw = round(h0 * k), round(w0 * k)
    return SimpleNamespace(resize_hw=(rh, rw), grid_hw=(math.ceil(rh / tile), math.ceil(rw / tile)))


def _reference_level(pixels, level, tile=TILE):
    """The original DIP: normalise the full image, bilinear resize, zero-pad bottom/right."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)
    x = ((x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None])[None]
    rh, rw = level.resize_hw
    y = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)[0]
    nb_h, nb_w = level.grid_hw
    return F.pad(y, (0, nb_w * tile - rw, 0, nb_h * tile - rh)).numpy()


def _stitch(tiles, grid_hw, tile=TILE):
    nb_h, nb_w = grid_hw
    return tiles.reshape(nb_h, nb_w, 3, tile, tile).transpose(2, 0, 3, 1, 4).reshape(3, nb_h * tile, nb_w * tile)


def _image(make_image_file, h, w, suffix):
    path = make_image_file(h, w, seed=h * 1000 + w, suffix=f".{suffix}")
    return path, _pixels(path)


def _pixels(path):
    if path.suffix == ".tif":
        return tifffile.imread(path)
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


LAYOUTS = [
    pytest.param("png", {}, id="png-auto"),
    pytest.param("tif", {}, id="tif-direct"),
    pytest.param(
        "png",
        {"backend": "scratch"},
        id="png-scratch",
        marks=pytest.mark.skipif(not HAVE_PYVIPS, reason="needs pyvips"),
    ),
]


@pytest.mark.parametrize("suffix,kwargs", LAYOUTS)
@pytest.mark.parametrize("h,w", [(200, 700), (450, 300), (523, 611), (700, 211)])
def test_stitched_tiles_equal_the_original_level(make_image_file, h, w, suffix, kwargs):
    path, pixels = _image(make_image_file, h, w, suffix)
    base = min(3 * TILE / max(h, w), 1.0)
    with LargeImage(path, **kwargs) as image:
        for scale in sorted({base, min(2 * base, 1.0), 1.0}):
            level = _level(h, w, scale)
            nb_h, nb_w = level.grid_hw
            every = [(r, c) for r in range(nb_h) for c in range(nb_w)]
            tiles = render_tiles(image, level, every, tile=TILE, mean=CLIP_MEAN, std=CLIP_STD)
            assert tiles.shape == (nb_h * nb_w, 3, TILE, TILE) and tiles.dtype == np.float32
            np.testing.assert_allclose(_stitch(tiles, level.grid_hw), _reference_level(pixels, level), atol=1e-4)


def test_tiles_come_in_the_requested_order_with_zero_padding(make_image_file):
    path, pixels = _image(make_image_file, 130, 150, "png")
    level = _level(130, 150, 1.0)  # up-scaled to 146 x 168: last row of tiles is partly padding
    assert level.resize_hw == (146, 168) and level.grid_hw == (3, 3)
    with LargeImage(path) as image:
        picked = render_tiles(image, level, [(2, 1), (0, 0)], tile=TILE, mean=CLIP_MEAN, std=CLIP_STD)
        everything = render_tiles(image, level, [(0, 0), (2, 1)], tile=TILE, mean=CLIP_MEAN, std=CLIP_STD)
        np.testing.assert_array_equal(picked[::-1], everything)
        assert np.all(picked[0, :, 146 - 2 * TILE :, :] == 0)  # rows below the content
        with pytest.raises(IndexError, match=r"tile \(row=3, col=0\).*3x3 grid"):
            render_tiles(image, level, [(3, 0)], tile=TILE, mean=CLIP_MEAN, std=CLIP_STD)
        assert render_tiles(image, level, [], tile=TILE, mean=CLIP_MEAN, std=CLIP_STD).shape == (0, 3, TILE, TILE)


@pytest.mark.parametrize("h,w", [(200, 700), (523, 611), (700, 211)])
def test_thumbnail_is_the_resized_image_top_left_on_a_zero_canvas(make_image_file, h, w):
    path, pixels = _image(make_image_file, h, w, "png")
    thumb = _level(h, w, min(TILE / h, TILE / w))
    assert max(thumb.resize_hw) == TILE and thumb.grid_hw == (1, 1)
    with LargeImage(path) as image:
        got = render_thumbnail(image, thumb, tile=TILE, mean=CLIP_MEAN, std=CLIP_STD)
        assert got.shape == (3, TILE, TILE)
        np.testing.assert_allclose(got, _reference_level(pixels, thumb), atol=1e-4)
        with pytest.raises(ValueError, match="does not fit"):
            render_thumbnail(image, _level(h, w, 1.0), tile=TILE, mean=CLIP_MEAN, std=CLIP_STD)


def test_area_tiles_stitch_to_the_area_resize(make_image_file):
    path, pixels = _image(make_image_file, 300, 410, "png")
    level = _level(300, 410, 0.5)
    nb_h, nb_w = level.grid_hw
    (rh, rw) = level.resize_hw
    with LargeImage(path) as image:
        every = [(r, c) for r in range(nb_h) for c in range(nb_w)]
        tiles = render_tiles(image, level, every, tile=TILE, mean=CLIP_MEAN, std=CLIP_STD, resample="area")
        whole = image.read_region((0, 0, 410, 300), (rw, rh), resample="area")
    mean, std = np.array(CLIP_MEAN, np.float32), np.array(CLIP_STD, np.float32)
    expected = np.zeros((3, nb_h * TILE, nb_w * TILE), np.float32)
    expected[:, :rh, :rw] = ((whole / 255 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(_stitch(tiles, level.grid_hw), expected, atol=1e-4)
