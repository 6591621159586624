"""Focus recall of the stock-layout reducers: token cells by hand and against the processor, then each reducer.

The cells (:mod:`lrs_plugin.backbone.token_cells`) are checked three ways: hand-made geometry (a small image, a box in a
known tile, a known kept set), invariants (counts equal the stock vision sequence, newline rows empty, cells inside the
image and covering it), and the processor's own pixels (an image whose colours encode their coordinates: each
patch's mean colour must sit at its cell's centre). Then ``random``, ``visionzip``, ``prumerge``, ``fastv`` and
``pdrop`` report both figures on a tiny checkpoint.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_plugin.backbone.anyres import anyres_pinpoints, pooled_side
from lrs_plugin.backbone.token_cells import (
    anyres_extent,
    split_extent,
    stock_token_cells,
    tile_extent,
    tile_patch_cells,
)
from lrs_plugin.errors import ConfigError
from lrs_plugin.focus.recall import recall_stats, region_recall
from lrs_plugin.harness.record import FocusRecall, SampleRecord
from lrs_plugin.reducers._cells import stock_cells, tile_cells
from lrs_plugin.reducers.registry import available_reducers, build_reducer

NEXT = ("llava_next", "qwen2")
VARIANTS = [("llava", "llama"), NEXT]
SIZES_HW = [(150, 230), (170, 300), (300, 170), (56, 56), (400, 90), (121, 57), (20, 112)]
REPORTING = ("random", "visionzip", "prumerge", "fastv", "pdrop")
KEYS = ("focus_tile_recall", "focus_token_recall")


@pytest.fixture(scope="module")
def image_path(make_image_file) -> str:
    return str(make_image_file(150, 230, high=255))


def _noise(h: int, w: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(h * 1000 + w).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _token(cells: np.ndarray, kept: list[int], box: list[float], wh: tuple[int, int]) -> float | None:
    return recall_stats({"hbox": box}, wh, cells[kept]).token


# ---------------------------------------------------------------------------------------------- by hand
def test_extents_by_hand() -> None:
    assert tile_extent((230, 150), 56, "squash") == (0.0, 0.0, 230.0, 150.0)
    # CLIP: 150 -> 56, 230 -> int(56 * 230 / 150) = 85; crop left (85 - 56) // 2 = 14 resized px = 14 * 230 / 85.
    x1, y1, x2, y2 = tile_extent((230, 150), 56, "center_crop")
    assert (x1, y1, x2, y2) == pytest.approx((14 * 230 / 85, 0.0, 70 * 230 / 85, 150.0))
    assert tile_extent((230, 150), 56, "pad") == (0.0, -40.0, 230.0, 190.0)  # square 230, (230 - 150) // 2 above
    with pytest.raises(ConfigError, match=r"'stretch'.*valid: squash, center_crop, pad"):
        tile_extent((10, 10), 56, "stretch")
    # 100 x 40 into a 1x2 grid of 56-px tiles: width fills 112 (x1.12), height ceil(44.8) = 45, 5 px pad above.
    assert anyres_extent((100, 40), (1, 2), 56) == pytest.approx((0.0, -5 / 1.125, 100.0, 51 / 1.125))
    assert anyres_extent((112, 56), (1, 2), 56) == (0.0, 0.0, 112.0, 56.0)
    cells = split_extent((0, -10, 20, 10), (2, 2), (20, 20))
    assert np.isnan(cells[:2]).all() and cells[2:].tolist() == [[0, 0, 10, 10], [10, 0, 20, 10]]


def test_stock_cells_and_token_recall_by_hand() -> None:
    # A 112 x 56 image, 56-px tiles of 2x2 tokens, a 1x2 grid: 4 base tokens (28 x 14 cells... of a 2x2 split of the
    # whole image, so 56 x 28), then 2 rows of 4 grid tokens (28 x 28 cells) each followed by a newline.
    cells = stock_token_cells((112, 56), 2, tile=56, grid=(1, 2))
    assert cells.shape == (4 + 2 * 5, 4)
    assert cells[:4].tolist() == [[0, 0, 56, 28], [56, 0, 112, 28], [0, 28, 56, 56], [56, 28, 112, 56]]
    assert cells[4:8].tolist() == [[0, 0, 28, 28], [28, 0, 56, 28], [56, 0, 84, 28], [84, 0, 112, 28]]
    assert cells[9:13].tolist() == [[0, 28, 28, 56], [28, 28, 56, 56], [56, 28, 84, 56], [84, 28, 112, 56]]
    assert np.isnan(cells[[8, 13]]).all()
    box, wh = [70, 20, 90, 40], (112, 56)  # 20 x 20 = 400 px, centre (80, 30): grid tile (0, 1)
    assert _token(cells, [6], box, wh) == pytest.approx(14 * 8 / 400)  # grid token (0, 2): x 70-84, y 20-28
    assert _token(cells, [1, 6], box, wh) == pytest.approx(20 * 8 / 400)  # + base token (0, 1): x 70-90, y 20-28
    assert _token(cells, [1, 6, 12, 8], box, wh) == pytest.approx((160 + 6 * 12) / 400)  # + (1, 3): x 84-90, y 28-40
    assert _token(cells, [0, 4, 5, 8, 9, 13], box, wh) == 0.0  # the left half and newlines only
    assert _token(cells, list(range(14)), box, wh) == 1.0
    assert recall_stats({"hbox": box}, wh, cells[[0]]).tile == 1.0  # the grid holds every pixel


def test_stock_cells_unpad_and_pool_by_hand() -> None:
    # 112 x 20 into a 1x2 grid of 4x4-token tiles: 20 px tall in a 56-px canvas (18 px pad above), 14-px token rows.
    # The unpad rule keeps rows 1-2 of 4 (y 0-10 and 10-20 in the source), 8 tokens + a newline each.
    cells = stock_token_cells((112, 20), 4, tile=56, grid=(1, 2))
    grid = cells[16:].reshape(2, 9, 4)
    assert np.isnan(grid[:, 8]).all() and not np.isnan(grid[:, :8]).any()
    assert grid[:, 0, [1, 3]].tolist() == [[0, 10], [10, 20]] and grid[0, :8, 2].tolist() == [
        14 * i for i in range(1, 9)
    ]
    # The unpad rule may drop thin image strips: 300 x 170 in a 2x2 grid is 64 px tall in the 112-px canvas (24 px
    # above), it keeps int(170 * 8 / 300) = 4 of 8 token rows, rows 2-5: y 10.625-159.375 of the source.
    cells = stock_token_cells((300, 170), 4, tile=56, grid=(2, 2))
    assert cells.shape == (16 + 4 * 9, 4) and cells[16, 1] == pytest.approx(10.625)
    assert cells[-2, 3] == pytest.approx(159.375)
    assert _token(cells, list(range(16, len(cells))), [0, 0, 300, 170], (300, 170)) == pytest.approx(148.75 / 170)
    # 2x2 pooled grid tiles: 2 tokens per side, the base keeps 4.
    pooled = stock_token_cells((112, 56), 4, tile=56, grid=(1, 2), grid_side=2)
    assert pooled.shape == (16 + 2 * 5, 4) and pooled[16:20].tolist()[0] == [0, 0, 28, 28]
    assert pooled_side(4, "average") == pooled_side(4, "max") == 2 and pooled_side(5, "bilinear") == 3
    with pytest.raises(ConfigError, match="valid: average, max, bilinear"):
        pooled_side(4, "mean")
    one = stock_token_cells((230, 150), 4, tile=56, fit="center_crop", prefix_tokens=1)  # LLaVA-1.5, [CLS] first
    assert one.shape == (17, 4) and np.isnan(one[0]).all() and not np.isnan(one[1:]).any()


def test_region_recall_and_missing_boxes() -> None:
    cells = np.array([[0.0, 0.0, 10.0, 10.0]])
    assert region_recall([1, 1, 3, 3], (10, 10)) == 1.0
    assert region_recall([1, 1, 3, 3], (10, 10), (4, 0, 10, 10)) == 0.0  # centre (2, 2) left of the region
    assert region_recall([20, 20, 30, 30], (10, 10)) is None
    none = FocusRecall(tile=None, token=None)
    for doc in ({}, None, {"hbox": None}, {"hbox": [1, 2, 3]}, {"hbox": [1, 2, "x", 4]}, {"hbox": [20, 20, 30, 30]}):
        assert recall_stats(doc, (10, 10), cells) == none
    assert recall_stats({"hbox": (2, 2, 4, 4)}, (10, 10), cells) == FocusRecall(tile=1.0, token=1.0)


# ----------------------------------------------------------------------------- against the stock model
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
@pytest.mark.parametrize("pool", [None, "average", "bilinear"])
def test_stock_cells_follow_the_stock_sequence(tiny_backbones, monkeypatch, variant, pool) -> None:
    bb = tiny_backbones[variant]
    if pool is not None:
        if bb.arch != "llava_next":
            pytest.skip("tile pooling is LLaVA-NeXT's")
        monkeypatch.setattr(bb.config, "anyres_tile_pool", pool, raising=False)
    for pinpoints in (None, anyres_pinpoints(4, bb.tile_size) if bb.arch == "llava_next" else None):
        for h, w in SIZES_HW:
            image = _noise(h, w)
            vision = bb.plain_vision_embeds(image, grid_pinpoints=pinpoints)
            cells = stock_cells(bb, image.size, pinpoints)
            assert cells.shape == (vision.shape[0], 4)
            empty = np.isnan(cells).any(axis=1)
            if bb.image_newline is not None:
                newline = (vision == bb.image_newline).all(dim=-1).cpu().numpy()
                assert (empty == newline).all(), (h, w)  # here no kept token lies wholly in the padding
            solid = cells[~empty]
            assert (solid[:, :2] >= 0).all() and (solid[:, 2] <= w).all() and (solid[:, 3] <= h).all()
            # The base tokens show the whole image (LLaVA-NeXT); the unpadded grid all but thin edge strips.
            if bb.arch == "llava_next":
                g2, whole = bb.patches_per_side**2, [0, 0, w, h]
                assert _token(cells, list(range(g2)), whole, (w, h)) == pytest.approx(1.0)
                # 2x2-pooled 112 x 20 / 90 x 400: the unpad rule keeps no grid token (newlines at most).
                if not np.isnan(cells[g2:]).all():
                    assert 0.5 < _token(cells, list(range(g2, len(cells))), whole, (w, h)) <= 1.0


def _patch_centre_errors(pixel_values: torch.Tensor, mean, std, cells: np.ndarray, wh: tuple[int, int]) -> list:
    """Per padding-free patch: distance from its mean ``(x, y)`` colour to its cell's centre, in cell sizes.

    The image is :func:`_coordinate_image` (blue 255 everywhere): a patch with any other blue holds padding (zeros
    or the mean colour), and a patch whose cell is NaN must be all padding.
    """
    w, h = wh
    raw = (pixel_values * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]) * 255
    n, _, s, _ = raw.shape
    g = int(round(cells.shape[1] ** 0.5))
    p = s // g
    patches = raw.reshape(n, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, 3, p * p)
    errors = []
    for t in range(n):
        for k in range(g * g):
            cell, blue = cells[t, k], patches[t, k, 2]
            if np.isnan(cell).any():
                assert (blue < 200).all(), (t, k)  # wholly padding
                continue
            if not (blue > 250).all():  # part padding: its mean colour is not its cell's
                continue
            mx, my = patches[t, k, 0].mean().item() / 255 * w, patches[t, k, 1].mean().item() / 255 * h
            errors.append(max(abs(mx - (cell[0] + cell[2]) / 2) / (cell[2] - cell[0]),
                              abs(my - (cell[1] + cell[3]) / 2) / (cell[3] - cell[1])))  # fmt: skip
    return errors


def _coordinate_image(h: int, w: int) -> Image.Image:
    """Red = x, green = y (pixel centres, 0-255 over the image), blue = 255."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * (xx + 0.5) / w, 255 * (yy + 0.5) / h, np.full(xx.shape, 255.0)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
