"""The testbed benchmark generator: deterministic, the LRS-VQA schema, scaled as specified, splits disjoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrs_plugin.data import lrs_vqa as lrs_data
from lrs_plugin.errors import ConfigError, DatasetSchemaError
from lrs_plugin.imagery.large_image import open_image
from lrs_plugin.testbed import scenes
from lrs_plugin.testbed.scenes import BASE_LONG_SIDE, CATEGORIES, COLORS, SHAPES, make_scene, write_lrs_synth

SUBSETS = {scenes.SUBSET: CATEGORIES}


@pytest.fixture(scope="module")
def tree(make_lrs_synth_tree):
    return make_lrs_synth_tree(split="eval", seed=0, num_scenes=6)


def test_rows_follow_the_lrs_vqa_schema_and_read_back(tree):
    rows = lrs_data.load_questions(tree / lrs_data.QUESTION_FILE, subsets=SUBSETS)
    assert len(rows) == 24
    assert [r["category"] for r in rows[:4]] == ["object shape", "object color", "count", "object presence"]
    docs = lrs_data.build_docs(tree, "SYNTH", subsets=SUBSETS)
    assert len(docs) == 24
    # every question has its box but a presence question about the colour the scene lacks
    assert all((d["hbox"] is None) == (d["category"] == "object presence" and d["ground_truth"] == "no") for d in docs)
    for doc in docs:
        w, h = doc["image_size"]
        if doc["hbox"] is not None:
            x1, y1, x2, y2 = doc["hbox"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        suffix = scenes.COUNT_SUFFIX if doc["category"] == "count" else scenes.NONCOUNT_SUFFIX
        assert doc["text"].endswith(suffix)
        with open_image(doc["image_path"]) as image:
            assert image.size == (w, h)
    suffixes = {d["image"].rsplit(".", 1)[1] for d in docs}
    assert suffixes == {"png", "tif"}


def test_the_default_lrs_vqa_table_refuses_the_testbed_rows(tree):
    with pytest.raises(DatasetSchemaError, match="unknown prefix 'SYNTH'"):
        lrs_data.load_questions(tree / lrs_data.QUESTION_FILE)


def test_answers_match_the_planted_objects(tree):
    objects = [json.loads(line) for line in (tree / "LRS_VQA" / "objects.jsonl").read_text().splitlines()]
    rows = lrs_data.load_questions(tree / lrs_data.QUESTION_FILE, subsets=SUBSETS)
    for i, entry in enumerate(objects):
        planted = entry["objects"]
        shape_q, color_q, count_q, presence_q = rows[4 * i : 4 * i + 4]
        targets = {tuple(box): (kind, color) for kind, color, box in planted if kind in SHAPES}
        assert targets[tuple(shape_q["hbox"])][0] == shape_q["ground_truth"]
        assert targets[tuple(color_q["hbox"])][1] == color_q["ground_truth"] in COLORS
        assert int(count_q["ground_truth"]) == sum(kind == "disc" for kind, _, _ in planted)
        # the named colour / shape identifies exactly one object of the scene
        assert sum(color == shape_q["text"].split("the ")[2].split(" object")[0] for _, color, _ in planted) == 1
        named = presence_q["text"].split("Is there a ")[1].split(" object?")[0]
        assert named in COLORS
        assert presence_q["ground_truth"] == ("yes" if named in {c for _, c, _ in planted} else "no")
        if presence_q["hbox"] is not None:  # the named target, a third one (not asked by shape or colour)
            assert targets[tuple(presence_q["hbox"])][1] == named
            assert presence_q["hbox"] not in (shape_q["hbox"], color_q["hbox"])
    answers = [r["ground_truth"] for r in rows if r["category"] == "object presence"]
    assert {"yes", "no"} <= set(answers)  # both answers occur in six scenes


def test_deterministic_and_splits_disjoint():
    a, b = make_scene("eval", 0, 3), make_scene("eval", 0, 3)
    assert np.array_equal(a.pixels, b.pixels) and a.objects == b.objects
    train = make_scene("train", 0, 3)
    assert train.size != a.size or not np.array_equal(train.pixels, a.pixels)


def test_scene_scale_relative_to_the_base_level():
    sides = [max(make_scene("eval", 1, i).size) / BASE_LONG_SIDE for i in (0, 1, 2, scenes.HUGE_EVERY - 1)]
    assert all(4 <= s <= 8 for s in sides[:3])
    assert 16 <= sides[3] <= 20


def test_targets_are_saturated_and_small(tree):
    scene = make_scene("eval", 0, 0)
    for obj in scene.targets():
        x1, y1, x2, y2 = obj.box
        assert 12 <= x2 - x1 <= 20
        centre = scene.pixels[(y1 + y2) // 2, (x1 + x2) // 2].astype(int)
        assert np.abs(centre - np.array(COLORS[obj.color])).max() == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"split": "test"}, "split='test' is not valid; valid: train, eval"), ({"num_scenes": 0}, "num_scenes=0")],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        write_lrs_synth(tmp_path, **kwargs)
