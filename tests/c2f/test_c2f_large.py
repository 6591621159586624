"""Oracle focus on a generated 20,000-px image: C2F zooms onto a known box without reading whole levels.

The image is a 1-bit PNG (a few KB on disk, 400 Mpx decoded) read through :class:`LargeImage`; the tiny test
backbone's 56-px tiles give a deep pyramid (base level 168 px). The box is drawn white on black, and the oracle scores
the grid tokens that overlap it.
"""

from __future__ import annotations

import pytest

from lrs_plugin.c2f.driver import C2FConfig, run_c2f
from lrs_plugin.c2f.pyramid import build_pyramid, tile_source_box
from lrs_plugin.focus.scorers import build_focus
from lrs_plugin.imagery.large_image import LargeImage

SIDE = 20_000
BOX = (12_010, 7_980, 12_630, 8_450)


def _overlaps(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    from lrs_plugin.data.synthetic.lrs_vqa import _write_bilevel_png

    path = tmp_path_factory.mktemp("huge") / "scene.png"
    _write_bilevel_png(path, (SIDE, SIDE), [list(BOX)])
    return path


@pytest.fixture(scope="module")
def backbone(make_tiny_checkpoint):
    from lrs_plugin.backbone.adapter import Backbone

    return Backbone.from_pretrained(make_tiny_checkpoint("llava_next", "qwen2"))


@pytest.mark.parametrize("steps", [1, 3])
def test_oracle_on_20k_image_selects_the_box_within_budget(huge_png, backbone, steps):
    budget = 160
    pyramid = build_pyramid(SIDE, SIDE, tile=56, base_long_side=168)
    assert len(pyramid.levels) >= 6
    config = C2FConfig(
        num_zoom_steps=steps, newline_vote_quirk=False, select_ratio=0.05, token_budget=budget, max_tiles_per_level=8
    )
    with LargeImage(huge_png) as image:
        result = run_c2f(
            backbone,
            image,
            "What is in the box?",
            build_focus("oracle", backbone),
            config,
            doc={"hbox": list(BOX)},
            max_new_tokens=2,
        )
    levels = result.record.c2f.levels
    assert [lvl.level for lvl in levels] == list(range(steps + 1))
    finest = pyramid.levels[levels[-1].level]
    chosen = [tuple(t) for t in levels[-1].tiles]
    box_tiles = {
        (r, c)
        for r in range(finest.grid_hw[0])
        for c in range(finest.grid_hw[1])
        if _overlaps(tile_source_box(finest, r, c), BOX)
    }
    assert box_tiles and box_tiles <= set(chosen), "the finest visited level's tiles must cover the box"
    assert len(chosen) < finest.num_tiles  # the level was not read whole
    assert result.record.vision_tokens_to_llm <= budget
    assert result.record.tiles_encoded <= 1 + pyramid.levels[0].num_tiles + 8 * steps
