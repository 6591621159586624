"""Pre-LLM baseline reducers on tiny random LLaVA checkpoints (no network, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_plugin.backbone import Backbone
from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers import build_reducer
from lrs_plugin.reducers.downsample import downsampled_size
from lrs_plugin.reducers.random import RandomConfig, random_keep

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]


@pytest.fixture(scope="module")
def backbones(tiny_backbones) -> dict[tuple[str, str], Backbone]:
    return {v: tiny_backbones[v] for v in VARIANTS}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> str:
    path = Path(tmp_path_factory.mktemp("img")) / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(path)
    return str(path)


def _ask(reducer, image_path: str):
    return reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=4)


def test_random_keep_preserves_order_and_fixed_tokens() -> None:
    tokens = torch.arange(20.0).view(10, 2)
    fixed = torch.zeros(10, dtype=torch.bool)
    fixed[[3, 9]] = True
    kept, idx = random_keep(tokens, fixed, 4, generator=torch.Generator().manual_seed(1))
    assert idx.tolist() == sorted(idx.tolist()) and {3, 9} <= set(idx.tolist()) and len(idx) == 6
    assert torch.equal(kept, tokens[idx])
    _, idx0 = random_keep(tokens, fixed, 0, generator=torch.Generator().manual_seed(1))
    assert len(idx0) == 3  # never zero non-fixed tokens


def test_random_config_errors_name_field() -> None:
    with pytest.raises(ConfigError, match="budget"):
        RandomConfig(budget=0)
    with pytest.raises(ConfigError, match="seed"):
        RandomConfig(seed=-1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_keep_all_equals_none(backbones, image_path, variant) -> None:
    bb = backbones[variant]
    ref = _ask(build_reducer("none", bb), image_path)
    out = _ask(build_reducer("random", bb, {}), image_path)
    assert out.text == ref.text and out.stats == ref.stats


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_budget_respected_and_seeded(backbones, image_path, variant) -> None:
    bb = backbones[variant]
    ref = _ask(build_reducer("none", bb), image_path)
    a = _ask(build_reducer("random", bb, {"budget": 5, "seed": 3}), image_path)
    b = _ask(build_reducer("random", bb, {"budget": 5, "seed": 3}), image_path)
    assert a.text == b.text and a.stats == b.stats
    vision = bb.plain_vision_embeds(Image.open(image_path).convert("RGB"))
    newlines = 0 if bb.image_newline is None else int((vision == bb.image_newline).all(-1).sum())
    assert a.stats["vision_tokens_to_llm"] == 5 + newlines
    assert a.stats["vision_tokens_encoded"] == ref.stats["vision_tokens_encoded"]


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
    assert same.text == ref.text and same.stats == ref.stats
    small = _ask(build_reducer("downsample", bb, {"max_pixels": 400}), image_path)
    assert 1 <= small.stats["vision_tokens_to_llm"] <= ref.stats["vision_tokens_to_llm"]
