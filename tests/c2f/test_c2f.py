"""Coarse-to-fine driver on tiny checkpoints: config, selection, grids, keep-all parity, oracle coverage, budget."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.c2f.driver import C2FConfig, build_level_grid, c2f_sequence_keep_all, run_c2f, select_topk
from lrs_plugin.c2f.grid import grid_token_boxes, select_tiles, zoom_path
from lrs_plugin.c2f.pyramid import build_pyramid, tile_source_box
from lrs_plugin.c2f.render import render_thumbnail, render_tiles
from lrs_plugin.errors import ConfigError
from lrs_plugin.focus.scorers import available_focus, build_focus
from lrs_plugin.imagery.large_image import LargeImage

VARIANTS = [("llava_next", "qwen2"), ("llava", "llama")]
IDS = [f"{a}+{lm}" for a, lm in VARIANTS]
QUESTION = "What is next to the bridge?"
BOX = (1010.0, 300.0, 1150.0, 420.0)  # the oracle's ground truth, (x1, y1, x2, y2) in source pixels


@pytest.fixture(scope="module")
def backbones(make_tiny_checkpoint) -> dict[tuple[str, str], Backbone]:
    """The checkpoints of test_focus (3 text layers)."""
    return {v: Backbone.from_pretrained(make_tiny_checkpoint(*v, text_layers=3), dtype="float32") for v in VARIANTS}


@pytest.fixture(scope="module")
def images(make_image_file):
    opened = {
        "mid": LargeImage(make_image_file(480, 700)),  # 3 tiled levels with 56 px tiles, base 168 px
        "wide": LargeImage(make_image_file(1200, 1800, seed=1)),  # 5 tiled levels
        "small": LargeImage(make_image_file(100, 150, seed=2)),  # 1 tiled level
    }
    yield opened
    for image in opened.values():
        image.close()


# ------------------------------------------------------------------------------------------------------ config
def test_import_is_light():
    code = (
        "import sys, lrs_plugin.c2f.driver, lrs_plugin.focus.scorers; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("keep_ratio", 0.0, r"C2FConfig.keep_ratio=0.0 is invalid; valid: a number with 0 < keep_ratio <= 1"),
        ("keep_ratio", 1.5, r"keep_ratio=1.5 is invalid"),
        ("select_ratio", True, r"select_ratio=True is invalid"),
        ("num_zoom_steps", -1, r"num_zoom_steps=-1 is invalid; valid: an int >= 0"),
        ("num_zoom_steps", 1.0, r"num_zoom_steps=1.0 is invalid"),
        ("base_long_side_tiles", 1, r"base_long_side_tiles=1 is invalid; valid: an int >= 2"),
        ("separator", "", r"separator='' is invalid; valid: a non-empty token string or None"),
        ("newline_vote_quirk", "yes", r"newline_vote_quirk='yes' is invalid; valid: True or False"),
        ("unpad_floor_quirk", 0, r"unpad_floor_quirk=0 is invalid; valid: True or False"),
        ("masked_key_mode", "drop", r"masked_key_mode='drop' is invalid; valid: None, 'faithful', 'exclude'"),
        ("pool", "max", r"pool='max' is invalid; valid: 'avg2x2', 'none'"),
        ("max_tiles_per_level", 0, r"max_tiles_per_level=0 is invalid; valid: None or an int >= 1"),
        ("token_budget", "64", r"token_budget='64' is invalid"),
    ],
)
def test_config_validation_names_field_value_and_range(field, value, message):
    with pytest.raises(ConfigError, match=message):
        C2FConfig(**{field: value})


def test_config_defaults_are_the_release_and_frozen():
    cfg = C2FConfig()
    assert (cfg.keep_ratio, cfg.select_ratio, cfg.num_zoom_steps, cfg.base_long_side_tiles) == (0.25, 0.25, 1, 3)
    assert (cfg.separator, cfg.newline_vote_quirk, cfg.pool, cfg.thumbnail) == (":", True, "avg2x2", True)
    assert cfg.unpad_floor_quirk is True
    assert cfg.masked_key_mode is None and cfg.max_tiles_per_level is None and cfg.token_budget is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.keep_ratio = 0.5  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------- select_topk
def test_select_topk_properties():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        scores = torch.randint(0, 4, (n,), generator=gen).float()  # many ties
        candidates = torch.rand(n, generator=gen) < 0.7
        candidates[int(torch.randint(0, n, (1,), generator=gen))] = True
        keep = sorted({int(i) for i in torch.randint(0, n, (3,), generator=gen)})
        k = int(torch.randint(-2, n + 3, (1,), generator=gen))
        got = select_topk(scores, k, always_keep=keep, candidates=candidates)
        assert got.numel() >= 1 and got.tolist() == sorted(set(got.tolist()))
        assert set(keep) <= set(got.tolist())
        picked = [i for i in got.tolist() if i not in keep or candidates[i]]
        pool = candidates.nonzero().flatten().tolist()
        k_eff = min(max(k, 1), len(pool))
        # Reference: best scores first, earlier index first among equal scores.
        ref = sorted(pool, key=lambda i: (-float(scores[i]), i))[:k_eff]
        assert set(ref) <= set(got.tolist()) and set(got.tolist()) <= set(ref) | set(keep)
        assert len(picked) >= 1


def test_select_topk_edge_cases():
    flat = torch.zeros(6)
    assert select_topk(flat, 2).tolist() == [0, 1]  # stable ties: raster order
    assert select_topk(flat, 0).tolist() == [0]  # never empty
    assert select_topk(torch.tensor([0.1, 0.9, 0.5]), 1, always_keep=torch.tensor([2])).tolist() == [1, 2]
    assert select_topk(torch.tensor([0.9, 0.1, 0.5]), 1, candidates=torch.tensor([False, True, True])).tolist() == [2]
    with pytest.raises(ConfigError, match="no candidate token"):
        select_topk(flat, 1, candidates=torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"always_keep indices must lie in \[0, 6\)"):
        select_topk(flat, 1, always_keep=[6])
    with pytest.raises(ConfigError, match="non-empty"):
        select_topk(torch.zeros(0), 1)


# -------------------------------------------------------------------------------------------- grids / geometry
def test_build_level_grid_pastes_unpads_and_appends_newlines():
    feats = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1) + 1  # 2 tiles of 2x2 tokens, C = 1
    newline = torch.tensor([-1.0])
    # 2x2 tile grid -> 4x4 token map; content 100 x 60 (W x H): 100/60 > 4/4 -> keep int(60 * 4 / 100) = 2 rows.
    embeds, mask, shape = build_level_grid(feats, [(0, 1), (1, 0)], (2, 2), (100, 60), newline)
    assert shape == (2, 5)
    assert embeds[:, 0].tolist() == [0, 0, 1, 2, -1, 0, 0, 3, 4, -1]
    assert mask.tolist() == [False, False, True, True, True, False, False, True, True, True]
    _, mask2, shape2 = build_level_grid(feats, [(0, 1), (1, 0)], (2, 2), (60, 100), None)  # taller: crop columns
    assert shape2 == (4, 2) and mask2.tolist() == [False, False, False, False, True, True, True, True]
    with pytest.raises(ConfigError, match="2 tile features but 1 tile positions"):
        build_level_grid(feats, [(0, 0)], (2, 2), (100, 60), None)


def test_grid_token_boxes_follow_the_level_geometry():
    level = build_pyramid(480, 700, tile=56, base_long_side=168).levels[1]
    rows, cols = 3, 4
    boxes = grid_token_boxes(level, (rows, cols + 1), per_tile=2, has_newline=True).reshape(rows, cols + 1, 4)
    assert bool(boxes[:, -1].isnan().all()) and not bool(boxes[:, :-1].isnan().any())
    sx, sy = 700 / level.resize_hw[1], 480 / level.resize_hw[0]
    torch.testing.assert_close(boxes[1, 2], torch.tensor([56 * sx, 28 * sy, 84 * sx, 56 * sy]))
    assert torch.equal(boxes[0, 1, 0], boxes[0, 0, 2])  # adjacent cells share their edge


def test_select_tiles_caps_by_votes_and_handles_grids_without_newlines():
    pyr = build_pyramid(480, 700, tile=56, base_long_side=168)
    lvl, nxt = pyr.levels[0], pyr.levels[1]
    kw = {"level": lvl, "next_level": nxt, "per_tile": 2, "quirk": False}
    tiles, votes = select_tiles([0, 1, 6, 7], (4, 6), has_newline=False, max_tiles=None, **kw)
    assert tiles == sorted(votes) and votes[(0, 0)] >= 1
    capped, _ = select_tiles([0, 1, 6, 7], (4, 6), has_newline=False, max_tiles=1, **kw)
    assert capped == [max(votes, key=lambda t: (votes[t], tuple(-x for x in t)))]
    # Without newline column, the exact mapping must not drop the last real column.
    last_col, _ = select_tiles([5], (4, 6), has_newline=False, max_tiles=None, **kw)
    assert last_col and all(c == nxt.grid_hw[1] - 1 for _, c in last_col)


def test_zoom_path():
    deep = build_pyramid(1200, 1800, tile=56, base_long_side=168)
    assert len(deep.levels) == 5
    assert zoom_path(deep, 0) == [0] and zoom_path(deep, 1) == [0, 1] and zoom_path(deep, 9) == [0, 1, 2, 3, 4]
    single = build_pyramid(100, 150, tile=56, base_long_side=168)
    assert zoom_path(single, 1) == [0, 0] and zoom_path(single, 3) == [0, 0]  # the release re-reads level 0 once


# ----------------------------------------------------------------------------------------------- keep-all parity
def _direct_keep_all(bb: Backbone, image: LargeImage, level_index: int) -> torch.Tensor:
    """The keep-everything LLM input assembled from the backbone's public pieces, without the driver."""
    tile = bb.tile_size
    pyr = build_pyramid(image.size[1], image.size[0], tile=tile, base_long_side=3 * tile)
    level = pyr.levels[level_index]
    norm = {"tile": tile, "mean": bb.image_mean, "std": bb.image_std}
    thumb = bb.encode_tiles(torch.from_numpy(render_thumbnail(image, pyr.thumbnail, **norm))[None])[0]
    positions = [(r, c) for r in range(level.grid_hw[0]) for c in range(level.grid_hw[1])]
    feats = bb.pool2x2(bb.encode_tiles(torch.from_numpy(render_tiles(image, level, positions, **norm))))
    grid, mask, _ = build_level_grid(
        feats, positions, level.grid_hw, (level.resize_hw[1], level.resize_hw[0]), bb.image_newline
    )
    assert bool(mask.all())
    sep = bb.embed_ids(torch.tensor([bb.tokenizer.convert_tokens_to_ids(":")]))
    prefix, suffix = bb.split_prompt(QUESTION)
    return bb.assemble(prefix, torch.cat([thumb, sep, grid]), suffix)[0]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_keep_everything_reproduces_the_direct_forward(backbones, images, variant):
    bb, image = backbones[variant], images["mid"]
    cfg = C2FConfig(keep_ratio=1.0, select_ratio=1.0, newline_vote_quirk=False)
    focus = build_focus("llm_attention", bb)
    result = run_c2f(bb, image, QUESTION, focus, cfg, max_new_tokens=4, return_inputs_embeds=True)
    level1 = result.record.c2f.levels[1]
    assert level1.tiles_encoded == level1.tile_grid_hw[0] * level1.tile_grid_hw[1]  # every tile fetched
    direct = _direct_keep_all(bb, image, level_index=1)
    helper, span = c2f_sequence_keep_all(bb, image, QUESTION, cfg)
    assert torch.equal(result.inputs_embeds, helper) and torch.equal(helper, direct)
    has_newline = bb.image_newline is not None
    rows, width = level1.grid_shape_hw
    assert span.stop - span.start == rows * width
    assert level1.newline_tokens == (rows if has_newline else 0)
    torch.testing.assert_close(bb.logits(result.inputs_embeds), bb.logits(direct), atol=1e-6, rtol=0)
    assert result.answer == bb.generate(direct, max_new_tokens=4).text
    assert result.inputs_embeds_len == result.record.llm_input_len == direct.shape[1]


