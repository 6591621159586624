"""Pre-LLM baseline reducers on tiny random LLaVA checkpoints (no network, CPU)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers.downsample import downsampled_size
from lrs_plugin.reducers.random import RandomConfig, random_keep
from lrs_plugin.reducers.registry import build_reducer

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]


@pytest.fixture(scope="module")
def backbones(tiny_backbones) -> dict[tuple[str, str], Backbone]:
    return {v: tiny_backbones[v] for v in VARIANTS}


@pytest.fixture(scope="module")
def image_path(make_image_file) -> str:
    return str(make_image_file(90, 140, high=255))


def _ask(reducer, image_path: str):
    return reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=4)


def _newline_count(bb: Backbone, image_path: str) -> tuple[int, int]:
    """``(plain vision tokens N, image_newline tokens among them)`` of the image on ``bb``."""
    vision = bb.plain_vision_embeds(Image.open(image_path).convert("RGB"))
    newlines = 0 if bb.image_newline is None else int((vision == bb.image_newline).all(-1).sum())
    return int(vision.shape[0]), newlines


def test_random_keep_rankable_counts_every_token() -> None:
    tokens = torch.arange(20.0).view(10, 2)
    newline = torch.zeros(10, dtype=torch.bool)
    newline[[3, 9]] = True
    for budget in (1, 4, 10):
        kept, idx = random_keep(tokens, newline, budget, generator=torch.Generator().manual_seed(1))
        assert idx.tolist() == sorted(idx.tolist()) and len(idx) == budget
        assert torch.equal(kept, tokens[idx])
    _, idx_big = random_keep(tokens, newline, 50, generator=torch.Generator().manual_seed(1))
    assert idx_big.tolist() == list(range(10))  # budget >= N keeps everything
    _, idx0 = random_keep(tokens, newline, 0, generator=torch.Generator().manual_seed(1))
    assert len(idx0) == 1  # never zero tokens
    # newlines are not protected: some seed drops one of them
    dropped = [
        s
        for s in range(20)
        if not {3, 9} <= set(random_keep(tokens, newline, 4, generator=torch.Generator().manual_seed(s))[1].tolist())
    ]
    assert dropped


def test_random_keep_keep_mode_keeps_and_counts_newlines() -> None:
    tokens = torch.arange(20.0).view(10, 2)
    newline = torch.zeros(10, dtype=torch.bool)
    newline[[3, 9]] = True
    kept, idx = random_keep(tokens, newline, 6, generator=torch.Generator().manual_seed(1), newlines="keep")
    assert idx.tolist() == sorted(idx.tolist()) and {3, 9} <= set(idx.tolist()) and len(idx) == 6
    assert torch.equal(kept, tokens[idx])
    _, idx2 = random_keep(tokens, newline, 2, generator=torch.Generator().manual_seed(1), newlines="keep")
    assert len(idx2) == 3 and {3, 9} <= set(idx2.tolist())  # budget < newlines + 1: newlines + one drawn token
    with pytest.raises(ConfigError, match="newlines"):
        random_keep(tokens, newline, 4, generator=torch.Generator(), newlines="drop")


def test_random_keep_seeded() -> None:
    tokens = torch.randn(30, 4)
    newline = torch.zeros(30, dtype=torch.bool)
    for mode in ("rankable", "keep"):
        a = random_keep(tokens, newline, 7, generator=torch.Generator().manual_seed(5), newlines=mode)[1]
        b = random_keep(tokens, newline, 7, generator=torch.Generator().manual_seed(5), newlines=mode)[1]
        c = random_keep(tokens, newline, 7, generator=torch.Generator().manual_seed(6), newlines=mode)[1]
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_config_errors_name_field() -> None:
    with pytest.raises(ConfigError, match="budget"):
        RandomConfig(budget=0)
    with pytest.raises(ConfigError, match="seed"):
        RandomConfig(seed=-1)
    with pytest.raises(ConfigError, match="newlines.*'rankable'.*'keep'"):
        RandomConfig(newlines="drop")


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_keep_all_equals_none(backbones, image_path, variant) -> None:
    bb = backbones[variant]
    ref = _ask(build_reducer("none", bb), image_path)
    for options in ({}, {"newlines": "keep"}):
        out = _ask(build_reducer("random", bb, options), image_path)
        assert out.record.budget_met is True
        # Its own keys: budget_met, and the focus recall (None here: no box) that ``none`` leaves to the model.
        own = ("budget_met", "focus_tile_recall", "focus_token_recall")
        assert (
            out.text == ref.text
            and {k: v for k, v in out.record.to_dict().items() if k not in own} == ref.record.to_dict()
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_budget_respected_and_seeded(backbones, image_path, variant) -> None:
    bb = backbones[variant]
    ref = _ask(build_reducer("none", bb), image_path)
    n, newlines = _newline_count(bb, image_path)
    assert ref.record.vision_tokens_to_llm == n
    budget = newlines + 5  # reachable in both modes
    for mode in ("rankable", "keep"):
        options = {"budget": budget, "seed": 3, "newlines": mode}
        a = _ask(build_reducer("random", bb, options), image_path)
        b = _ask(build_reducer("random", bb, options), image_path)
        assert a.text == b.text and a.record == b.record
        assert a.record.vision_tokens_to_llm == budget and a.record.budget_met is True
        assert a.record.vision_tokens_encoded == ref.record.vision_tokens_encoded
    big = _ask(build_reducer("random", bb, {"budget": n + 10}), image_path)
    assert big.record.vision_tokens_to_llm == n and big.record.budget_met is True
    assert big.text == ref.text


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_keep_newlines_budget_not_met(backbones, image_path, variant) -> None:
    bb = backbones[variant]
    _, newlines = _newline_count(bb, image_path)
    rankable = _ask(build_reducer("random", bb, {"budget": 1}), image_path)
    assert rankable.record.vision_tokens_to_llm == 1 and rankable.record.budget_met is True
    keep = _ask(build_reducer("random", bb, {"budget": 1, "newlines": "keep"}), image_path)
    assert keep.record.vision_tokens_to_llm == newlines + 1
    assert keep.record.budget_met is (newlines == 0)
    if newlines:  # LLaVA-NeXT: the newlines alone fill the budget
        exact = _ask(build_reducer("random", bb, {"budget": newlines, "newlines": "keep"}), image_path)
        assert exact.record.vision_tokens_to_llm == newlines + 1 and exact.record.budget_met is False
    with pytest.raises(ConfigError, match="newlines"):
        build_reducer("random", bb, {"budget": 4, "newlines": "drop"})


@pytest.mark.parametrize(("w", "h", "mp"), [(140, 90, 5000), (6000, 2000, 1_000_000), (3, 1000, 10), (50, 50, None)])
def test_downsampled_size_invariants(w, h, mp) -> None:
    dw, dh = downsampled_size(w, h, mp)
    assert dw >= 1 and dh >= 1 and dw <= w and dh <= h
    if mp is not None:
        assert dw * dh <= max(mp, 1) or (dw == 1 and dh == 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_downsample_keep_all_equals_none_and_shrinks(backbones, image_path, variant) -> None:
    bb = backbones[variant]
    ref = _ask(build_reducer("none", bb), image_path)
    same = _ask(build_reducer("downsample", bb, {}), image_path)
    assert same.text == ref.text and same.record == ref.record
    small = _ask(build_reducer("downsample", bb, {"max_pixels": 400}), image_path)
    assert 1 <= small.record.vision_tokens_to_llm <= ref.record.vision_tokens_to_llm


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("random", {"budget": "abc"}, "random: budget must be an integer or None; got 'abc'"),
        ("random", {"budget": 64.5}, "random: budget must be an integer or None; got 64.5"),
        ("random", {"seed": "x"}, "random: seed must be an integer; got 'x'"),
        ("downsample", {"max_pixels": "1e6"}, "downsample: max_pixels must be an integer or None"),
    ],
)
def test_integer_options_are_never_truncated(backbones, name, options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_reducer(name, backbones[("llava", "llama")], options)


@pytest.mark.parametrize("variant", VARIANTS)
def test_integer_options_accept_model_args_forms(backbones, variant) -> None:
    assert build_reducer("random", backbones[variant], {"budget": "8", "seed": 3.0}).config.budget == 8
    assert build_reducer("downsample", backbones[variant], {"max_pixels": "None"}).config.max_pixels is None
