"""Contract over EVERY registered reducer on tiny backbones: an answer, never zero tokens, budget, keep-all == none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lrs_plugin.backbone import Backbone
from lrs_plugin.reducers import available_reducers, build_reducer, reducer_spec

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]
BUDGET = 20

# name -> (keep-everything options or None when the method cannot equal ``none`` by design, budget options).
TABLE: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {
    "none": ({}, {}),
    "random": ({}, {"budget": BUDGET, "seed": 0}),
    "downsample": ({}, {"max_pixels": 56 * 56}),
    "fastv": ({"r": 0.0}, {"budget": BUDGET}),
    "pdrop": ({"lam": 1.0}, {"budget": BUDGET}),
    "c2f": (
        None,
        {"token_budget": 200, "focus_options": {"layer": 1}},
    ),  # C2F encodes its own pyramid tiles, never the stock layout
}


@pytest.fixture(scope="module")
def backbones(tiny_backbones) -> dict[tuple[str, str], Backbone]:
    return {v: tiny_backbones[v] for v in VARIANTS}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> str:
    path = Path(tmp_path_factory.mktemp("img")) / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 230, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_every_registered_reducer_has_a_table_entry() -> None:
    missing = sorted(set(available_reducers()) - set(TABLE))
    assert not missing, f"add {missing} to TABLE in tests/test_reducer_contract.py"


def _ask(name: str, backbone: Backbone, options: dict[str, Any], image_path: str):
    reducer = build_reducer(name, backbone, dict(options))
    try:
        return reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=4)
    finally:
        reducer.close()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "_".join(v))
@pytest.mark.parametrize("name", available_reducers())
def test_contract(backbones, image_path, variant, name) -> None:
    assert name in TABLE, f"reducer {name!r} has no entry in TABLE"
    keep_all, budgeted = TABLE[name]
    bb = backbones[variant]
    ref = _ask("none", bb, {}, image_path)
    out = _ask(name, bb, budgeted, image_path)
    assert isinstance(out.text, str)
    assert out.stats["vision_tokens_to_llm"] >= 1
    for key in ("tiles_encoded", "vision_tokens_encoded", "llm_input_len", "new_tokens", "focus_passes"):
        assert key in out.stats
    stage = reducer_spec(name).stage
    if stage in ("pre_llm", "pyramid"):  # budget = vision tokens sent to the LLM
        if "budget" in budgeted:  # random: the budget counts the non-newline tokens; newlines ride along
            vision = bb.plain_vision_embeds(Image.open(image_path).convert("RGB"))
            newlines = 0 if bb.image_newline is None else int((vision == bb.image_newline).all(-1).sum())
            assert out.stats["vision_tokens_to_llm"] <= budgeted["budget"] + newlines
        if "token_budget" in budgeted:
            assert out.stats["vision_tokens_to_llm"] <= budgeted["token_budget"]
    else:  # in_llm: budget = vision tokens averaged over the LLM layers
        assert out.stats["equivalent_vision_tokens"] <= budgeted["budget"] or not out.stats["budget_met"]
        assert min(out.stats["vision_tokens_per_layer"]) >= 1
    if keep_all is not None:
        same = _ask(name, bb, keep_all, image_path)
        assert same.text == ref.text
        assert same.stats["vision_tokens_to_llm"] == ref.stats["vision_tokens_to_llm"]
