"""C2F feature reuse: the thumbnail and base-level grid of an image are encoded once for all its questions, zoomed
tiles once while they stay in the bounded store, the answers stay identical (tiny LLaVA-NeXT / LLaVA-1.5 and the
trained testbed checkpoint), and the record counts the tiles reused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.c2f.driver import C2FConfig, run_c2f
from lrs_plugin.c2f.features import ImageFeatures
from lrs_plugin.errors import ConfigError
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
    reused = [w.record.tiles_reused for w in warm]
    assert reused[0] == 0 and reused[1] >= base_tiles
    assert reused[2] == warm[2].record.tiles_encoded  # the first question again: its zoomed levels are kept too
    if cfg.get("num_zoom_steps") != 0:
        assert reused[2] > base_tiles
    # Without the zoomed-tile store only the thumbnail and base level are reused; the answers are the same again.
    bare = _ask(bb, image, QUESTIONS, ImageFeatures(zoom_cache_bytes=0), **cfg)
    assert [w.record.tiles_reused for w in bare] == [0, base_tiles, base_tiles]
    assert [w.answer for w in bare] == [c.answer for c in cold]


def test_the_zoomed_tile_store_is_bounded_and_per_image():
    features = ImageFeatures(zoom_cache_bytes=3 * 2 * 4 * 4)  # three [1, 2, 4] float32 batches
    feats = [torch.full((1, 2, 4), float(i)) for i in range(5)]
    features.put("a", None)  # type: ignore[arg-type]
    for i in range(3):
        features.keep_zoomed("a", 1, [(0, i)], feats[i])
    assert features.zoomed_tiles == 3 and torch.equal(features.zoomed("a", 1, [(0, 0)]), feats[0])
    assert features.zoomed("a", 2, [(0, 0)]) is None  # another level
    assert features.zoomed("a", 1, [(0, 0), (0, 1)]) is None  # tiles encoded together only
    features.keep_zoomed("a", 1, [(0, 3)], feats[3])  # evicts the least recently used: (0, 1)
    assert features.zoomed("a", 1, [(0, 1)]) is None and features.zoomed("a", 1, [(0, 0)]) is not None
    assert features.zoomed("b", 1, [(0, 0)]) is None  # another image never sees them
    features.keep_zoomed("b", 1, [(0, 4)], feats[4])  # nor stores into the kept image's
    assert features.zoomed_tiles == 3
    features.put("b", None)  # type: ignore[arg-type]
    assert features.zoomed_tiles == 0
    with pytest.raises(ConfigError, match="zoom_cache_bytes must be an int >= 0; got -1"):
        ImageFeatures(zoom_cache_bytes=-1)


def test_a_tile_encoded_in_another_batch_may_differ_so_only_whole_batches_are_reused(backbones):
    """Why the store is keyed by the tiles encoded together: the tiny tower's bits depend on the batch."""
    bb = backbones[VARIANTS[0]]
    tiles = torch.randn(6, 3, bb.tile_size, bb.tile_size, generator=torch.Generator().manual_seed(0))
    together = bb.encode_tiles(tiles)
    assert torch.equal(bb.encode_tiles(tiles), together)  # the same batch: the same bits
    alone = torch.cat([bb.encode_tiles(tiles[i : i + 1]) for i in range(6)])
    assert torch.allclose(alone, together, atol=1e-3)  # another batch: equal up to float rounding (not always bits)


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
