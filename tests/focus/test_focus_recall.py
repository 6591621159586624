"""Focus recall on hand-made boxes, tiles and token cells, and as c2f reports it."""

from __future__ import annotations

import pytest

from lrs_plugin.c2f.pyramid import build_pyramid
from lrs_plugin.focus.recall import box_center_tile, clipped_box, tile_recall, token_recall


def test_clipped_box():
    assert clipped_box([-5, -5, 10, 10], (8, 20)) == (0.0, 0.0, 8.0, 10.0)
    assert clipped_box([30, 30, 40, 40], (20, 20)) is None
    with pytest.raises(ValueError, match="4 finite numbers"):
        clipped_box([0, 0, 1], (10, 10))


@pytest.mark.parametrize(
    "box",
    [[-5, -5, 10, 10], [30, 30, 40, 40], [10.4, 20.6, 30.2, 19.9], [12, 5, 99, 10], [40, 30, -3, 2], [0, 0, 0, 5]],
)
def test_one_clipping_rule_for_data_recall_and_the_oracle(box):
    import torch

    from lrs_plugin.data.lrs_vqa import clip_box
    from lrs_plugin.focus.scorers import FocusContext, OracleScorer

    image_wh = (30, 20)
    clipped = clipped_box(box, image_wh)
    assert clipped == clip_box(box, image_wh, whole_pixels=False)
    widened = clip_box(box, image_wh)
    assert (widened is None) == (clipped is None)  # widening never empties nor fills a box
    cells = torch.tensor([[x, y, x + 5, y + 5] for y in range(0, 20, 5) for x in range(0, 30, 5)], dtype=torch.float32)
    ctx = FocusContext(box=tuple(float(v) for v in box), image_wh=image_wh, token_boxes=cells)
    hit = OracleScorer(None).score(
        torch.zeros(1, len(cells) + 1, 4),
        grid_span=slice(0, len(cells)),
        query_index=len(cells),
        key_mask=None,
        context=ctx,
    )
    expected = (
        [0.0] * len(cells)
        if clipped is None
        else [
            float(c[0] < clipped[2] and c[2] > clipped[0] and c[1] < clipped[3] and c[3] > clipped[1])
            for c in cells.tolist()
        ]
    )
    assert hit.tolist() == expected


def test_tile_of_the_box_centre_at_a_zoom_level():
    pyramid = build_pyramid(2000, 4000, tile=336, base_long_side=1008)  # H, W
    level = pyramid.levels[1]  # 2016 x 1008 content, 6 x 3 tiles
    assert level.grid_hw == (3, 6)
    # centre (3000, 500) in source px -> (1512, 252) in level px -> tile (0, 4)
    assert box_center_tile([2990, 490, 3010, 510], level) == (0, 4)
    assert tile_recall([2990, 490, 3010, 510], level, [(0, 4)]) == 1.0
    assert tile_recall([2990, 490, 3010, 510], level, [(0, 3), (1, 4)]) == 0.0
    assert tile_recall([5000, 5000, 5100, 5100], level, [(0, 4)]) is None


def test_token_recall_union_of_cells():
    box = (10, 10, 30, 30)  # area 400
    assert token_recall(box, (100, 100), [(0, 0, 20, 20)]) == pytest.approx(100 / 400)
    # two overlapping cells count once: [10,25]x[10,20] = 150
    assert token_recall(box, (100, 100), [(0, 0, 20, 20), (15, 0, 25, 20)]) == pytest.approx(150 / 400)
    assert token_recall(box, (100, 100), [(0, 0, 50, 50)]) == 1.0
    assert token_recall(box, (100, 100), [(float("nan"),) * 4, (40, 40, 50, 50)]) == 0.0
    assert token_recall((90, 90, 200, 200), (100, 100), [(90, 90, 95, 100)]) == pytest.approx(0.5)


def test_c2f_reports_recall_and_keep_all_is_one(tiny_backbones):
    import numpy as np

    from lrs_plugin.c2f.driver import C2FConfig, run_c2f
    from lrs_plugin.focus.scorers import build_focus
    from lrs_plugin.imagery.large_image import open_image
    from lrs_plugin.testbed.scenes import make_scene, scene_questions

    backbone = tiny_backbones[("llava_next", "qwen2")]
    scene = make_scene("eval", 0, 0)
    question = scene_questions(scene, np.random.default_rng(0))[0]
    doc = {"hbox": question["hbox"]}
    keep_all = C2FConfig(keep_ratio=1.0, select_ratio=1.0, newline_vote_quirk=False)
    with open_image(scene.pixels) as image:
        full = run_c2f(backbone, image, question["text"], build_focus("uniform", backbone), keep_all, doc=doc,
                       max_new_tokens=1)  # fmt: skip
        oracle = run_c2f(backbone, image, question["text"], build_focus("oracle", backbone), doc=doc, max_new_tokens=1)
        none = run_c2f(backbone, image, question["text"], build_focus("uniform", backbone), doc={}, max_new_tokens=1)
    assert full.record.focus_recall.tile == 1.0 and full.record.focus_recall.token == pytest.approx(1.0)
    assert oracle.record.focus_recall.tile == 1.0 and oracle.record.focus_recall.token > 0.5
    assert none.record.focus_recall.tile is None and none.record.focus_recall.token is None


def test_keep_all_reducers_report_full_recall_only_with_a_box_inside():
    from lrs_plugin.harness.record import FocusRecall
    from lrs_plugin.models.c2f_llava import _keep_all_recall

    assert _keep_all_recall("none", {"hbox": [1, 1, 5, 5]}, (10, 10)) == FocusRecall(tile=1.0, token=1.0)
    assert _keep_all_recall("anyres", {"hbox": [20, 20, 30, 30]}, (10, 10)) is None
    assert _keep_all_recall("none", {"hbox": None}, (10, 10)) is None
    assert _keep_all_recall("random", {"hbox": [1, 1, 5, 5]}, (10, 10)) is None
