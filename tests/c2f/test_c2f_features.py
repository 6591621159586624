"""C2F feature reuse: the thumbnail and base-level grid of an image are encoded once for all its questions, the
answers stay identical (tiny LLaVA-NeXT / LLaVA-1.5 and the trained testbed checkpoint), and the record counts the
tiles reused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.c2f.driver import C2FConfig, run_c2f
from lrs_plugin.c2f.features import ImageFeatures
from lrs_plugin.focus.scorers import build_focus
from lrs_plugin.imagery.large_image import LargeImage
from lrs_plugin.reducers.registry import build_reducer, reducer_spec

VARIANTS = [("llava_next", "qwen2"), ("llava", "llama")]
QUESTIONS = (
    "What is next to the bridge?",
    "How many ships are docked in the harbor?\nAnswer the question using a single word or phrase.",
    "What is next to the bridge?",
)


@pytest.fixture(scope="module")
def backbones(make_tiny_checkpoint) -> dict[tuple[str, str], Backbone]:
    return {v: Backbone.from_pretrained(make_tiny_checkpoint(*v, text_layers=3), dtype="float32") for v in VARIANTS}


@pytest.fixture(scope="module")
def image(make_image_file):
    opened = LargeImage(make_image_file(480, 700))  # 3 tiled levels with 56 px tiles
    yield opened
    opened.close()


def _ask(bb: Backbone, image: Any, questions: tuple[str, ...], features: ImageFeatures | None, **cfg: Any) -> list:
    focus = build_focus("llm_attention", bb, {"layer": 1})
    config = C2FConfig(**cfg)
    return [
        run_c2f(bb, image, q, focus, config, max_new_tokens=5, features=features, return_inputs_embeds=True)
        for q in questions
    ]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(v))
@pytest.mark.parametrize("cfg", [{}, {"thumbnail": False, "num_zoom_steps": 2}, {"num_zoom_steps": 0}])
def test_reused_features_give_the_same_llm_input_and_answer(backbones, image, variant, cfg):
    bb = backbones[variant]
    cold = _ask(bb, image, QUESTIONS, None, **cfg)
    warm = _ask(bb, image, QUESTIONS, ImageFeatures(), **cfg)
    for c, w in zip(cold, warm, strict=True):
        assert w.answer == c.answer and torch.equal(w.inputs_embeds, c.inputs_embeds)
        assert c.record.tiles_reused is None
        rest = {k: v for k, v in w.record.to_dict().items() if k != "tiles_reused"}
        assert rest == c.record.to_dict()  # tiles_encoded still counts every tile used (the FLOPs convention)
    base_tiles = warm[0].record.c2f.levels[0].tiles_encoded + (0 if cfg.get("thumbnail") is False else 1)
    assert [w.record.tiles_reused for w in warm] == [0, base_tiles, base_tiles]


def test_features_follow_the_image_and_are_never_changed(backbones, image, make_image_file):
    bb = backbones[VARIANTS[0]]
    features = ImageFeatures()
    _ask(bb, image, QUESTIONS[:1], features)
    kept = features.get(image.key)
    assert kept is not None and kept.tiles == 1 + len(kept.base_grid.tiles)
    before = (kept.thumbnail.clone(), kept.base_grid.embeds.clone(), kept.base_grid.mask.clone())
    with LargeImage(make_image_file(480, 700, seed=4)) as other:
        (first,) = _ask(bb, other, QUESTIONS[:1], features)
        assert first.record.tiles_reused == 0 and features.get(image.key) is None  # one image kept at a time
        (again,) = _ask(bb, other, QUESTIONS[1:2], features)
        assert again.record.tiles_reused > 0
    assert torch.equal(before[0], kept.thumbnail) and torch.equal(before[1], kept.base_grid.embeds)
    assert torch.equal(before[2], kept.base_grid.mask)
    features.clear()
    assert features.get(other.key) is None


def test_the_c2f_reducer_reuses_with_reuse_true_only(backbones, image_path_for_reducer):
    bb = backbones[VARIANTS[0]]
    assert reducer_spec("c2f").reusable and not reducer_spec("c2f").question_independent
    options = {"focus": "llm_attention", "focus_options": {"layer": 1}}
    records = {}
    for reuse in (False, True):
        reducer = build_reducer("c2f", bb, dict(options), reuse=reuse)
        try:
            outs = [reducer.answer(image_path_for_reducer, q, doc={}, max_new_tokens=4) for q in QUESTIONS]
        finally:
            reducer.close()
        records[reuse] = outs
    assert [o.text for o in records[True]] == [o.text for o in records[False]]
    assert [o.record.tiles_reused for o in records[False]] == [None] * 3
    reused = [o.record.tiles_reused for o in records[True]]
    assert reused[0] == 0 and all(r > 0 for r in reused[1:])
    assert [o.record.tiles_encoded for o in records[True]] == [o.record.tiles_encoded for o in records[False]]


@pytest.fixture(scope="module")
def image_path_for_reducer(make_image_file) -> str:
    return str(make_image_file(480, 700))


def test_reused_features_give_the_same_answers_on_the_trained_testbed_checkpoint(tmp_path):
    from lrs_plugin.testbed.scenes import make_scene, scene_questions
    from lrs_plugin.testbed.table import shipped_checkpoint

    bb = Backbone.from_pretrained(shipped_checkpoint(), dtype="float32")
    scene = make_scene("eval", 0, 1)
    path = tmp_path / "scene.png"
    Image.fromarray(scene.pixels).save(path)
    questions = tuple(q["text"] for q in scene_questions(scene, np.random.default_rng(1)))
    answers = {}
    for reuse in (False, True):
        reducer = build_reducer("c2f", bb, {"focus": "rfm"}, reuse=reuse)
        try:
            answers[reuse] = [reducer.answer(str(path), q, doc={}, max_new_tokens=6) for q in questions]
        finally:
            reducer.close()
    assert [o.text for o in answers[True]] == [o.text for o in answers[False]]
    assert any(o.text for o in answers[False])
    assert [o.record.tiles_reused > 0 for o in answers[True]] == [False, True, True, True]
