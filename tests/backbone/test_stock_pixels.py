"""The stock processor's tensors for a ``LargeImage``, resized strip-wise: the same tensors, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrs_plugin.backbone import _stock_pixels
from lrs_plugin.backbone._stock_pixels import processor_pixels, streams_for
from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.tiny import VARIANTS
from lrs_plugin.imagery import LargeImage

IDS = [f"{arch}+{lm}" for arch, lm in VARIANTS]
SIZES = [(56, 56), (70, 100), (100, 40), (30, 170), (301, 517)]  # (H, W); the last one downscales on every side


@pytest.fixture(scope="module")
def backbones(make_tiny_checkpoint) -> dict[tuple[str, str], Backbone]:
    return {v: Backbone.from_pretrained(make_tiny_checkpoint(*v), dtype="float32") for v in VARIANTS}


@pytest.fixture
def no_whole_decode(monkeypatch):
    """Fails the test if a ``LargeImage`` is decoded into one array (``rgb8`` / ``to_pil``)."""

    def refuse(self):
        raise AssertionError(f"{self.name} decoded whole")

    monkeypatch.setattr(LargeImage, "rgb8", refuse)
    monkeypatch.setattr(LargeImage, "to_pil", refuse)


def _equal(got, ref) -> None:
    assert set(got) == set(ref)
    for key in ref:
        assert torch.equal(got[key], ref[key]), key


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("hw", SIZES)
def test_streamed_equals_the_stock_processor(backbones, make_image, variant, hw, request):
    bb = backbones[variant]
    pil = make_image(*hw, seed=sum(hw))
    ref = bb.processor(images=[pil], text=[bb.build_prompt("q")], return_tensors="pt")
    image = LargeImage.from_pil(pil)
    assert streams_for(bb.processor.image_processor, image, 0)
    request.getfixturevalue("no_whole_decode")
    got = processor_pixels(bb.processor.image_processor, image, stream_above_pixels=0)
    _equal(got, {k: v for k, v in ref.items() if k in ("pixel_values", "image_sizes")})


def test_streamed_with_other_pinpoints(backbones, make_image, no_whole_decode):
    bb = backbones[("llava_next", "qwen2")]
    pil = make_image(301, 517, seed=1)
    pinpoints = [[56, 112], [112, 168], [168, 224]]
    ref = bb.processor.image_processor(images=[pil], return_tensors="pt", image_grid_pinpoints=pinpoints)
    got = processor_pixels(
        bb.processor.image_processor, LargeImage.from_pil(pil), stream_above_pixels=0, image_grid_pinpoints=pinpoints
    )
    _equal(got, ref)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_backbone_tokens_of_a_large_image_file_equal_the_decoded_image(
    backbones, make_image_file, monkeypatch, variant
):
    bb = backbones[variant]
    path = make_image_file(240, 330, seed=4, suffix=".tif")
    with LargeImage(path) as image:
        whole = bb.plain_vision_embeds(image.to_pil())
        crops, grid = bb.image_crops(image.to_pil())
    monkeypatch.setattr(_stock_pixels, "STREAM_ABOVE_PIXELS", 0)
    with LargeImage(path) as image:
        monkeypatch.setattr(LargeImage, "rgb8", lambda self: pytest.fail("decoded whole"))
        assert torch.equal(bb.plain_vision_embeds(image), whole)
        got_crops, got_grid = bb.image_crops(image)
    assert torch.equal(got_crops, crops) and got_grid == grid


def test_small_images_and_other_processors_decode_whole(backbones, make_image):
    from transformers import CLIPImageProcessor

    bb = backbones[("llava", "qwen2")]
    image = LargeImage.from_pil(make_image(40, 60))
    assert not streams_for(bb.processor.image_processor, image)  # 2,400 px: below the limit
    assert streams_for(bb.processor.image_processor, image, 0)
    # A processor that touches the image with something else than a resize (no resize: a crop of the whole image)
    # gets the decoded image, and the same output as the stock call.
    crop_only = CLIPImageProcessor(do_resize=False, crop_size={"height": 32, "width": 32})
    ref = crop_only(images=[image.to_pil()], return_tensors="pt")
    _equal(processor_pixels(crop_only, image, stream_above_pixels=0), ref)


def test_pil_backend_processors_are_not_streamed(make_image):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    pil_backend = LlavaNextImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    image = LargeImage.from_pil(make_image(70, 100))
    assert not streams_for(pil_backend, image, 0)
    _equal(
        processor_pixels(pil_backend, image, stream_above_pixels=0),
        pil_backend(images=[image.to_pil()], return_tensors="pt"),
    )


def test_a_processor_that_reads_the_values_of_the_whole_image_gets_the_decoded_image(backbones, make_image):
    bb = backbones[("llava_next", "qwen2")]
    stock = bb.processor.image_processor
    image = LargeImage.from_pil(make_image(70, 100, seed=2))

    class ValueChecking(type(stock)):
        def _preprocess(self, images, *args, **kwargs):
            assert int(images[0].max()) >= 0  # a value check: a shape-only stand-in cannot answer it
            return super()._preprocess(images, *args, **kwargs)

    checking = ValueChecking(**stock.to_dict())
    ref = checking(images=[image.to_pil()], return_tensors="pt")
    _equal(processor_pixels(checking, image, stream_above_pixels=0), ref)


def test_an_unreadable_image_is_the_read_error_not_a_fallback(backbones, tmp_path):
    from PIL import Image

    from lrs_plugin.errors import ImageReadError

    path = tmp_path / "cut.png"
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8) + 90).save(good)
    path.write_bytes(good.read_bytes()[:-200])  # truncated: the header is fine, the pixels are not
    with pytest.raises(ImageReadError, match="cut.png"):
        processor_pixels(bb_processor(backbones), LargeImage(path), stream_above_pixels=0)


def bb_processor(backbones):
    return backbones[("llava_next", "qwen2")].processor.image_processor