def test_tile_cells_match_the_processor_pixels(tiny_backbones, variant) -> None:
    bb = tiny_backbones[variant]
    for h, w in SIZES_HW:
        image = _coordinate_image(h, w)
        pixel_values, _ = bb.image_crops(image)
        cells = tile_cells(bb, image.size)
        assert cells.shape == (pixel_values.shape[0], bb.patches_per_side**2, 4)
        errors = _patch_centre_errors(pixel_values, bb.image_mean, bb.image_std, cells, image.size)
        assert errors and max(errors) < 0.05, (h, w, max(errors))


def test_pad_fit_matches_llava_image_processor() -> None:
    from transformers import LlavaImageProcessor

    processor = LlavaImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, do_pad=True)
    for h, w in ((150, 230), (300, 170)):
        pixel_values = processor(images=[_coordinate_image(h, w)], return_tensors="pt")["pixel_values"]
        cells = tile_patch_cells((w, h), 4, tile=56, fit="pad")
        errors = _patch_centre_errors(pixel_values, processor.image_mean, processor.image_std, cells, (w, h))
        assert errors and max(errors) < 0.05, (h, w)


# ------------------------------------------------------------------------------------------- reducers
KEEP_ALL = {
    "random": {"budget": 10_000},
    "visionzip": {"dominant": 17, "contextual": 0},  # every patch of every tile (4x4 patches + [CLS])
    "prumerge": {"variant": "base", "adaptive": False, "reduction_ratio": 1.0},  # every patch kept
    "fastv": {"r": 0.0},
    "pdrop": {"lam": 1.0},
}
TINY = {
    "random": {"budget": 1},
    "visionzip": {"dominant": 2, "contextual": 1},  # one patch per tile
    "prumerge": {"variant": "base", "adaptive": False, "reduction_ratio": 0.0625},  # int(16 / 16) = 1 per tile
    "fastv": {"r": 0.99},  # keeps 1
    "pdrop": {"lam": 0.01},  # keeps 1 per stage
}


