"""``lrs-plugin sweep`` through the real ``lmms-eval`` command: 2 reducers x 2 budgets on ``lrs_synth`` (4 runs)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from PIL import Image

from lrs_plugin.harness.run import offline_env
from lrs_plugin.harness.sweep import CSV_COLUMNS


@pytest.mark.slow
def test_a_small_sweep_has_every_point_and_both_pictures(tmp_path, make_lrs_synth_tree):
    from lrs_plugin.testbed.table import shipped_checkpoint

    tree = make_lrs_synth_tree(split="eval", seed=0, num_scenes=2)
    env = offline_env({"LRS_SYNTH_ROOT": str(tree), "LRS_PLUGIN_HOME": str(tmp_path / "home")})
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lrs_plugin.cli", "sweep", "--task", "lrs_synth", "--pretrained"]
    cmd += [str(shipped_checkpoint()), "--reducers", "c2f,random", "--budgets", "40,64", "--out", str(out)]
    cmd += ["--reducer-options", "c2f:focus=rfm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["reducer"], r["budget"]) for r in rows] == [
        ("c2f", "40"),
        ("c2f", "64"),
        ("random", "40"),
        ("random", "64"),
    ]
    for row in rows:
        assert row["n"] == "8" and row["failed"] == "0" and 0.0 <= float(row["accuracy"]) <= 100.0
        assert float(row["vision_tokens"]) <= int(row["budget"]) and float(row["tflops"]) > 0
        assert row["accuracy_se"] != "" and row["results"].endswith("_results.json")
    assert [float(r["vision_tokens"]) for r in rows[2:]] == [40.0, 64.0]  # random sends exactly its budget
    for name in ("sweep_tokens.png", "sweep_tflops.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    # Run again: every point is reused, nothing is generated.
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and again.stderr.count("finished earlier") == 4