def test_mismatched_token_count_is_refused(backbones, images):
    bb = backbones[VARIANTS[0]]
    cfg = C2FConfig(keep_ratio=1.0, select_ratio=1.0)
    full, span = c2f_sequence_keep_all(bb, images["mid"], QUESTION, cfg)
    n = span.stop - span.start
    again, _ = c2f_sequence_keep_all(bb, images["mid"], QUESTION, cfg, grid_embeds=full[0, span])
    assert torch.equal(again, full)
    with pytest.raises(ConfigError, match=rf"grid_embeds has shape \[{n - 1}, 64\], but level 1's grid .* holds {n}"):
        c2f_sequence_keep_all(bb, images["mid"], QUESTION, cfg, grid_embeds=full[0, span][:-1])


# ------------------------------------------------------------------------------------- driver: stats and modes
@pytest.mark.parametrize("name", available_focus())
def test_every_scorer_drives_c2f(backbones, images, name):
    bb = backbones[VARIANTS[0]]
    knobs = {"rfm": {"llm_layer_list": [1, 2], "rfm_init": "backbone"}}.get(name, {})
    result = run_c2f(
        bb, images["mid"], QUESTION, build_focus(name, bb, knobs), doc={"hbox": list(BOX)}, max_new_tokens=3
    )
    record = result.record
    assert [p.level for p in record.focus_passes] == [0, 1]
    assert record.tiles_encoded == 1 + sum(lvl.tiles_encoded for lvl in record.c2f.levels)
    assert record.vision_tokens_encoded == record.tiles_encoded * bb.tokens_per_tile
    assert record.vision_tokens_to_llm == bb.tokens_per_tile + record.c2f.levels[-1].tokens_kept
    assert record.llm_input_len == result.inputs_embeds_len and result.inputs_embeds is None
    first, last = record.c2f.levels
    assert first.tokens_valid == first.tokens_in_grid and len(first.scores) == first.tokens_in_grid
    assert first.selected_tiles == last.tiles
    n_last = last.tokens_in_grid
    assert record.focus_passes[1].seq_len == record.focus_passes[0].seq_len - first.tokens_in_grid + n_last
    assert last.newline_tokens <= last.tokens_kept <= record.c2f.kept_topk + last.newline_tokens
    assert record.c2f.kept_topk == int(0.25 * last.tokens_valid)


