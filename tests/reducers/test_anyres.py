"""``anyres`` reducer: anyres-pN pinpoints, the stock token layout rebuilt by ``pack_anyres``, the reducer itself."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from PIL import Image
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel, unpad_image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.anyres import (
    anyres_pinpoints,
    grid_shape,
    limited_pinpoints,
    pack_anyres,
    square_pinpoints,
    unpad_bounds,
)
from lrs_plugin.errors import ConfigError
from lrs_plugin.imagery.large_image import LargeImage
from lrs_plugin.reducers._stock import _num_tiles
from lrs_plugin.reducers.anyres import AnyresConfig, AnyresReducer
from lrs_plugin.reducers.registry import build_reducer, reducer_spec

NEXT = ("llava_next", "qwen2")
CKPT = [[56, 112], [112, 56], [112, 112], [56, 168], [168, 56]]  # the tiny checkpoint's pinpoints (S = 56)
# (H, W): wide, tall, square, tiny, odd, very tall, very wide, thin strip
SIZES = [(56, 200), (200, 56), (100, 100), (20, 30), (150, 230), (400, 90), (90, 400), (30, 170)]


@pytest.fixture(scope="module")
def next_bb(tiny_backbones) -> Backbone:
    return tiny_backbones[NEXT]


@pytest.fixture(scope="module")
def image_paths(make_image_file) -> dict[str, str]:
    sizes = {"odd": (150, 230), "big": (400, 400), "wide": (56, 200)}
    return {name: str(make_image_file(h, w, seed=h + w)) for name, (h, w) in sizes.items()}


def _ask(reducer, image_path: str):
    return reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=4)


def _stock_pack(pinpoints, features, image_hw, newline, tile=56, patch=14):
    """transformers' own ``pack_image_features`` run with ``pinpoints`` on a throwaway config (nothing shared)."""
    config = types.SimpleNamespace(
        image_grid_pinpoints=pinpoints,
        vision_config=types.SimpleNamespace(image_size=tile, patch_size=patch),
    )
    packed, _ = LlavaNextModel.pack_image_features(
        types.SimpleNamespace(config=config), [features], torch.tensor([image_hw]), "default", image_newline=newline
    )
    return packed[0]


# ------------------------------------------------------------------------------------------------ pinpoints
def test_square_pinpoints_values() -> None:
    assert square_pinpoints(1, 56) == [[56, 56]]
    assert square_pinpoints(4, 56) == [[56, 56], [56, 112], [112, 56], [112, 112]]
    p9 = square_pinpoints(9, 56)
    assert len(p9) == 9 and [168, 168] in p9 and [56, 168] in p9 and [168, 56] in p9
    p144 = square_pinpoints(144, 336)  # the paper's anyres-p144: up to 12x12 tiles
    assert len(p144) == 144 and max(h for h, _ in p144) == max(w for _, w in p144) == 12 * 336
    assert all(h % 336 == 0 and w % 336 == 0 for h, w in p144)


@pytest.mark.parametrize(("bad", "match"), [(5, "k\\*k"), (8, "k\\*k"), (0, ">= 1"), (-4, ">= 1"), (True, ">= 1")])
def test_square_pinpoints_errors(bad, match) -> None:
    with pytest.raises(ConfigError, match=match):
        square_pinpoints(bad, 56)


def test_limited_pinpoints_values_and_errors() -> None:
    assert limited_pinpoints(CKPT, 2, 56) == [[56, 112], [112, 56]]
    assert limited_pinpoints(CKPT, 3, 56) == [[56, 112], [112, 56], [56, 168], [168, 56]]  # order kept
    assert limited_pinpoints(CKPT, 4, 56) == CKPT
    assert limited_pinpoints(CKPT, 100, 56) == CKPT
    with pytest.raises(ConfigError, match="smallest anyres grid has 2 tiles"):
        limited_pinpoints(CKPT, 1, 56)
    with pytest.raises(ConfigError, match="max_tiles"):
        limited_pinpoints(CKPT, False, 56)
    with pytest.raises(ConfigError, match="max_tiles"):
        limited_pinpoints(CKPT, 0, 56)


