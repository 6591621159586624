"""A stop string reached mid-answer ends generation: fewer tokens and decode FLOPs, the text cutting afterwards gives.

On tiny backbones, for a stock-layout reducer (``none``, through :meth:`Backbone.generate`), an in-LLM reducer
(``fastv``, its own decoding loop) and ``c2f``: the ids of the stopped answer are the first ids of the full answer,
up to the token with which the stop string first appears, and no token after it.
"""

from __future__ import annotations

import dataclasses

import pytest

from lrs_plugin.backbone import language
from lrs_plugin.backbone.stops import cut_at_stop
from lrs_plugin.flops.accounting import ModelDims, sample_tflops
from lrs_plugin.reducers.registry import build_reducer

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]
REDUCERS = {
    "none": {},  # stock layout, transformers' generate
    "fastv": {"r": 0.5},  # in-LLM: pruned prefill + the hand-written decoding loop
    "c2f": {"focus_options": {"layer": 1}},
}
MAX_NEW = 16


@pytest.fixture(scope="module")
def image_path(make_image_file) -> str:
    return str(make_image_file(150, 230, seed=4, high=255))


@pytest.fixture
def generated_ids(monkeypatch) -> list[tuple[int, ...]]:
    """The ``new_token_ids`` of every answer generated (``Backbone.generate`` and the in-LLM loop alike)."""
    seen: list[tuple[int, ...]] = []

    @dataclasses.dataclass(frozen=True)
    class Recorded(language.GenerationOutput):
        def __post_init__(self) -> None:
            seen.append(self.new_token_ids)

    monkeypatch.setattr(language, "GenerationOutput", Recorded)
    return seen


def _stop_inside(text: str) -> str:
    """Two characters of the answer's second word: a stop string that first occurs mid-answer."""
    words = text.split()
    assert len(words) >= 2, f"the tiny model should ramble over {MAX_NEW} tokens: {text!r}"
    stop = words[1][:2]
    assert text.find(stop) > 0
    return stop


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
@pytest.mark.parametrize("name", list(REDUCERS))
def test_a_stop_string_mid_answer_ends_generation(tiny_backbones, image_path, generated_ids, variant, name):
    bb = tiny_backbones[variant]
    reducer = build_reducer(name, bb, dict(REDUCERS[name]))
    try:
        full = reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=MAX_NEW)
        full_ids = generated_ids[-1]
        stop = _stop_inside(full.text)
        cut = reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=MAX_NEW, stop_strings=[stop, ""])
        cut_ids = generated_ids[-1]
    finally:
        reducer.close()
    decode = bb.tokenizer.decode
    # Same text as generating everything and cutting afterwards (the model's old rule, and the one cut function).
    assert cut.text == full.text.split(stop, 1)[0].strip() == cut_at_stop(decode(list(full_ids)), [stop])
    # Generation ended at the token that completes the stop string, no later.
    n = cut.record.new_tokens
    assert cut_ids == full_ids[:n] and n == len(cut_ids) < full.record.new_tokens
    assert stop in decode(list(cut_ids)).lstrip() and stop not in decode(list(cut_ids[:-1])).lstrip()
    # Only decoding is cheaper: the same tiles, tokens and prefill.
    dims = ModelDims.from_config(bb.config)
    stopped, whole = sample_tflops(cut.record, dims), sample_tflops(full.record, dims)
    assert stopped["llm_decode"] < whole["llm_decode"]
    for stage in ("vision_tower", "projector", "focus", "llm_prefill"):
        assert stopped[stage] == whole[stage], stage
    same = dataclasses.replace(cut.record, new_tokens=full.record.new_tokens)
    assert same == full.record
