from __future__ import annotations

import pytest
from PIL import Image

from lrs_plugin.errors import ImageReadError
from lrs_plugin.imagery import image_size, open_lazy, pillow_pixel_limit


def _bomb_png(tree):
    found = []
    for path in (tree / "LRS_VQA" / "image").glob("*.png"):
        with pillow_pixel_limit(None):
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > 2 * Image.MAX_IMAGE_PIXELS:
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