def test_anyres_pinpoints_modes_and_errors() -> None:
    assert anyres_pinpoints(4, 56) == square_pinpoints(4, 56)
    assert anyres_pinpoints(3, 56, mode="checkpoint", checkpoint=CKPT) == limited_pinpoints(CKPT, 3, 56)
    with pytest.raises(ConfigError, match="'diagonal' is not valid; valid: square, checkpoint"):
        anyres_pinpoints(4, 56, mode="diagonal")
    with pytest.raises(ConfigError, match="image_grid_pinpoints"):
        anyres_pinpoints(4, 56, mode="checkpoint", checkpoint=None)
    with pytest.raises(ConfigError, match="k\\*k"):
        anyres_pinpoints(6, 56)  # square mode needs a perfect square
    assert len(anyres_pinpoints(6, 56, mode="checkpoint", checkpoint=CKPT)) == 5  # any N in checkpoint mode


def test_grid_shape_picks_the_processor_grid() -> None:
    assert grid_shape((56, 200), CKPT, 56) == (1, 3)
    assert grid_shape((200, 56), CKPT, 56) == (3, 1)
    assert grid_shape((100, 100), CKPT, 56) == (2, 2)
    assert grid_shape((400, 400), square_pinpoints(9, 56), 56) == (3, 3)
    assert grid_shape((400, 400), square_pinpoints(1, 56), 56) == (1, 1)


# ------------------------------------------------------------------------------------------------- packing
@pytest.mark.parametrize(("gh", "gw"), [(4, 12), (12, 4), (8, 8), (8, 12), (12, 12), (4, 4)])
@pytest.mark.parametrize(("h", "w"), [*SIZES, (1, 1000), (1000, 1), (333, 334), (56, 56)])
def test_unpad_bounds_match_transformers(gh, gw, h, w) -> None:
    grid = torch.arange(gh * gw).reshape(1, gh, gw)
    rows, cols = unpad_bounds((gh, gw), (h, w))
    assert torch.equal(grid[:, rows, cols], unpad_image(grid, (h, w)))


@pytest.mark.parametrize(
    "pinpoints", [CKPT, square_pinpoints(9, 56), square_pinpoints(16, 56)], ids=["ckpt", "p9", "p16"]
)
@pytest.mark.parametrize(("h", "w"), SIZES)
def test_pack_anyres_equals_transformers_pack(pinpoints, h, w) -> None:
    rows, cols = grid_shape((h, w), pinpoints, 56)
    gen = torch.Generator().manual_seed(h * 1000 + w)
    features = torch.randn(1 + rows * cols, 16, 8, generator=gen)
    newline = torch.randn(8, generator=gen)
    ours = pack_anyres(features[0], features[1:], (rows, cols), (h, w), newline)
    assert torch.equal(ours, _stock_pack(pinpoints, features, (h, w), newline))
    without = pack_anyres(features[0], features[1:], (rows, cols), (h, w), None)
    assert torch.equal(without, ours[~(ours == newline).all(-1)])  # the newline rows are the only difference


def test_pack_anyres_layout_by_hand() -> None:
    # 1x2 grid of 2x2-patch tiles, square image: the 2x4 map is unpadded to its middle 2x2 columns.
    tiles = torch.arange(8.0).reshape(2, 4, 1)  # tile 0: 0 1 / 2 3, tile 1: 4 5 / 6 7
    base = torch.full((3, 1), -1.0)
    nl = torch.tensor([9.0])
    full = pack_anyres(base, tiles, (1, 2), (10, 20), nl).flatten().tolist()
    assert full == [-1, -1, -1, 0, 1, 4, 5, 9, 2, 3, 6, 7, 9]  # wide image: nothing cropped
    square = pack_anyres(base, tiles, (1, 2), (10, 10), nl).flatten().tolist()
    assert square == [-1, -1, -1, 1, 4, 9, 3, 6, 9]
    assert pack_anyres(base, tiles, (1, 2), (10, 10), nl, unpad=False).flatten().tolist() == full


