from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
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


def test_draw_record_draws_a_finished_answer_without_running_anything(tiny_backbones, make_image_file, tmp_path):
    from lrs_plugin.c2f import visualize as vis
    from lrs_plugin.c2f.driver import C2FConfig, run_c2f
    from lrs_plugin.focus.scorers import build_focus
    from lrs_plugin.imagery.large_image import LargeImage

    bb = tiny_backbones[("llava_next", "qwen2")]
    config = C2FConfig()
    with LargeImage(make_image_file(480, 700)) as image:
        result = run_c2f(bb, image, "What is it?", build_focus("uniform", bb), config, max_new_tokens=2)
        details, answer = result.record.c2f, result.answer
        out = vis.draw_record(image, details, bb, config, tmp_path / "a.png", question="q", answer=answer, focus="u")
    with Image.open(out) as drawn:
        assert drawn.size[0] == 2 * 768 + 8  # one panel per visited level (base + one zoom)
    assert vis.draw_geometry(bb, config) == {"tile": 56, "per_tile": 2, "has_newline": True, "base_long_side": 168}


def test_focus_picture_runs_the_driver_once(tiny_backbones, make_image_file, tmp_path, monkeypatch):
    from lrs_plugin.c2f import driver
    from lrs_plugin.c2f.visualize import focus_picture
    from lrs_plugin.focus.scorers import build_focus
    from lrs_plugin.imagery.large_image import LargeImage

    calls = []
    real = driver.run_c2f
    monkeypatch.setattr(driver, "run_c2f", lambda *a, **k: calls.append(1) or real(*a, **k))
    bb = tiny_backbones[("llava_next", "qwen2")]
    with LargeImage(make_image_file(480, 700)) as image:
        summary = focus_picture(
            bb, image, "What is it?", build_focus("uniform", bb), driver.C2FConfig(), tmp_path / "b.png"
        )
    assert calls == [1] and summary["focus"] == "uniform" and (tmp_path / "b.png").is_file()


def test_visualize_names_an_unknown_option_before_loading_anything(tmp_path):
    from lrs_plugin.c2f.visualize import visualize
    from lrs_plugin.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no C2F option\(s\) \['zoom'\]; valid: .*num_zoom_steps"):
        visualize(str(tmp_path / "missing"), tmp_path / "x.png", "q", tmp_path / "o.png", options={"zoom": 2})