def _stats(bb, name: str, options: dict, image_path: str, doc: dict) -> SampleRecord:
    reducer = build_reducer(name, bb, dict(options))
    try:
        return reducer.answer(image_path, "What is it?", doc=doc, max_new_tokens=1).record
    finally:
        reducer.close()


@pytest.mark.parametrize("name", REPORTING)
def test_reducer_reports_recall(tiny_backbones, image_path, name) -> None:
    bb = tiny_backbones[NEXT]
    box = [150, 90, 200, 130]  # lower right, grid tile (1, 1) of the 2x2 grid
    whole = [0, 0, 230, 150]
    for options in ({}, KEEP_ALL[name], TINY[name]):
        stats = _stats(bb, name, options, image_path, {"hbox": box})
        assert stats.focus_recall.tile == 1.0 and 0.0 <= stats.focus_recall.token <= 1.0
    assert _stats(bb, name, KEEP_ALL[name], image_path, {"hbox": box}).focus_recall.token == pytest.approx(1.0)
    tiny = _stats(bb, name, TINY[name], image_path, {"hbox": whole})
    assert tiny.focus_recall.tile == 1.0 and tiny.focus_recall.token < 0.5  # a few cells of the image
    for doc in ({}, {"hbox": [500, 500, 600, 600]}):
        stats = _stats(bb, name, TINY[name], image_path, doc)
        assert stats.focus_recall.tile is None and stats.focus_recall.token is None