def test_pack_anyres_errors() -> None:
    base = torch.zeros(16, 8)
    with pytest.raises(ConfigError, match="2x2 grid"):
        pack_anyres(base, torch.zeros(3, 16, 8), (2, 2), (100, 100), None)
    with pytest.raises(ConfigError, match="square"):
        pack_anyres(base, torch.zeros(4, 17, 8), (2, 2), (100, 100), None)
    with pytest.raises(ConfigError, match="base"):
        pack_anyres(torch.zeros(16, 4), torch.zeros(4, 16, 8), (2, 2), (100, 100), None)


# ------------------------------------------------------------------------------------------------ backbone
@pytest.mark.parametrize(("h", "w"), SIZES)
def test_explicit_checkpoint_pinpoints_equal_stock_path(next_bb, h, w, make_image) -> None:
    image = make_image(h, w, seed=h + w)
    stock = next_bb.plain_vision_embeds(image)
    ours = next_bb.plain_vision_embeds(image, grid_pinpoints=next_bb.config.image_grid_pinpoints)
    assert ours.shape == stock.shape and ours.dtype == stock.dtype
    assert torch.allclose(ours, stock, atol=1e-6, rtol=0)
    assert not ours.requires_grad
    newlines = int((ours == next_bb.image_newline).all(-1).sum())
    rows, _ = grid_shape((h, w), CKPT, 56)
    assert 1 <= newlines <= rows * 4  # one per kept patch row


def test_wider_grid_than_checkpoint_and_nothing_shared_changes(next_bb, make_image) -> None:
    cfg_before = copy.deepcopy(next_bb.config.image_grid_pinpoints)
    proc_before = copy.deepcopy(next_bb.processor.image_processor.image_grid_pinpoints)
    image = make_image(400, 400)
    vision = next_bb.plain_vision_embeds(image, grid_pinpoints=square_pinpoints(9, 56))
    assert vision.shape[0] == 16 + 12 * (12 + 1)  # base + 3x3 tiles of 4x4 patches, one newline per row
    assert next_bb.config.image_grid_pinpoints == cfg_before
    assert next_bb.processor.image_processor.image_grid_pinpoints == proc_before
    assert next_bb.plain_vision_embeds(image).shape[0] == 16 + 8 * (8 + 1)  # the stock path still 2x2


def test_plain_vision_pinpoints_refused_on_llava15(tiny_backbones, make_image) -> None:
    with pytest.raises(ConfigError, match="LLaVA-NeXT"):
        tiny_backbones[("llava", "llama")].plain_vision_embeds(make_image(60, 60), grid_pinpoints=[[56, 56]])


@pytest.mark.parametrize("pinpoints", [None, CKPT, square_pinpoints(9, 56), square_pinpoints(1, 56)])
@pytest.mark.parametrize(("h", "w"), [(400, 400), (56, 200), (20, 30)])
def test_num_tiles_counts_what_is_encoded(next_bb, pinpoints, h, w, make_image) -> None:
    crops, _ = next_bb.image_crops(make_image(h, w), pinpoints)
    assert _num_tiles(next_bb, (w, h), pinpoints) == crops.shape[0]


# ------------------------------------------------------------------------------------------------- reducer
def test_registered_for_llava_next_only() -> None:
    spec = reducer_spec("anyres")
    assert spec.stage == "pre_llm" and spec.archs == ("llava_next",)


@pytest.mark.parametrize("options", [{}, {"max_tiles": None}, {"max_tiles": "None"}, {"max_tiles": ""}])
def test_no_limit_is_exactly_none(next_bb, image_paths, options) -> None:
    ref = build_reducer("none", next_bb)
    red = build_reducer("anyres", next_bb, options)
    assert red.grid_pinpoints is None
    for path in image_paths.values():
        a, b = _ask(ref, path), _ask(red, path)
        assert a.text == b.text and a.record == b.record
        assert torch.equal(
            ref.vision.get(LargeImage(path))[0], red.vision.get(LargeImage(path))[0]
        )  # the LLM gets the same input


