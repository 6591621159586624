from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image


def test_visualize_command_draws_one_panel_per_level(tmp_path):
    from lrs_plugin.tiny import build_tiny_llava

    checkpoint = build_tiny_llava(tmp_path / "ckpt", arch="llava_next", lm="qwen2", text_layers=4)
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
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["focus"] == "llm_attention"  # no RFM weights in the tiny checkpoint: auto picks the teacher
    assert summary["vision_tokens_to_llm"] < summary["vision_tokens_encoded"]
    with Image.open(out) as drawn:
        width, height = drawn.size
    assert height == 512 and width > 2 * 768  # two panels (base level and the zoomed level), 768 px long side
