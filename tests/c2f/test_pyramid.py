"""Dynamic Image Pyramid geometry: method.md worked examples, the original's quirks, and invariants over many sizes."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from lrs_plugin.c2f.pyramid import (
    LevelGeometry,
    build_pyramid,
    child_tiles,
    dip_scales,
    level_geometry,
    newline_indices,
    tile_box_in_level,
    tile_source_box,
    tiles,
    unpadded_grid_hw,
    vote_tiles,
    vote_tiles_exact,
)
from lrs_plugin.errors import ConfigError

# --------------------------------------------------------------------------------------------------------------------
# method.md §1.3 worked examples (image given as W x H, geometry as (h, w))

WORKED = [
    # (W, H), thumbnail hw, level 0 hw, level 0 grid, level 1 hw, level 1 grid, number of deeper levels, finest hw
    ((4000, 4000), (336, 336), (1008, 1008), (3, 3), (2016, 2016), (6, 6), 1, (4032, 4032)),
    ((7000, 6000), (288, 336), (864, 1008), (3, 3), (1680, 1960), (5, 6), 2, (6048, 7056)),
    # method.md says "4 more levels"; the §1.2 rule gives 3 (scales 1/4, 1/2, 1 after 0.084 and 1/8).
    ((12000, 5000), (140, 336), (420, 1008), (2, 3), (672, 1613), (2, 5), 3, (5040, 12096)),
    ((1500, 1200), (269, 336), (806, 1008), (3, 3), (1344, 1680), (4, 5), 0, (1344, 1680)),
    ((27328, 27328), (336, 336), (1008, 1008), (3, 3), (2016, 2016), (6, 6), 4, (27552, 27552)),
]


@pytest.mark.parametrize(("wh", "thumb", "hw0", "grid0", "hw1", "grid1", "deeper", "finest"), WORKED)
def test_worked_examples(wh, thumb, hw0, grid0, hw1, grid1, deeper, finest):
    pyramid = build_pyramid(wh[1], wh[0])
    assert pyramid.image_hw == (wh[1], wh[0])
    assert pyramid.thumbnail.resize_hw == thumb
    assert (pyramid.thumbnail.grid_hw, pyramid.thumbnail.padded_hw) == ((1, 1), (336, 336))
    assert (pyramid.levels[0].resize_hw, pyramid.levels[0].grid_hw) == (hw0, grid0)
    assert (pyramid.levels[1].resize_hw, pyramid.levels[1].grid_hw) == (hw1, grid1)
    assert len(pyramid.levels) - 2 == deeper
    assert pyramid.levels[-1].resize_hw == finest
    assert pyramid.levels[-1].scale == 1.0


def test_worked_example_details_7000x6000():
    assert dip_scales(6000, 7000) == [1.0, 0.5, 0.25, 1008 / 7000, 336 / 7000]
    level1 = build_pyramid(6000, 7000).levels[1]
    assert level1.content_hw == (1500, 1750)  # up-scaled by k = min(1680/1500, 2016/1750) = 1.12
    assert level1.padded_hw == (1680, 2016)
    assert level1.num_tiles == 30
    assert level1.resize_ratio_hw == (1680 / 6000, 1960 / 7000)
    assert level1.token_grid_hw() == (60, 72)


def test_small_image_has_one_tiled_level():
    pyramid = build_pyramid(750, 1000)
    assert dip_scales(750, 1000) == [1.0, 336 / 1000]
    assert [lvl.resize_hw for lvl in pyramid.levels] == [(756, 1008)]  # up-scaled (k = 1.008) to fill its grid
    # just above 1008 px the full-resolution level 1 gets up-scaled to the next whole tile count
    assert [lvl.resize_hw for lvl in build_pyramid(768, 1024).levels] == [(756, 1008), (1008, 1344)]
    assert pyramid.next_level_index(0) == 0  # the "zoom" re-encodes tiles of the same level (§3.3.1)
    assert build_pyramid(6000, 7000).next_level_index(0) == 1
    with pytest.raises(IndexError, match="level index 1 out of range 0..0"):
        pyramid.next_level_index(1)


# --------------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("height", "width", "resize_hw"),
    [(336, 336, (336, 336)), (200, 336, (200, 336)), (336, 120, (336, 120)), (1, 1, (336, 336)), (150, 200, (252, 336)),
     (90, 300, (101, 336))],
)  # fmt: skip
def test_images_not_longer_than_a_tile_are_one_tile_that_is_also_the_thumbnail(height, width, resize_hw):
    # The released slice mode (method.md §3.8): the image up-scaled to fill one tile, which serves as the thumbnail
    # and as the grid; level_geometry's rule at scale 1.0 gives that up-scale.
    assert dip_scales(height, width) == [1.0]
    pyramid = build_pyramid(height, width)
    assert len(pyramid.levels) == 1 and pyramid.thumbnail == pyramid.levels[0]
    level = pyramid.levels[0]
    assert level.grid_hw == (1, 1) and level.resize_hw == resize_hw and max(resize_hw) == 336


@pytest.mark.parametrize(("height", "width"), [(3, 5000), (5000, 2), (1, 700)])
def test_aspect_ratios_the_thumbnail_cannot_hold_are_refused_naming_size_and_ratio(height, width):
    with pytest.raises(ConfigError, match=rf"{width}x{height} px \(W x H, aspect ratio \d+:1\).*rounds to 0 px"):
        build_pyramid(height, width)


@pytest.mark.parametrize(
    ("height", "width", "name"), [(0, 1000, "height"), (1000, -3, "width"), (1000.0, 1000, "height"), (True, 5, "h")]
)
def test_non_positive_or_non_int_sizes_are_refused(height, width, name):
    with pytest.raises(ConfigError, match=f"{name}.*must be a positive int"):
        dip_scales(height, width)


def test_bad_tile_settings_are_refused():
    with pytest.raises(ConfigError, match="base_long_side must be larger than tile"):
        dip_scales(2000, 2000, tile=336, base_long_side=336)
    with pytest.raises(ConfigError, match="tile must be a positive int"):
        dip_scales(2000, 2000, tile=0)
    with pytest.raises(ConfigError, match="scale must be a positive finite number"):
        level_geometry(2000, 2000, 0.0)


def test_side_rounding_to_zero_is_refused():
    # thumbnail of a 1 x 5000 strip: round(1 * 336 / 5000) == 0
    with pytest.raises(ConfigError, match=r"5000x1 px .*rounds to 0 px in the 336-px thumbnail"):
        build_pyramid(1, 5000)
    with pytest.raises(ConfigError, match=r"5000x1 px .* is 336x0 px: a side rounds to 0 px"):
        level_geometry(1, 5000, 336 / 5000)


def test_inconsistent_level_is_refused():
    with pytest.raises(ConfigError, match="needs grid_hw=ceil"):
        LevelGeometry(1.0, (600, 600), (600, 600), (1008, 1008), (3, 3), (600, 600))
    with pytest.raises(ConfigError, match="padded_hw"):
        LevelGeometry(1.0, (700, 600), (700, 600), (1000, 672), (3, 2), (700, 600))


def test_tile_index_out_of_range():
    level = build_pyramid(6000, 7000).levels[0]
    with pytest.raises(IndexError, match=r"tile \(3, 0\) outside the 3x3 grid"):
        tile_box_in_level(level, 3, 0)
    with pytest.raises(IndexError):
        tile_source_box(level, 0, -1)


# --------------------------------------------------------------------------------------------------------------------
# unpadding (§2.3) and tile votes (§3.3)


def test_unpad_example_7000x6000():
    pyramid = build_pyramid(6000, 7000)
    base, level1 = pyramid.levels[0], pyramid.levels[1]
    assert base.token_grid_hw() == (36, 36)
    rows, cols = unpadded_grid_hw(base.token_grid_hw(), (7000, 6000))  # level 0: the source image's (W, H)
    assert (rows, cols) == (30, 36)
    assert rows * (cols + 1) == 1110
    # level 1: its own resize_hw as (w, h); 1960 * (60 / 1680) == 70.0
    assert unpadded_grid_hw(level1.token_grid_hw(), (level1.resize_hw[1], level1.resize_hw[0])) == (60, 70)


def test_unpad_truncates_and_crops_columns():
    assert unpadded_grid_hw((36, 36), (6000, 7000)) == (36, 30)  # portrait: columns cropped
    assert unpadded_grid_hw((24, 36), (12000, 5000)) == (15, 36)
    assert unpadded_grid_hw((36, 36), (1000, 1000)) == (36, 36)


def test_unpad_floor_false_keeps_the_partial_row_or_column():
    # 472 x 738 portrait with a 6 x 4 token map (96-px base of 32-px tiles, 16-px tokens): 472 * 6 / 738 = 3.84
    assert unpadded_grid_hw((6, 4), (472, 738), per_tile=2) == (6, 3)  # released: the 4th column is dropped
    assert unpadded_grid_hw((6, 4), (472, 738), per_tile=2, floor=False) == (6, 4)
    assert unpadded_grid_hw((24, 36), (12000, 5000), floor=False) == (15, 36)  # 15.0 exactly: nothing to round
    assert unpadded_grid_hw((24, 36), (12000, 5001), floor=False) == (16, 36)  # 15.003 -> 16
    assert unpadded_grid_hw((36, 36), (1000, 1000), floor=False) == (36, 36)  # never beyond the padded map
    base = build_pyramid(6000, 7000).levels[0]
    assert unpadded_grid_hw(base.token_grid_hw(), (7000, 6000), floor=False) == (31, 36)  # 30.86 -> 31


def test_unpad_errors():
    with pytest.raises(ConfigError, match=r"token grid \(3, 3\) is not a multiple of per_tile=12"):
        unpadded_grid_hw((3, 3), (7000, 6000))
    base = build_pyramid(700, 27328).levels[0]  # a 38:1 strip: the base level keeps less than one token row
    with pytest.raises(ConfigError, match="leaves 0x36"):
        unpadded_grid_hw(base.token_grid_hw(), (27328, 700))


def test_newline_indices():
    assert newline_indices((3, 5)) == [4, 9, 14]
    assert newline_indices((30, 37))[-1] == 30 * 37 - 1


def test_the_grid_reads_newlines_with_the_pyramid_rule():
    from lrs_plugin.c2f.grid import grid_newline_indices

    for shape in ((3, 5), (30, 37), (1, 2)):
        assert grid_newline_indices(shape, True) == newline_indices(shape)
        assert grid_newline_indices(shape, False) == []


def test_vote_tiles_maps_rows_and_columns_like_the_original():
    # 7000x6000: grid (30, 37) -> level-1 tiles (5, 6)
    assert vote_tiles([0, 0, 1], (30, 37), (5, 6)) == [(0, 0)]
    assert vote_tiles([18], (30, 37), (5, 6)) == [(0, 2)]  # floor(18 * 6 / 37) = 2
    assert vote_tiles([29 * 37 + 35, 6 * 37 + 7], (30, 37), (5, 6)) == [(1, 1), (4, 5)]
    with pytest.raises(IndexError, match=r"token index 1110 outside the 30x37 grid \(0..1109\)"):
        vote_tiles([1110], (30, 37), (5, 6))


def test_vote_tiles_reproduces_float32_floor():
    # exact integer arithmetic gives floor(11 * 26 / 22) = 13; torch's float32 product gives 12.99999... -> 12
    assert vote_tiles([11 * 5], (22, 5), (26, 1)) == [(12, 0)]


def test_vote_tiles_matches_torch_expression():
    torch = pytest.importorskip("torch")
    rng = random.Random(0)
    for _ in range(200):
        rows, width = rng.randint(1, 80), rng.randint(2, 80)
        nb_h, nb_w = rng.randint(1, 90), rng.randint(1, 90)
        idx = torch.tensor(rng.sample(range(rows * width), min(40, rows * width)))
        r, c = torch.div(idx, width, rounding_mode="floor"), torch.remainder(idx, width)
        pos = torch.stack([torch.floor(r * (nb_h / rows)).long(), torch.floor(c * (nb_w / width)).long()], dim=1)
        expected = sorted(map(tuple, torch.unique(pos, dim=0).tolist()))
        assert vote_tiles(idx.tolist(), (rows, width), (nb_h, nb_w)) == expected


def test_vote_tiles_exact_follows_pixels():
    pyramid = build_pyramid(6000, 7000)
    base, level1 = pyramid.levels[:2]
    # token (0, 18) shows level-0 x in [504, 532) -> source [3500, 3694.4) -> level-1 x in [980, 1034.4): tiles 2, 3
    assert vote_tiles_exact([18], (30, 37), base, level1) == [(0, 2), (0, 3)]
    assert vote_tiles_exact(newline_indices((30, 37)), (30, 37), base, level1) == []
    with pytest.raises(ValueError, match="levels of different pyramids"):
        vote_tiles_exact([0], (30, 37), base, build_pyramid(6000, 7001).levels[1])


# --------------------------------------------------------------------------------------------------------------------
# invariants over many sizes (W x H) and aspect ratios


def _random_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = []
    for _ in range(n):
        long_side = rng.randint(337, 30000)
        short_side = max(1, round(long_side / math.exp(rng.uniform(0, math.log(25)))))
        sizes.append((long_side, short_side) if rng.random() < 0.5 else (short_side, long_side))
    return sizes


SIZES = [
    (337, 337),
    (500, 400),
    (1024, 1024),
    (1024, 768),
    (768, 1024),
    (1008, 1008),
    (1009, 1000),
    (1500, 1200),
    (2016, 2016),
    (2017, 2016),
    (4000, 4000),
    (7000, 6000),
    (6000, 7000),
    (12000, 5000),
    (1267, 25207),
    (25207, 1267),
    (27328, 27328),
    (27328, 1024),
    (1024, 27328),
    *_random_sizes(24),
]


def _chain(intervals: list[tuple[float, float]], end: float) -> bool:
    """Intervals in order, each non-empty, tiling [0, end] without gap or overlap."""
    edges = [0.0] + [hi for _, hi in intervals]
    return all(lo == edges[i] and hi > lo for i, (lo, hi) in enumerate(intervals)) and edges[-1] == end


@pytest.mark.parametrize("wh", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_pyramid_invariants(wh):
    width, height = wh
    pyramid = build_pyramid(height, width)
    scales = dip_scales(height, width)
    assert all(a > b for a, b in itertools.pairwise(scales))
    assert [lvl.scale for lvl in pyramid.levels] == scales[-2::-1]
    assert pyramid.levels[-1].scale == 1.0
    base = pyramid.levels[0]
    assert base.grid_hw[0] <= 3 and base.grid_hw[1] <= 3
    if max(height, width) > 1008:
        assert max(base.resize_hw) == 1008
        assert 1 < pyramid.levels[1].scale / base.scale <= 2
        assert pyramid.levels[1].grid_hw[0] <= 6 and pyramid.levels[1].grid_hw[1] <= 6
    else:
        assert len(pyramid.levels) == 1
    assert max(pyramid.thumbnail.resize_hw) == 336 and pyramid.thumbnail.padded_hw == (336, 336)

    for level in (pyramid.thumbnail, *pyramid.levels):
        (rh, rw), (ph, pw), (gh, gw) = level.resize_hw, level.padded_hw, level.grid_hw
        assert rh >= level.content_hw[0] and rw >= level.content_hw[1]  # up-scaled (k >= 1)
        assert rh == ph or rw == pw  # the limiting side fills its grid exactly
        assert level.resize_ratio_hw == (rh / height, rw / width)
        grid = tiles(level)
        assert grid == sorted(grid) and len(grid) == level.num_tiles == gh * gw
        content_area = 0
        for row, col in grid:
            x0, y0, x1, y1 = tile_box_in_level(level, row, col)
            assert 0 <= x0 < x1 <= pw and 0 <= y0 < y1 <= ph and (x1 - x0, y1 - y0) == (336, 336)
            content_area += (min(x1, rw) - x0) * (min(y1, rh) - y0)  # every tile holds content
            assert min(x1, rw) > x0 and min(y1, rh) > y0
        assert content_area == rh * rw  # tiles cover the content exactly once
        boxes = {(r, c): tile_source_box(level, r, c) for r, c in grid}
        assert _chain([(boxes[r, 0][1], boxes[r, 0][3]) for r in range(gh)], height)
        assert _chain([(boxes[0, c][0], boxes[0, c][2]) for c in range(gw)], width)
        assert all(boxes[r, c][1::2] == boxes[r, 0][1::2] and boxes[r, c][::2] == boxes[0, c][::2] for r, c in grid)

    # unpadded base grid and the faithful votes stay on the next level's grid; the last column is always voted
    rows, cols = unpadded_grid_hw(base.token_grid_hw(), (width, height))
    token_h, token_w = base.token_grid_hw()
    assert rows <= token_h and cols <= token_w and (rows == token_h or cols == token_w)
    shape = (rows, cols + 1)
    next_level = pyramid.levels[pyramid.next_level_index(0)]
    nb_h, nb_w = next_level.grid_hw
    all_votes = vote_tiles(range(rows * (cols + 1)), shape, next_level.grid_hw)
    assert all(0 <= r < nb_h and 0 <= c < nb_w for r, c in all_votes)
    newline_votes = vote_tiles(newline_indices(shape), shape, next_level.grid_hw)
    assert {c for _, c in newline_votes} == {nb_w - 1}
    if rows >= nb_h:
        assert newline_votes == [(r, nb_w - 1) for r in range(nb_h)]
    # the geometric votes of all real tokens are the next-level tiles overlapping the window the token grid shows
    (rh, rw), (rh1, rw1) = base.resize_hw, next_level.resize_hw
    shown_y = Fraction(min(rows * 28, rh) * height, rh)
    shown_x = Fraction(min(cols * 28, rw) * width, rw)
    expected = [
        (r, c)
        for r, c in tiles(next_level)
        if r * 336 * height / Fraction(rh1) < shown_y and c * 336 * width / Fraction(rw1) < shown_x
    ]
    assert vote_tiles_exact(range(rows * (cols + 1)), shape, base, next_level) == expected


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return min(a[1], b[1]) > max(a[0], b[0])


@pytest.mark.parametrize("wh", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_parent_child_maps(wh):
    width, height = wh
    levels = build_pyramid(height, width).levels
    for parent, child in list(itertools.pairwise(levels)) or [(levels[0], levels[0])]:
        p_rows = [tile_source_box(parent, r, 0)[1::2] for r in range(parent.grid_hw[0])]
        p_cols = [tile_source_box(parent, 0, c)[::2] for c in range(parent.grid_hw[1])]
        c_rows = [tile_source_box(child, r, 0)[1::2] for r in range(child.grid_hw[0])]
        c_cols = [tile_source_box(child, 0, c)[::2] for c in range(child.grid_hw[1])]
        has_parent = set()
        for pr, pc in tiles(parent):
            kids = child_tiles(parent, pr, pc, child)
            assert kids == sorted(kids) and kids
            # exactly the child tiles whose source window overlaps the parent's (brute force, axis by axis)
            expected_rows = [r for r, iv in enumerate(c_rows) if _overlap(iv, p_rows[pr])]
            expected_cols = [c for c, iv in enumerate(c_cols) if _overlap(iv, p_cols[pc])]
            assert kids == list(itertools.product(expected_rows, expected_cols))
            # together the children cover the parent's window
            assert c_rows[kids[0][0]][0] <= p_rows[pr][0] and c_rows[kids[-1][0]][1] >= p_rows[pr][1]
            assert c_cols[kids[0][1]][0] <= p_cols[pc][0] and c_cols[kids[-1][1]][1] >= p_cols[pc][1]
            has_parent.update(kids)
        assert has_parent == set(tiles(child))  # every finer tile has at least one parent
    assert child_tiles(levels[0], 0, 0, levels[0]) == [(0, 0)]
    with pytest.raises(ValueError, match="levels of different pyramids"):
        child_tiles(levels[0], 0, 0, build_pyramid(height + 1, width).levels[0])


def test_child_tiles_example_7000x6000():
    base, level1 = build_pyramid(6000, 7000).levels[:2]
    assert tile_source_box(base, 0, 0) == (0.0, 0.0, 7000 / 3, 7000 / 3)  # 336 px * 7000 / 1008, * 6000 / 864
    assert child_tiles(base, 0, 0, level1) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # levels do not nest: child (1, 1) shows source [1200, 2400) on both axes, beyond the parent's 2333.3
    assert tile_source_box(level1, 1, 1) == (1200.0, 1200.0, 2400.0, 2400.0)