def test_one_tile(next_bb, image_paths) -> None:
    ref = _ask(build_reducer("none", next_bb), image_paths["odd"])
    out = _ask(build_reducer("anyres", next_bb, {"max_tiles": "1"}), image_paths["odd"])
    assert ref.record.tiles_encoded == 5  # 150x230 -> 2x2 with the checkpoint's pinpoints
    assert out.record.tiles_encoded == 2 and out.record.vision_tokens_encoded == 32
    assert out.record.vision_tokens_to_llm < ref.record.vision_tokens_to_llm
    assert out.record.llm_input_len < ref.record.llm_input_len


def test_p9_goes_beyond_the_checkpoint_grids(next_bb, image_paths) -> None:
    ref = _ask(build_reducer("none", next_bb), image_paths["big"])
    red = build_reducer("anyres", next_bb, {"max_tiles": 9, "pinpoints": "square"})
    out = _ask(red, image_paths["big"])
    assert ref.record.tiles_encoded == 5
    assert out.record.tiles_encoded == 10 and out.record.vision_tokens_encoded == 160
    assert out.record.vision_tokens_to_llm == 16 + 12 * 13
    assert out.record.llm_input_len - ref.record.llm_input_len == 16 + 12 * 13 - (16 + 8 * 9)
    vision, tiles = red.vision.get(LargeImage(image_paths["big"]))
    image = Image.open(image_paths["big"]).convert("RGB")
    assert tiles == 10 and torch.equal(vision, next_bb.plain_vision_embeds(image, square_pinpoints(9, 56)))


def test_checkpoint_mode_restricts_the_checkpoint_list(next_bb, image_paths) -> None:
    red = build_reducer("anyres", next_bb, {"pinpoints": "checkpoint", "max_tiles": "2"})
    assert red.grid_pinpoints == [[56, 112], [112, 56]]
    ref = _ask(build_reducer("none", next_bb), image_paths["wide"])
    out = _ask(red, image_paths["wide"])
    assert ref.record.tiles_encoded == 4  # 56x200 -> 1x3
    assert out.record.tiles_encoded == 3  # 1x2 at most
    assert out.record.vision_tokens_to_llm < ref.record.vision_tokens_to_llm
    full = build_reducer("anyres", next_bb, {"pinpoints": "checkpoint", "max_tiles": 4})
    assert full.grid_pinpoints == CKPT
    assert {
        k: v for k, v in _ask(full, image_paths["wide"]).record.to_dict().items() if k != "max_tiles"
    } == ref.record.to_dict()


