"""``lrs-plugin testbed``: the whole pipeline in miniature through the real lmms-eval command, reuse, the report."""

from __future__ import annotations

import json

import pytest

from lrs_plugin.cli import main
from lrs_plugin.errors import ConfigError
from lrs_plugin.testbed import scenes as sc
from lrs_plugin.testbed.table import (
    ROW_KEYS,
    TestbedConfig,
    draw_tradeoff,
    format_table,
    pareto_front,
    row_specs,
    run_testbed,
)
from lrs_plugin.testbed.train import TrainConfig

REPORT_KEYS = {"chance", "fine_categories", "rows", "train_s", "rfm_train_s", "total_s"}
ROW_FIELDS = {
    "key",
    "reducer",
    "options",
    "aa",
    "categories",
    "vision_tokens_to_llm",
    "tflops",
    "latency_s",
    "focus_tile_recall",
    "focus_token_recall",
}


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(1.0, 50.0), (2.0, 40.0), (2.0, 70.0), (4.0, 70.0), (8.0, 90.0), (0.5, 10.0)]
    assert pareto_front(points) == [5, 0, 2, 4]  # (2, 40) and (4, 70) are beaten by (2, 70)


def test_row_specs_cover_every_row_and_state_their_budgets():
    specs = row_specs(random_budget=77)
    assert [s.key for s in specs] == list(ROW_KEYS)
    by_key = {s.key: s for s in specs}
    assert by_key["random"].options["budget"] == 77
    assert by_key["full_res"].options["keep_ratio"] == by_key["full_res"].options["select_ratio"] == 1.0
    for key in ("random", "visionzip", "fastv", "pdrop"):
        assert by_key[key].options["max_tiles"] == 144
    args = by_key["c2f_llm_attention"].model_args("/ckpt")
    assert args.startswith("pretrained=/ckpt,reducer=c2f,") and "focus=llm_attention,focus_layer=3" in args
    assert "random" not in {s.key for s in row_specs()}  # unknown budget: not runnable yet


@pytest.mark.parametrize(
    "kwargs",
    [{"eval_scenes": 0}, {"limit": 0}, {"rows": ("low_res", "nope")}, {"rows": ("random",)}, {"rows": ()}],
)
def test_bad_testbed_configs_are_typed_errors(kwargs):
    with pytest.raises(ConfigError, match="TestbedConfig"):
        TestbedConfig(**kwargs)


def test_cli_needs_out_without_a_sub_command(capsys):
    assert main(["testbed"]) == 2
    assert "--out" in capsys.readouterr().err


def test_tradeoff_picture_and_table_from_a_report(tmp_path):
    rows = [
        {"key": "a", "tflops": 1e-3, "aa": 40.0},
        {"key": "b", "tflops": 4e-3, "aa": 80.0},
        {"key": "c", "tflops": None, "aa": 10.0},
        {"key": "d", "tflops": 5e-3, "aa": 50.0},
    ]
    out = draw_tradeoff(rows, tmp_path / "plot.png")
    import numpy as np
    from PIL import Image

    with Image.open(out) as img:
        assert img.size == (900, 600)
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in np.unique(pixels, axis=0)}
    assert (220, 30, 30) in colours and (40, 70, 200) in colours  # front points (a, b), a beaten one (d)


def test_miniature_testbed_runs_every_stage_through_lmms_eval_and_reuses_them(tmp_path, capsys):
    config = TestbedConfig(
        eval_scenes=2,
        rfm_scenes=2,
        limit=4,
        rows=("low_res", "c2f_rfm", "random"),
        train=TrainConfig(steps=4, batch_size=4, train_scenes=3, threads=1, vision_steps=4),
        rfm_steps=3,
    )
    report = run_testbed(tmp_path, config, log=None)
    assert REPORT_KEYS <= set(report)
    assert report["chance"] == sc.CHANCE and report["fine_categories"] == list(sc.FINE_CATEGORIES)
    assert [r["key"] for r in report["rows"]] == ["low_res", "c2f_rfm", "random"]
    assert report["train_s"] > 0 and report["rfm_train_s"] > 0 and report["total_s"] > 0
    for row in report["rows"]:
        assert set(row) >= ROW_FIELDS
        assert 0.0 <= row["aa"] <= 100.0
        assert row["vision_tokens_to_llm"] > 0 and row["tflops"] > 0 and row["latency_s"] > 0
    low, c2f, rnd = report["rows"]
    assert c2f["focus_tile_recall"] is not None and 0.0 <= c2f["focus_tile_recall"] <= 100.0
    assert rnd["options"]["budget"] == round(c2f["vision_tokens_to_llm"])
    assert rnd["vision_tokens_to_llm"] <= rnd["options"]["budget"]
    assert (tmp_path / "model" / "rfm.safetensors").is_file()
    assert (tmp_path / "accuracy_vs_tflops.png").is_file() and (tmp_path / "focus.png").is_file()
    assert json.loads((tmp_path / "testbed.json").read_text())["rows"] == report["rows"]
    table = format_table(report)
    assert table.count("\n") == 2 + 1 + 3 - 1 and "| c2f_rfm |" in table

    # second run, through the CLI: every stage reused (no training, no lmms-eval), the same rows, one JSON object
    stamp = (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns
    argv = ["testbed", "--out", str(tmp_path), "--json", "--limit", "4", "--rows", "low_res,c2f_rfm,random"]
    argv += ["--eval-scenes", "2", "--rfm-scenes", "2", "--rfm-steps", "3"]
    argv += ["--steps", "4", "--vision-steps", "4", "--batch-size", "4", "--train-scenes", "3", "--threads", "1"]
    capsys.readouterr()
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == REPORT_KEYS
    assert printed["rows"] == report["rows"]
    assert (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns == stamp