def test_random_token_recall_is_that_of_the_drawn_tokens(tiny_backbones, image_path) -> None:
    from lrs_plugin.imagery.large_image import open_image
    from lrs_plugin.reducers.random import random_keep

    bb = tiny_backbones[NEXT]
    with open_image(image_path) as image:
        vision = bb.plain_vision_embeds(image.to_pil())
        cells = stock_cells(bb, image.size)
    is_newline = (vision == bb.image_newline).all(dim=-1)
    _, kept = random_keep(vision, is_newline, 5, generator=torch.Generator().manual_seed(3))
    covered = cells[kept.numpy()]
    covered = covered[~np.isnan(covered).any(axis=1)]
    # A box on a grid token whose cell no drawn token touches: recall 0; on a drawn token's cell: 1.
    grid = cells[bb.patches_per_side**2 :]
    far = next(
        c
        for c in grid
        if not np.isnan(c).any()
        and not (
            (covered[:, 0] < c[2]) & (covered[:, 2] > c[0]) & (covered[:, 1] < c[3]) & (covered[:, 3] > c[1])
        ).any()
    )
    options = {"budget": 5, "seed": 3}
    assert _stats(bb, "random", options, image_path, {"hbox": far.tolist()}).focus_recall.token == 0.0
    assert _stats(bb, "random", options, image_path, {"hbox": covered[0].tolist()}).focus_recall.token == 1.0