def test_refused_on_llava15(tiny_backbones) -> None:
    bb = tiny_backbones[("llava", "llama")]
    with pytest.raises(ConfigError, match="llava_next"):
        build_reducer("anyres", bb, {"max_tiles": 4})
    with pytest.raises(ConfigError, match="llava_next"):
        AnyresReducer(bb, max_tiles=4)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_tiles": 0}, "max_tiles must be an int >= 1 or None; got 0"),
        ({"max_tiles": "-4"}, "max_tiles must be an int >= 1 or None; got -4"),
        ({"max_tiles": "four"}, "max_tiles must be an int >= 1 or None; got 'four'"),
        ({"max_tiles": True}, "max_tiles must be an int >= 1 or None; got True"),
        ({"max_tiles": 2.5}, "max_tiles must be an int >= 1 or None; got 2.5"),
        ({"max_tiles": "5"}, "k\\*k"),  # square mode needs a perfect square
        ({"max_tiles": 4, "pinpoints": "diagonal"}, "pinpoints='diagonal' is not valid; valid: square, checkpoint"),
        ({"max_tiles": 1, "pinpoints": "checkpoint"}, "smallest anyres grid has 2 tiles"),
        ({"tiles": 4}, "unknown options \\['tiles'\\]; valid: \\['max_tiles', 'pinpoints'\\]"),
    ],
)
def test_bad_options(next_bb, options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_reducer("anyres", next_bb, options)


def test_config_validates_itself() -> None:
    assert AnyresConfig() == AnyresConfig(max_tiles=None, pinpoints="square")
    with pytest.raises(ConfigError, match="max_tiles"):
        AnyresConfig(max_tiles=0)
    with pytest.raises(ConfigError, match="pinpoints"):
        AnyresConfig(max_tiles=4, pinpoints="all")
    with pytest.raises(AttributeError):
        AnyresConfig().max_tiles = 4  # type: ignore[misc]


# ----------------------------------------------------------------------------- seed-style 2x2 tile pooling
def _seed_2d_pool(feature: torch.Tensor, mode: str) -> torch.Tensor:
    """The C2F seed's ``get_2dPool`` (llava_arch.py), restated: [n, g*g, C] -> pooled [n, g'*g', C]."""
    import math as m

    import torch.nn.functional as F

    n, t, c = feature.shape
    g = m.isqrt(t)
    x = feature.view(n, g, g, -1).permute(0, 3, 1, 2).contiguous()
    if mode == "average":
        x = F.avg_pool2d(x, 2)
    elif mode == "max":
        x = F.max_pool2d(x, 2)
    else:
        x = F.interpolate(x, size=[m.ceil(g / 2), m.ceil(g / 2)], mode="bilinear")
    return x.permute(0, 2, 3, 1).contiguous().view(n, -1, c)


@pytest.mark.parametrize("mode", ["average", "max", "bilinear"])
@pytest.mark.parametrize(("rows", "cols", "image_hw"), [(2, 3, (200, 330)), (3, 1, (500, 120)), (1, 1, (50, 50))])
def test_pack_with_tile_pool_equals_the_seed_spatial_unpad_merge(mode, rows, cols, image_hw) -> None:
    from lrs_plugin.backbone.anyres import pool_tiles, unpad_bounds

    gen = torch.Generator().manual_seed(rows * 7 + cols)
    g, c = 6, 5
    base = torch.randn(g * g, c, generator=gen)
    tiles = torch.randn(rows * cols, g * g, c, generator=gen)
    newline = torch.randn(c, generator=gen)
    pooled = _seed_2d_pool(tiles, mode)
    assert torch.equal(pool_tiles(tiles, mode), pooled)
    h = w = 3  # pooled side
    grid = pooled.view(rows, cols, h, w, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # [C, rows*h, cols*w]
    r, cc = unpad_bounds((rows * h, cols * w), image_hw)
    grid = grid[:, r, cc]
    grid = torch.cat([grid, newline[:, None, None].expand(*grid.shape[:-1], 1)], dim=-1)
    ref = torch.cat([base, grid.flatten(1, 2).transpose(0, 1)])
    got = pack_anyres(base, tiles, (rows, cols), image_hw, newline, tile_pool=mode)
    assert torch.equal(got, ref)


def test_pool_tiles_rejects_unknown_modes() -> None:
    from lrs_plugin.backbone.anyres import pool_tiles

    with pytest.raises(ConfigError, match="'mean' is not valid; valid: average, max, bilinear"):
        pool_tiles(torch.zeros(1, 16, 2), "mean")


def test_backbone_pools_grid_tiles_when_the_config_says_so(tmp_path, make_tiny_checkpoint, make_image) -> None:
    import json
    import shutil

    ckpt = tmp_path / "pooled"
    shutil.copytree(make_tiny_checkpoint("llava_next", "qwen2"), ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "anyres_tile_pool": "average"}))
    bb = Backbone.from_pretrained(ckpt, dtype="float32")
    assert bb.anyres_tile_pool == "average"
    image = make_image(230, 150)
    pixel_values, grid = bb.image_crops(image)
    tiles = bb.encode_tiles(pixel_values)
    ref = pack_anyres(tiles[0], tiles[1:], grid, (image.height, image.width), bb.image_newline, tile_pool="average")
    got = bb.plain_vision_embeds(image)
    torch.testing.assert_close(got, ref.detach().to(got.dtype), atol=0, rtol=0)
    assert got.shape[0] < pack_anyres(tiles[0], tiles[1:], grid, (image.height, image.width), bb.image_newline).shape[0]
    (ckpt / "config.json").write_text(json.dumps({**cfg, "anyres_tile_pool": "nearest"}))
    with pytest.raises(ConfigError, match="anyres_tile_pool='nearest'"):
        Backbone.from_pretrained(ckpt, dtype="float32")
