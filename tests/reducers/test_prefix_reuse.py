"""Prefix reuse over every reducer that declares question-independent vision tokens: the same greedy answers with
and without reuse (tiny random LLaVA-1.5 and LLaVA-NeXT, SDPA and eager, float32; and the trained testbed
checkpoint, whose answers are not near-ties), the record saying what was reused, and the registry's declarations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lmms_eval.utils import simple_parse_args_string
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.tiny import TINY_REDUCER_OPTIONS
from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.settings import parse_model_args
from lrs_plugin.reducers.registry import (
    available_reducers,
    build_reducer,
    question_independent_reducers,
    reducer_spec,
)

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]
ATTN = ["sdpa", "eager"]
QUESTIONS = (
    "What color is the largest building?",
    "How many ships are docked in the harbor?\nAnswer the question using a single word or phrase.",
    "Is the image rural or urban?",
    "What color is the largest building?",  # asked again: the same answer
)
REUSE_KEYS = ("prefix_reused", "prefix_tokens_reused")
INDEPENDENT = question_independent_reducers()
# the tiny checkpoints' --model_args fragments, read as the model reads them
OPTIONS = {
    name: dict(parse_model_args({"pretrained": "x", "reducer": name, **simple_parse_args_string(args)}).reducer_options)
    for name, args in TINY_REDUCER_OPTIONS.items()
}
# reduced settings on top of the tiny ones, so that reuse is checked on the shortened token sequences too
REDUCED = {"random": {"budget": 20, "seed": 3}, "downsample": {"max_pixels": 56 * 56}}


@pytest.fixture(scope="module")
def load(make_tiny_checkpoint):
    """``load(path_or_variant, attn) -> Backbone`` (float32), each loaded once per module."""
    loaded: dict[tuple, Backbone] = {}

    def get(source: Any, attn: str) -> Backbone:
        key = (str(source), attn)
        if key not in loaded:
            path = make_tiny_checkpoint(*source) if isinstance(source, tuple) else source
            loaded[key] = Backbone.from_pretrained(path, dtype="float32", attn_implementation=attn)
        return loaded[key]

    return get


@pytest.fixture(scope="module")
def image_path(make_image_file) -> str:
    return str(make_image_file(150, 230, high=255))


def _answers(
    bb: Backbone, name: str, options: dict[str, Any], image: str, questions: tuple[str, ...], *, reuse: bool
) -> list[tuple[str, Any, tuple[int, ...]]]:
    """``(text, record, generated ids)`` of each question, asked in a row about one image by one reducer."""
    ids: list[tuple[int, ...]] = []
    original = bb.generate

    def spy(inputs_embeds: Any, **kwargs: Any) -> Any:
        out = original(inputs_embeds, **kwargs)
        ids.append(out.new_token_ids)
        return out

    bb.generate = spy  # type: ignore[method-assign]  (an instance attribute, removed below)
    reducer = build_reducer(name, bb, dict(options), reuse=reuse)
    try:
        outs = [reducer.answer(image, q, doc={}, max_new_tokens=6) for q in questions]
    finally:
        reducer.close()
        del bb.generate
    return [(o.text, o.record, i) for o, i in zip(outs, ids, strict=True)]


def _check_same_answers(cold: list, warm: list) -> None:
    assert [(t, i) for t, _, i in warm] == [(t, i) for t, _, i in cold]
    for (_, c, _), (_, w, _) in zip(cold, warm, strict=True):
        assert c.prefix_reused is None and c.prefix_tokens_reused is None  # reuse off: not recorded
        rest = {k: v for k, v in w.to_dict().items() if k not in REUSE_KEYS}
        assert rest == c.to_dict()  # every other figure (tokens, TFLOPs inputs, recall) unchanged
    records = [w for _, w, _ in warm]
    assert [r.prefix_reused for r in records] == [False] + [True] * (len(records) - 1)
    assert records[0].prefix_tokens_reused == 0
    prefix = records[1].prefix_tokens_reused
    assert all(r.prefix_tokens_reused == prefix for r in records[1:])
    assert records[1].vision_tokens_to_llm < prefix < records[1].llm_input_len  # prompt head + image tokens


def test_the_registry_declares_which_reducers_are_question_independent():
    # blind sends no image tokens: the question-independent head is a few system-prompt tokens, nothing to keep
    assert set(INDEPENDENT) == {"none", "anyres", "downsample", "visionzip", "prumerge", "random"}
    for name in available_reducers():
        spec = reducer_spec(name)
        assert spec.question_independent is (name in INDEPENDENT)
        if spec.question_independent:
            assert spec.stage == "pre_llm"  # the question only enters after the image tokens


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(v))
@pytest.mark.parametrize("name", INDEPENDENT)
def test_reuse_gives_the_same_answers_on_tiny_backbones(load, image_path, name, variant, attn):
    if variant[0] not in reducer_spec(name).archs:
        pytest.skip(f"{name} is defined for {reducer_spec(name).archs}")
    bb = load(variant, attn)
    options = {**OPTIONS.get(name, {}), **REDUCED.get(name, {})}
    cold = _answers(bb, name, options, image_path, QUESTIONS, reuse=False)
    warm = _answers(bb, name, options, image_path, QUESTIONS, reuse=True)
    _check_same_answers(cold, warm)


@pytest.fixture(scope="module")
def testbed_scene(tmp_path_factory) -> tuple[str, tuple[str, ...]]:
    """A planted-target scene of the testbed and its four questions (plus two more), as the testbed asks them."""
    from lrs_plugin.testbed.scenes import make_scene, scene_questions

    scene = make_scene("eval", 0, 0)
    path = tmp_path_factory.mktemp("testbed_scene") / "scene.png"
    Image.fromarray(scene.pixels).save(path)
    texts = tuple(q["text"] for q in scene_questions(scene, np.random.default_rng(0)))
    return str(path), texts + texts[:2]


@pytest.fixture(scope="module")
def testbed_checkpoint() -> Path:
    from lrs_plugin.testbed.table import shipped_checkpoint

    return shipped_checkpoint()


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("name", [n for n in INDEPENDENT if "llava_next" in reducer_spec(n).archs])
def test_reuse_gives_the_same_answers_on_the_trained_testbed_checkpoint(
    load, testbed_checkpoint, testbed_scene, name, attn
):
    bb = load(testbed_checkpoint, attn)
    path, questions = testbed_scene
    options = {**OPTIONS.get(name, {}), **REDUCED.get(name, {})}
    cold = _answers(bb, name, options, path, questions, reuse=False)
    warm = _answers(bb, name, options, path, questions, reuse=True)
    _check_same_answers(cold, warm)
    assert any(text for text, _, _ in cold)  # a trained model answers (the comparison is not between empty strings)


def test_reuse_follows_the_images_asked_about(load, image_path, make_image_file):
    bb = load(VARIANTS[0], "sdpa")
    other = str(make_image_file(150, 230, seed=5, high=255))
    order = [image_path, image_path, other, other, image_path]
    reducer = build_reducer("none", bb, {}, reuse=True)
    try:
        records = [reducer.answer(p, QUESTIONS[0], doc={}, max_new_tokens=2).record for p in order]
    finally:
        reducer.close()
    assert [r.prefix_reused for r in records] == [False, True, False, True, False]  # one prefix kept at a time


@pytest.mark.parametrize("name", sorted(set(available_reducers()) - set(INDEPENDENT)))
def test_reuse_leaves_question_dependent_reducers_as_they_are(load, image_path, name):
    bb = load(VARIANTS[1], "sdpa")
    options = OPTIONS.get(name, {})
    reducer = build_reducer(name, bb, dict(options), reuse=True)
    try:
        record = reducer.answer(image_path, QUESTIONS[0], doc={}, max_new_tokens=2).record
    finally:
        reducer.close()
    assert record.prefix_reused is None and record.prefix_tokens_reused is None


@pytest.mark.parametrize("value", ["true", 1, None])
def test_a_bad_reuse_value_is_refused_naming_it(load, value):
    with pytest.raises(ConfigError, match=rf"reuse must be true or false; got {value!r}"):
        build_reducer("none", load(VARIANTS[0], "sdpa"), {}, reuse=value)
