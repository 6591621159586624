from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def test_visualize_command_draws_one_panel_per_level(tmp_path, make_tiny_checkpoint):
    checkpoint = make_tiny_checkpoint("llava_next", "qwen2", text_layers=4)
    pixels = np.full((600, 900, 3), 120, np.uint8)
    pixels[250:300, 500:560] = (250, 20, 20)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    out = tmp_path / "focus.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lrs_plugin.cli",
            "visualize",
            "--pretrained",
            str(checkpoint),
            "--image",
            str(tmp_path / "scene.png"),
            "--question",
            "What color is the car?",
            "--out",
            str(out),
            "--box",
            "500,250,560,300",
            "--ground-truth",
            "red",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["focus"] == "llm_attention"  # no RFM weights in the tiny checkpoint: auto picks the teacher
    assert summary["vision_tokens_to_llm"] < summary["vision_tokens_encoded"]
    assert summary["focus_tile_recall"] in (0.0, 1.0) and 0.0 <= summary["focus_token_recall"] <= 1.0
    with Image.open(out) as drawn:
        width, height = drawn.size
        pixels = np.asarray(drawn.convert("RGB"))
    # header (question, answer / ground truth: 2 lines) + two 768 x 512 panels side by side + colour bar
    assert height == 6 + 2 * 14 + 512 + 34 and width == 2 * 768 + 8
    panel = pixels[34 : 34 + 512]
    colours = {tuple(p) for p in np.unique(panel.reshape(-1, 3), axis=0)}
    assert (0, 255, 255) in colours  # the target box
    assert (120, 120, 120) in colours  # the image shows through the heat map
    assert (pixels[:34] < 100).any()  # header text
    assert len({tuple(p) for p in np.unique(pixels[-34:].reshape(-1, 3), axis=0)}) > 20  # the colour bar

