"""The testbed model's training: config checks, auxiliary cell labels, and a miniature run (loss falls, the same
run twice gives the same curve, the checkpoint loads with the stock transformers classes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrs_plugin.errors import ConfigError
from lrs_plugin.testbed.scenes import PlantedObject
from lrs_plugin.testbed.train import AUX_COLORS, AUX_SHAPES, TrainConfig, cell_labels, train_testbed

MINI_STEPS, MINI_VISION_STEPS, MINI_MARGIN = 120, 300, 25.0  # the held-out miniature (timed in docs/testbed.md)


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
        {"probe_weight": -0.5},
        {"others_share": 1.2},
        {"gap_share": True},
        {"gap_max": -1},
    ],
)
def test_bad_train_configs_are_refused(kwargs):
    with pytest.raises(ConfigError, match="TrainConfig"):
        TrainConfig(**kwargs)


def test_cell_labels_mark_every_patch_an_object_covers():
    objects = [
        PlantedObject("triangle", "red", (10, 10, 26, 26)),  # tile 0, patches rows / cols 1-3
        PlantedObject("disc", "white", (40, 2, 52, 14)),  # tile 1, patches rows 0-1, cols 1-2
        PlantedObject("distractor", "neutral", (0, 0, 8, 8)),  # never labelled
    ]
    tiles = [(0, 0, 32, 32), (32, 0, 64, 32)]
    labels = cell_labels(objects, tiles, patches=4, level_scale=1.0)
    assert labels.shape == (2, 16, 2)
    red = (AUX_COLORS.index("red"), AUX_SHAPES.index("triangle"))
    # covered shares of tile 0's patches: rows 1-3 x cols 1-3 = .56 .75 .19 / .75 1 .25 / .19 .25 .06 (< .15)
    assert {k for k in range(16) if labels[0, k, 0]} == {5, 6, 7, 9, 10, 11, 13, 14}
    assert all(tuple(labels[0, k, :2]) == red for k in (5, 10, 14))
    assert tuple(labels[0, 0, :2]) == (0, 0)  # the distractor's patch is background
    assert {k for k in range(16) if labels[1, k, 0]} == {1, 2, 5, 6}
    assert tuple(labels[1, 1 * 4 + 1, :2]) == (AUX_COLORS.index("white"), 0)
    # at a quarter of the resolution the 16-px triangle is 4 level px wide: colour kept, shape unlabelled; the
    # disc covers 14 % of its 32-px patch but holds its centre, so it is labelled too
    small = cell_labels(objects, [(0, 0, 128, 128)], patches=4, level_scale=0.25)
    assert tuple(small[0, 0]) == (AUX_COLORS.index("red"), -100)
    assert tuple(small[0, 1]) == (AUX_COLORS.index("white"), 0)
    assert tuple(small[0, 15]) == (0, 0)


def test_miniature_training_lowers_the_loss_deterministically_and_saves_a_stock_checkpoint(tmp_path):
    config = TrainConfig(
        steps=48, batch_size=6, train_scenes=4, warmup=4, log_every=16, threads=1, lr=2e-3, vision_steps=10
    )
    first = train_testbed(tmp_path / "a", config, log=None)
    losses = [c["loss"] for c in first["loss"]]
    assert len(losses) == 3 and losses[-1] < 0.6 * losses[0]
    assert sum(first["format_counts"].values()) == 48 * 6
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


def test_miniature_model_beats_chance_on_held_out_full_resolution_crops(tmp_path):
    """A few hundred cheap steps on full-resolution crops: held-out colour of the named shape well above chance."""
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.testbed import scenes as sc
    from lrs_plugin.testbed.train import heldout_accuracy

    config = TrainConfig(
        steps=MINI_STEPS, batch_size=8, train_scenes=24, warmup=20, log_every=40, vision_steps=MINI_VISION_STEPS,
        format_mix={"stock_crop": 1.0}, curriculum=0.5, threads=2,
    )  # fmt: skip
    train_testbed(tmp_path, config, log=None)
    backbone = Backbone.from_pretrained(str(tmp_path), device="cpu", dtype="float32")
    held_out = [sc.make_scene("train", 0, 100_000 + i) for i in range(20)]  # never trained on
    accuracy = heldout_accuracy(backbone, held_out, "stock_crop", per_scene=2)
    assert accuracy["object color"] >= sc.CHANCE["object color"] + MINI_MARGIN, accuracy