@pytest.mark.parametrize("name", ["fastv", "pdrop"])
def test_in_llm_recall_is_that_of_the_last_stage(tiny_backbones, image_path, name) -> None:
    from lrs_plugin.imagery.large_image import open_image
    from lrs_plugin.reducers._prefill import pruned_prefill

    bb = tiny_backbones[NEXT]
    reducer = build_reducer(name, bb, {})
    with open_image(image_path) as image:
        vision = bb.plain_vision_embeds(image.to_pil())
        cells = stock_cells(bb, image.size)
    prefix, suffix = bb.split_prompt("What is it?")
    embeds, span = bb.assemble(prefix, vision, suffix)
    stages, _ = reducer.schedule(span.stop - span.start)
    prefill = pruned_prefill(bb.language_model, embeds, span, stages, positions=reducer.positions)
    last = (prefill.stage_kept[-1] - span.start).numpy()
    assert len(last) == min(prefill.vision_tokens_per_layer)
    whole = [0, 0, 230, 150]
    expected = recall_stats({"hbox": whole}, (230, 150), cells[last]).token
    assert _stats(bb, name, {}, image_path, {"hbox": whole}).focus_recall.token == pytest.approx(expected)


def test_max_tiles_grid_still_holds_every_box(tiny_backbones, tmp_path) -> None:
    bb = tiny_backbones[NEXT]
    path = tmp_path / "big.png"
    _noise(400, 400).save(path)
    for box in ([0, 0, 10, 10], [390, 5, 400, 20], [180, 180, 220, 220]):
        for name, options in (("random", {"max_tiles": 1}), ("fastv", {"max_tiles": 1, "r": 0.0})):
            stats = _stats(bb, name, options, str(path), {"hbox": box})
            assert stats.focus_recall.tile == 1.0 and stats.focus_recall.token == pytest.approx(1.0)
            assert stats.tiles_encoded == 2


def test_llava_center_crop_hides_the_margins(tiny_backbones, image_path) -> None:
    bb = tiny_backbones[("llava", "llama")]  # CLIP's processor: the centre 150 x 150 of the 230 x 150 image
    left = (14 * 230 / 85) / 2  # half the cropped margin
    for name in REPORTING:
        margin = _stats(bb, name, KEEP_ALL[name], image_path, {"hbox": [0, 0, 2 * left, 150]})
        centre = _stats(bb, name, KEEP_ALL[name], image_path, {"hbox": [100, 60, 130, 90]})
        assert margin.focus_recall.tile == 0.0 and margin.focus_recall.token == pytest.approx(0.0, abs=1e-9)
        assert centre.focus_recall.tile == 1.0 and centre.focus_recall.token == pytest.approx(1.0)


