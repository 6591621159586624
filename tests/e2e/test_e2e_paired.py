"""lmms-eval's own paired test and clustered errors on this plugin's task, then ``lrs-plugin compare`` on the same runs.

Two real ``lmms-eval`` runs of ``lrs_synth`` with the trained testbed checkpoint (answers that are sometimes right):
``reducer=none``, then ``reducer=c2f`` with ``--baseline`` pointing at the first run's samples file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lrs_plugin.harness.run import offline_env, run_lmms_eval
from lrs_plugin.scoring.compare import clustered_se
from lrs_plugin.scoring.runs import load_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_lrs_synth_tree):
    from lrs_plugin.testbed.table import shipped_checkpoint

    base = tmp_path_factory.mktemp("paired")
    tree = make_lrs_synth_tree(split="eval", seed=0, num_scenes=3)
    env = offline_env({"LRS_SYNTH_ROOT": str(tree), "LRS_PLUGIN_HOME": str(base / "home")})
    common = {"tasks": ["lrs_synth"], "env": env, "use_task_hook": True, "model": "c2f_llava", "timeout": 900}
    ckpt = shipped_checkpoint()
    a = run_lmms_eval(model_args=f"pretrained={ckpt},reducer=none", output_path=base / "none", **common)
    baseline = str(a.samples["lrs_synth"])
    b = run_lmms_eval(
        model_args=f"pretrained={ckpt},reducer=c2f,focus=rfm",
        output_path=base / "c2f",
        extra_args=["--baseline", baseline],
        **common,
    )
    return base, a, b


def test_baseline_prints_the_paired_difference_ci_and_p_value(runs):
    _, a, b = runs
    rows = [json.loads(line) for line in b.samples["lrs_synth"].read_text().splitlines()]
    assert len(rows) == 12 and all(r["score"] in (0, 1) and isinstance(r["score"], int) for r in rows)
    assert all(r["aa"]["score"] == r["score"] and r["aa"]["image"].endswith((".png", ".tif")) for r in rows)
    metrics = b.results["results"]["lrs_synth"]
    base_rows = [json.loads(line) for line in a.samples["lrs_synth"].read_text().splitlines()]
    assert metrics["paired_baseline_score"] == pytest.approx(100 * sum(r["score"] for r in base_rows) / 12)
    assert metrics["score,none"] == pytest.approx(100 * sum(r["score"] for r in rows) / 12)
    assert metrics["paired_ci_lower"] <= metrics["score,none"] - metrics["paired_baseline_score"] + 1e-9
    assert 0.0 <= metrics["paired_pvalue"] <= 1.0
    header = next(line for line in b.log.splitlines() if "Stderr_Clustered" in line)
    for column in ("Baseline", "Diff", "CI", "P_Value"):
        assert column in header
    # Clustered by image: lmms-eval's number equals the formula over the samples; 3 scenes, 4 questions each.
    clusters = [r["aa"]["image"] for r in rows]
    assert len(set(clusters)) == 3
    expected = clustered_se([float(r["score"]) for r in rows], clusters)
    assert metrics["aa_stderr_clustered,none"] == pytest.approx(expected)
    assert metrics["aa_tolerant,none"] >= metrics["aa,none"] and metrics["tolerant_rescued,none"] >= 0


def test_compare_on_the_two_real_runs(runs):
    base, a, b = runs
    proc = subprocess.run(
        [sys.executable, "-m", "lrs_plugin.cli", "compare", str(base / "none"), str(base / "c2f"), "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["task"] == "lrs_synth" and result["n"] == 12
    assert result["a"]["acc"] == pytest.approx(a.results["results"]["lrs_synth"]["score,none"])
    assert result["b"]["acc"] == pytest.approx(b.results["results"]["lrs_synth"]["score,none"])
    metrics = b.results["results"]["lrs_synth"]
    assert result["delta"] == pytest.approx(metrics["score,none"] - metrics["paired_baseline_score"])
    assert result["ci95"][0] <= result["delta"] <= result["ci95"][1]
    assert set(result["by_category"]) == {"count", "object color", "object presence", "object shape"}
    run_a, run_b = load_run(base / "none"), load_run(base / "c2f")
    pairs = [(run_a.tasks["lrs_synth"][k], run_b.tasks["lrs_synth"][k]) for k in run_a.tasks["lrs_synth"]]
    assert result["agreement"] == pytest.approx(100 * sum(x.correct == y.correct for x, y in pairs) / 12)
    text = subprocess.run(
        [sys.executable, "-m", "lrs_plugin.cli", "compare", str(base / "none"), str(base / "c2f")],
        capture_output=True,
        text=True,
    ).stdout
    assert "12 questions paired over 3 images" in text and "McNemar p =" in text