def test_newline_quirk_always_fetches_the_last_tile_column(backbones, images):
    bb = backbones[VARIANTS[0]]  # LLaVA-NeXT: has image_newline
    result = run_c2f(bb, images["mid"], QUESTION, build_focus("uniform", bb), max_new_tokens=2)
    first = result.record.c2f.levels[0]
    last_col = result.record.c2f.levels[1].tile_grid_hw[1] - 1
    rows_with_last = {r for r, c in first.selected_tiles if c == last_col}
    assert rows_with_last == set(range(result.record.c2f.levels[1].tile_grid_hw[0]))


def test_zero_zoom_steps_prune_the_base_grid(backbones, images):
    bb = backbones[VARIANTS[1]]
    result = run_c2f(
        bb, images["mid"], QUESTION, build_focus("uniform", bb), C2FConfig(num_zoom_steps=0), max_new_tokens=2
    )
    assert len(result.record.c2f.levels) == 1 and len(result.record.focus_passes) == 1


def test_single_level_image_rereads_level_zero(backbones, images):
    bb = backbones[VARIANTS[0]]
    result = run_c2f(bb, images["small"], QUESTION, build_focus("uniform", bb), max_new_tokens=2)
    assert [lvl.level for lvl in result.record.c2f.levels] == [0, 0]


