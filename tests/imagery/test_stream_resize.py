"""``streamed_resize``: torchvision's resize of the whole image, bit for bit, from strips of rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvF

from lrs_plugin.errors import ConfigError
from lrs_plugin.imagery import LargeImage, streamed_resize, streams_exactly

CASES = [  # (H, W) -> (h, w): both sides down, a square base tile, upscaling, one side kept, the other side kept
    ((301, 517), (97, 143)),
    ((250, 180), (56, 56)),
    ((60, 90), (168, 280)),
    ((120, 333), (120, 100)),
    ((333, 120), (90, 120)),
]


def _whole(pixels: np.ndarray, size: tuple[int, int], mode: InterpolationMode) -> torch.Tensor:
    full = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).contiguous()
    return tvF.resize(full, list(size), interpolation=mode, antialias=True)


@pytest.mark.parametrize(("shape", "size"), CASES)
@pytest.mark.parametrize("strip_rows", [1, 7, 10_000])
def test_equals_the_whole_image_resize(make_image, shape, size, strip_rows):
    pixels = np.asarray(make_image(*shape, seed=shape[0]))
    image = LargeImage.from_array(pixels)
    got = streamed_resize(image, size, "bicubic", strip_bytes=strip_rows * 3 * shape[1])
    assert got.dtype == torch.uint8 and tuple(got.shape) == (3, *size)
    assert torch.equal(got, _whole(pixels, size, InterpolationMode.BICUBIC))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_reads_a_file_in_strips_without_decoding_it_whole(make_image_file, monkeypatch, suffix):
    image = LargeImage(make_image_file(240, 320, seed=3, suffix=suffix))
    whole_reads = []
    monkeypatch.setattr(LargeImage, "rgb8", lambda self: whole_reads.append(1))
    got = streamed_resize(image, (61, 87), strip_bytes=16 * 3 * 320)
    monkeypatch.undo()
    assert whole_reads == []
    assert torch.equal(got, _whole(image.rgb8(), (61, 87), InterpolationMode.BICUBIC))


@pytest.mark.skipif(not streams_exactly("bilinear"), reason="bilinear uint8 is not a native kernel on this CPU")
def test_bilinear_where_the_kernel_is_native(make_image):
    pixels = np.asarray(make_image(203, 151, seed=5))
    got = streamed_resize(LargeImage.from_array(pixels), (64, 77), "bilinear", strip_bytes=9 * 3 * 151)
    assert torch.equal(got, _whole(pixels, (64, 77), InterpolationMode.BILINEAR))


def test_refuses_what_cannot_be_exact_and_bad_sizes(make_image):
    image = LargeImage.from_array(np.asarray(make_image(20, 30)))
    assert not streams_exactly("nearest")
    with pytest.raises(ConfigError, match="nearest"):
        streamed_resize(image, (10, 10), "nearest")
    with pytest.raises(ConfigError, match="unknown interpolation 'cubic'"):
        streamed_resize(image, (10, 10), "cubic")
    with pytest.raises(ConfigError, match="at least 1 x 1"):
        streamed_resize(image, (0, 10))
    with pytest.raises(ConfigError, match="rows 5..5"):
        image.rows(5, 5)


@pytest.mark.parametrize(("shape", "size"), CASES)
def test_pil_resize_equals_pillow_on_the_whole_image(make_image, monkeypatch, shape, size):
    from PIL import Image

    from lrs_plugin.imagery import _stream_resize, streamed_pil_resize

    pil = make_image(*shape, seed=shape[1])
    monkeypatch.setattr(_stream_resize, "_STRIP_BYTES", 5 * 3 * shape[1])  # five rows a strip
    got = streamed_pil_resize(LargeImage.from_pil(pil), size[::-1])
    assert got.size == size[::-1] and got.mode == "RGB"
    assert np.array_equal(np.asarray(got), np.asarray(pil.resize(size[::-1], Image.Resampling.BICUBIC)))