def test_every_reducer_reports_recall_or_is_keep_all(tiny_backbones, image_path) -> None:
    from lrs_plugin.models.c2f_llava import KEEP_ALL_REDUCERS, _keep_all_recall

    bb = tiny_backbones[NEXT]
    options = {"c2f": {"focus_options": {"layer": 1}}, "downsample": {"max_pixels": 56 * 56}}
    doc = {"hbox": [150, 90, 200, 130]}
    for name in available_reducers():
        stats = _stats(bb, name, options.get(name, {}), image_path, doc)
        if name in KEEP_ALL_REDUCERS:  # the model adds 1.0 for them
            assert not set(KEYS) & set(stats.to_dict())
            assert _keep_all_recall(name, doc, (230, 150)) == FocusRecall(tile=1.0, token=1.0)
        elif name == "blind":  # no vision token: no recall (null), and the model adds none
            assert not set(KEYS) & set(stats.to_dict()) and _keep_all_recall(name, doc, (230, 150)) is None
        else:
            assert set(KEYS) <= set(stats.to_dict()), name


@pytest.mark.parametrize("name", ["visionzip", "prumerge"])
def test_selection_recall_is_that_of_the_selected_patches(tiny_backbones, image_path, name) -> None:
    from lrs_plugin.backbone.vision_probe import probe_feature_layer, probe_next_layer
    from lrs_plugin.imagery.large_image import open_image
    from lrs_plugin.reducers.prumerge import prumerge_select
    from lrs_plugin.reducers.visionzip import visionzip_select

    bb = tiny_backbones[NEXT]
    options = {"visionzip": {"dominant": 3, "contextual": 1}, "prumerge": {"adaptive": False, "reduction_ratio": 0.125}}
    with open_image(image_path) as image:
        pixel_values, _ = bb.image_crops(image.to_pil())
        cells = tile_cells(bb, image.size)
    if name == "visionzip":
        probe = probe_feature_layer(bb, pixel_values)
        picked = [visionzip_select(probe.hidden[i], probe.cls_attention[i], probe.keys[i], 3, 1)[1] for i in range(5)]
    else:
        probe = probe_next_layer(bb, pixel_values)
        picked = [prumerge_select(probe.cls_attention[i], adaptive=False, reduction_ratio=0.125) for i in range(5)]
    kept = np.concatenate([cells[i][p.cpu().numpy()] for i, p in enumerate(picked)])
    for box in ([0, 0, 230, 150], [150, 90, 200, 130], [10, 100, 60, 140]):
        expected = recall_stats({"hbox": box}, (230, 150), kept).token
        assert _stats(bb, name, options[name], image_path, {"hbox": box}).focus_recall.token == pytest.approx(expected)


def test_visionzip_cells_follow_the_next_layout() -> None:
    from lrs_plugin.reducers.visionzip import visionzip_cells

    # A 1x2 grid of 2x2-patch tiles, base first; cell (t, k) = [t, k, t, k] to read the order back.
    t, k = np.meshgrid(np.arange(3.0), np.arange(4.0), indexing="ij")
    cells = torch.from_numpy(np.stack([t, k, t, k], axis=-1))  # [3, 4, 4]
    patches = torch.tensor([[3], [1], [2]])  # one dominant patch per tile; K = [CLS] + 1 + 1 contextual = 3
    out = visionzip_cells(cells, patches, 3, (1, 2))
    # Base [CLS, patch 3, ctx]; grid dominants by raster position over the 2x4 map: tile 1 patch 1 is (0, 1), tile 2
    # patch 2 is (1, 2); then the grid [CLS] states and contextual tokens.
    assert np.isnan(out[[0, 2]].numpy()).all() and out[1].tolist() == [0, 3, 0, 3]
    assert out[3].tolist() == [1, 1, 1, 1] and out[4].tolist() == [2, 2, 2, 2]
    assert out.shape == (9, 4) and np.isnan(out[5:].numpy()).all()
    one = visionzip_cells(cells[:1], patches[:1], 3, None)  # LLaVA-1.5: the tile's own order
    assert np.isnan(one[[0, 2]].numpy()).all() and one[1].tolist() == [0, 3, 0, 3]