def test_max_tiles_per_level_caps_the_zoom(backbones, images):
    bb = backbones[VARIANTS[0]]
    cfg = C2FConfig(max_tiles_per_level=2)
    result = run_c2f(bb, images["mid"], QUESTION, build_focus("llm_attention", bb), cfg, max_new_tokens=2)
    first = result.record.c2f.levels[0]
    assert len(first.selected_tiles) == 2 and len(first.tile_votes) > 2
    top = sorted(first.tile_votes.values(), reverse=True)[:2]
    assert sorted(first.tile_votes[f"{r},{c}"] for r, c in first.selected_tiles) == sorted(top)


# ------------------------------------------------------------------------------------- oracle coverage + budget
def _covers(image_level, tiles, box) -> bool:
    """Every point of a fine lattice inside ``box`` lies in the source box of one of ``tiles``."""
    windows = [tile_source_box(image_level, r, c) for r, c in tiles]
    xs = np.linspace(box[0] + 0.5, box[2] - 0.5, 25)
    ys = np.linspace(box[1] + 0.5, box[3] - 0.5, 25)
    return all(any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in windows) for x in xs for y in ys)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize(("steps", "budget"), [(1, 40), (4, 100)], ids=["release", "to-finest"])
def test_oracle_zooms_into_the_box_within_the_budget(backbones, images, variant, steps, budget):
    bb, image = backbones[variant], images["wide"]
    pyr = build_pyramid(1200, 1800, tile=56, base_long_side=168)
    cfg = C2FConfig(num_zoom_steps=steps, newline_vote_quirk=False, select_ratio=0.5, token_budget=budget)
    focus = build_focus("oracle", bb)
    result = run_c2f(bb, image, QUESTION, focus, cfg, doc={"hbox": list(BOX)}, max_new_tokens=2)
    levels = result.record.c2f.levels
    assert [lvl.level for lvl in levels] == list(range(steps + 1))
    for lvl in levels:  # every visited level's tiles cover the box, none reads the whole level
        assert _covers(pyr.levels[lvl.level], [tuple(t) for t in lvl.tiles], BOX)
    final = levels[-1]
    assert final.tiles_encoded < final.tile_grid_hw[0] * final.tile_grid_hw[1]
    assert result.record.vision_tokens_to_llm <= budget and result.record.c2f.token_budget == budget
    assert result.record.c2f.kept_topk == min(int(0.25 * final.tokens_valid), budget - 16 - final.newline_tokens)
    newlines = set(range(final.grid_shape_hw[1] - 1, final.tokens_in_grid, final.grid_shape_hw[1]))
    kept = {i for i in final.picked_indices if bb.image_newline is None or i not in newlines}
    box_tokens = {i for i, s in enumerate(final.scores) if s == 1.0}
    assert box_tokens
    if len(box_tokens) <= result.record.c2f.kept_topk:
        assert box_tokens <= kept  # every box token reaches the LLM
    else:
        assert kept <= box_tokens  # only box tokens reach the LLM


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_unpad_floor_quirk_off_shows_a_target_in_the_partial_strip(backbones, make_image_file, variant):
    """A box in the base grid's partial last column: the released crop never scores it, ceil keeps it in view."""
    bb = backbones[variant]
    path = make_image_file(300, 470, seed=3)  # 470 x 300; base 168 x 107 px: 3.83 token rows of 28 px
    box = [10, 290, 40, 299]  # base rows 3.70-3.81: only in the partial 4th row
    with LargeImage(path) as image:
        got = {}
        for floor in (True, False):
            cfg = C2FConfig(num_zoom_steps=1, newline_vote_quirk=False, unpad_floor_quirk=floor)
            result = run_c2f(bb, image, QUESTION, build_focus("oracle", bb), cfg, doc={"hbox": box}, max_new_tokens=2)
            got[floor] = result.record
    base = {floor: record.c2f.levels[0] for floor, record in got.items()}
    assert base[False].grid_shape_hw[0] == base[True].grid_shape_hw[0] + 1
    assert max(base[True].scores) == 0.0  # no base token overlaps the box: the zoom is blind
    assert max(base[False].scores) == 1.0
    assert got[False].focus_recall.tile == 1.0


