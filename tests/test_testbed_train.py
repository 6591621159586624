"""The testbed model's training: config checks, auxiliary cell labels, and a miniature run (loss falls, the same
run twice gives the same curve, the checkpoint loads with the stock transformers classes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrs_plugin.errors import ConfigError
from lrs_plugin.testbed.scenes import PlantedObject
from lrs_plugin.testbed.train import AUX_COLORS, AUX_SHAPES, TrainConfig, cell_labels, train_testbed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"batch_size": True},
        {"lr": -1.0},
        {"format_mix": {"stock_whole": 1, "bogus": 1}},
        {"format_mix": {"stock_whole": 0.0}},
        {"seed": -1},
        {"curriculum": 1.5},
        {"aux_weight": float("inf")},
    ],
)
def test_bad_train_configs_are_refused(kwargs):
    with pytest.raises(ConfigError, match="TrainConfig"):
        TrainConfig(**kwargs)


def test_cell_labels_mark_the_patch_holding_each_object_centre():
    objects = [
        PlantedObject("triangle", "red", (10, 10, 26, 26)),  # centre (18, 18): patch (row 2, col 2) of tile 0
        PlantedObject("disc", "white", (40, 2, 52, 14)),  # centre (46, 8): tile 1, patch (1, 1)
        PlantedObject("distractor", "neutral", (0, 0, 8, 8)),  # never labelled
    ]
    tiles = [(0, 0, 32, 32), (32, 0, 64, 32)]
    labels = cell_labels(objects, tiles, patches=4, level_scale=1.0)
    assert labels.shape == (2, 16, 2)
    assert tuple(labels[0, 2 * 4 + 2]) == (AUX_COLORS.index("red"), AUX_SHAPES.index("triangle"))
    assert tuple(labels[1, 1 * 4 + 1]) == (AUX_COLORS.index("white"), 0)
    assert int((labels[..., 0] > 0).sum()) == 2
    # at a quarter of the resolution the 16-px triangle is 4 level px wide: colour kept, shape unlabelled
    small = cell_labels(objects, [(0, 0, 128, 128)], patches=4, level_scale=0.25)
    assert tuple(small[0, 0]) == (AUX_COLORS.index("red"), -100)


def test_miniature_training_lowers_the_loss_deterministically_and_saves_a_stock_checkpoint(tmp_path):
    config = TrainConfig(steps=24, batch_size=6, train_scenes=4, warmup=4, log_every=8, threads=1, lr=2e-3)
    first = train_testbed(tmp_path / "a", config, log=None)
    losses = [c["loss"] for c in first["loss"]]
    assert len(losses) == 3 and losses[-1] < 0.6 * losses[0]
    assert sum(first["format_counts"].values()) == 24 * 6
    assert json.loads((tmp_path / "a" / "train_log.json").read_text())["loss"] == first["loss"]
    second = train_testbed(tmp_path / "b", config, log=None)
    assert [c["loss"] for c in second["loss"]] == losses

    import torch
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "a")
    processor = AutoProcessor.from_pretrained(tmp_path / "a")
    assert model.config.vision_config.image_size == 32 and model.config.text_config.num_hidden_layers == 6
    image = np.zeros((96, 128, 3), np.uint8)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the shape?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
