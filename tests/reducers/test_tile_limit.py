"""``max_tiles`` / ``pinpoints``: the anyres-pN limit every stock-layout reducer takes ("anyres-p144 w/ FastV")."""

from __future__ import annotations

import pytest

from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers._tiles import TileLimit
from lrs_plugin.reducers.registry import build_reducer

# Reducers that encode the stock anyres layout, with options that keep their own knobs small for the tiny models.
REDUCERS = {
    "anyres": {},
    "random": {"budget": 30},
    "downsample": {"max_pixels": 10**6},
    "fastv": {"k": 1},
    "pdrop": {},
    "visionzip": {"dominant": 3, "contextual": 1},
    "prumerge": {"adaptive": False, "reduction_ratio": 0.25},
}


@pytest.fixture(scope="module")
def big_image(make_image_file) -> str:
    return str(make_image_file(400, 400, seed=5, high=255))


@pytest.mark.parametrize("name", sorted(REDUCERS))
def test_max_tiles_square_grid_for_every_stock_layout_reducer(tiny_backbones, big_image, name) -> None:
    bb = tiny_backbones[("llava_next", "qwen2")]
    options = {**REDUCERS[name], "max_tiles": "9"}
    given = dict(options)
    out = build_reducer(name, bb, options).answer(big_image, "What is it?", doc={}, max_new_tokens=2)
    assert options == given  # the caller's mapping is not consumed
    assert out.record.tiles_encoded == 1 + 9  # a 3x3 grid: beyond the checkpoint's own 2x2 / 1x3 grids
    assert out.record.vision_tokens_encoded == 10 * bb.tokens_per_tile
    if name != "visionzip":  # visionzip records its limit inside its own settings
        assert out.record.max_tiles == 9
    else:
        assert out.record.visionzip.max_tiles == 9
    plain = build_reducer(name, bb, dict(REDUCERS[name])).answer(big_image, "What is it?", doc={}, max_new_tokens=2)
    assert plain.record.tiles_encoded == 5 and "max_tiles" not in plain.record.to_dict()


@pytest.mark.parametrize("name", sorted(set(REDUCERS) - {"anyres"}))
def test_max_tiles_refused_on_llava_1_5(tiny_backbones, name) -> None:
    with pytest.raises(ConfigError, match="llava_next"):
        build_reducer(name, tiny_backbones[("llava", "llama")], {**REDUCERS[name], "max_tiles": 4})


def test_checkpoint_mode_caps_the_checkpoint_grids(tiny_backbones, big_image) -> None:
    bb = tiny_backbones[("llava_next", "qwen2")]
    out = build_reducer("fastv", bb, {"max_tiles": 2, "pinpoints": "checkpoint"}).answer(
        big_image, "What is it?", doc={}, max_new_tokens=2
    )
    assert out.record.tiles_encoded == 1 + 2


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, None),
        ({"max_tiles": "None"}, None),
        ({"max_tiles": ""}, None),
        ({"max_tiles": 9.0}, 9),
        ({"max_tiles": " 25 "}, 25),
    ],
)
def test_pop_from_parses_model_args_values(given, expected) -> None:
    options = {**given, "budget": 3}
    limit = TileLimit.pop_from(options, "random")
    assert limit.max_tiles == expected and limit.pinpoints == "square" and options == {"budget": 3}


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"max_tiles": "many"}, "random: max_tiles must be an int >= 1 or None; got 'many'"),
        ({"max_tiles": 0}, "max_tiles must be an int >= 1"),
        ({"max_tiles": True}, "max_tiles must be an int >= 1"),
        ({"pinpoints": "diagonal"}, "pinpoints='diagonal' is not valid; valid: square, checkpoint"),
    ],
)
def test_pop_from_rejects_bad_values(given, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TileLimit.pop_from(dict(given), "random")


def test_non_square_count_needs_checkpoint_mode(tiny_backbones) -> None:
    with pytest.raises(ConfigError, match="k\\*k"):
        build_reducer("random", tiny_backbones[("llava_next", "qwen2")], {"max_tiles": 10})