def test_budget_below_the_fixed_cost_is_refused(backbones, images):
    bb = backbones[VARIANTS[0]]
    cfg = C2FConfig(token_budget=bb.tokens_per_tile + 1)
    with pytest.raises(
        ConfigError, match=r"token_budget=17 cannot hold this image's fixed vision tokens: thumbnail 16"
    ):
        run_c2f(bb, images["mid"], QUESTION, build_focus("uniform", bb), cfg, max_new_tokens=2)


@pytest.mark.parametrize(("mode", "placeholders_scored"), [(None, False), ("faithful", True)])
def test_masked_key_mode_reaches_the_scorer(backbones, images, mode, placeholders_scored):
    bb = backbones[VARIANTS[0]]
    cfg = C2FConfig(masked_key_mode=mode)
    result = run_c2f(bb, images["mid"], QUESTION, build_focus("llm_attention", bb), cfg, max_new_tokens=2)
    last = result.record.c2f.levels[-1]
    assert last.tokens_valid < last.tokens_in_grid  # the zoom left placeholders
    zeros = sum(s == 0.0 for s in last.scores)
    assert (zeros == 0) if placeholders_scored else (zeros == last.tokens_in_grid - last.tokens_valid)


def test_resample_filter_is_a_validated_setting(backbones, images):
    with pytest.raises(ConfigError, match="resample"):
        C2FConfig(resample="bicubic")
    bb = backbones[VARIANTS[0]]
    focus = build_focus("uniform", bb)
    runs = {
        name: run_c2f(
            bb, images["mid"], QUESTION, focus, C2FConfig(resample=name), max_new_tokens=2, return_inputs_embeds=True
        )
        for name in ("bilinear", "area")
    }
    assert runs["bilinear"].inputs_embeds.shape == runs["area"].inputs_embeds.shape
    assert not torch.equal(runs["bilinear"].inputs_embeds, runs["area"].inputs_embeds)  # the filter reaches the pixels
