"""End to end through the real ``lmms-eval`` command: generated data, the deterministic ``lrs_dummy`` model.

lmms-eval 0.7.3 exits 0 even when a run fails, so everything is asserted on the files it writes. The expected
metrics are computed here by hand from the generated question file and the dummy's documented answer rule.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from lrs_plugin.harness.run import offline_env, run_lmms_eval


def _dummy_correct(question_id: str, every: int = 3) -> bool:
    return int(hashlib.sha256(question_id.encode()).hexdigest(), 16) % every == 0


@pytest.fixture(scope="module")
def broken_lrs_tree(lrs_vqa_tree, tmp_path_factory) -> tuple[Path, set[str], set[str]]:
    """A copy of the generated tree with one image deleted and one truncated (unreadable)."""
    tree = tmp_path_factory.mktemp("lrs_broken") / "data"
    shutil.copytree(lrs_vqa_tree, tree)
    rows = [json.loads(x) for x in (tree / "LRS_VQA/LRS_VQA_merged.jsonl").read_text().splitlines() if x.strip()]
    images = sorted({r["image"] for r in rows if r["question_id"].startswith("FAIR")})
    missing, broken = images[0], images[1]
    (tree / missing).unlink()
    (tree / broken).write_bytes(b"II*\x00truncated")
    return tree, {missing}, {broken}


@pytest.fixture(scope="module")
def e2e_run(broken_lrs_tree, mme_rs_root, tmp_path_factory):
    tree, _, _ = broken_lrs_tree
    out = tmp_path_factory.mktemp("e2e_out")
    env = offline_env({"LRS_VQA_ROOT": str(tree), "MME_RW_RS_ROOT": str(mme_rs_root)})
    env["LRS_PLUGIN_HOME"] = str(tmp_path_factory.getbasetemp() / "lrs_plugin_home")
    run = run_lmms_eval(
        model="lrs_dummy",
        model_args="pretrained=lrs-dummy,correct_every=3",
        tasks=["lrs_vqa", "mmerealworld_rs"],
        output_path=out,
        env=env,
        timeout=600,
    )
    return run


def _expected_lrs(tree: Path, bad_images: set[str]):
    rows = [json.loads(x) for x in (tree / "LRS_VQA/LRS_VQA_merged.jsonl").read_text().splitlines() if x.strip()]
    per = defaultdict(lambda: defaultdict(list))
    for r in rows:
        ok = r["image"] not in bad_images and _dummy_correct(r["question_id"])
        per[r["question_id"].split("_")[0]][r["category"]].append(1.0 if ok else 0.0)
    expected = {}
    for subset, cats in per.items():
        accs = {c: 100.0 * sum(v) / len(v) for c, v in cats.items()}
        all_scores = [s for v in cats.values() for s in v]
        expected[subset] = {
            "aa": sum(accs.values()) / len(accs),
            "oa": 100.0 * sum(all_scores) / len(all_scores),
            "cats": accs,
            "n": len(all_scores),
        }
    return expected


TASK_OF = {"FAIR": "lrs_vqa_fair", "GLH-Bridge": "lrs_vqa_bridge", "STAR": "lrs_vqa_star"}


def test_lrs_vqa_metrics_equal_hand_computed(e2e_run, broken_lrs_tree):
    tree, missing, broken = broken_lrs_tree
    expected = _expected_lrs(tree, missing | broken)
    results = e2e_run.results["results"]
    for subset, exp in expected.items():
        task = results[TASK_OF[subset]]
        assert task["aa,none"] == pytest.approx(exp["aa"])
        assert task["oa,none"] == pytest.approx(exp["oa"])
        for cat, acc in exp["cats"].items():
            assert task[f"cat_{cat.replace(' ', '_')}" + ",none"] == pytest.approx(acc)
        assert e2e_run.results["n-samples"][TASK_OF[subset]]["effective"] == exp["n"]
    group = e2e_run.results["groups"]["lrs_vqa"]
    assert group["aa,none"] == pytest.approx(sum(e["aa"] for e in expected.values()) / 3)
    pooled = sum(e["oa"] * e["n"] for e in expected.values()) / sum(e["n"] for e in expected.values())
    assert group["oa,none"] == pytest.approx(pooled)


def test_broken_images_are_recorded_not_fatal(e2e_run, broken_lrs_tree):
    _, missing, broken = broken_lrs_tree
    lines = [json.loads(x) for x in e2e_run.samples["lrs_vqa_fair"].read_text().splitlines()]
    errors = {s["aa"]["question_id"]: s["aa"]["error"] for s in lines if s["aa"]["error"]}
    assert errors, "the missing and the truncated image must be recorded"
    assert all(e.startswith("ImageReadError") for e in errors.values())
    assert len(lines) == e2e_run.results["n-samples"]["lrs_vqa_fair"]["effective"]


def test_mme_metrics_equal_hand_computed(e2e_run, mme_rs_root):
    rows = [json.loads(x) for x in (mme_rs_root / "annotations.jsonl").read_text().splitlines() if x.strip()]
    per = defaultdict(list)
    for r in rows:
        ok = r.get("image") is not None and _dummy_correct(r["question_id"])
        per[r["category"]].append(100.0 if ok else 0.0)
    task = e2e_run.results["results"]["mmerealworld_rs"]
    all_scores = [s for v in per.values() for s in v]
    assert task["acc,none"] == pytest.approx(sum(all_scores) / len(all_scores))
    accs = {c: sum(v) / len(v) for c, v in per.items()}
    assert task["mean_category_acc,none"] == pytest.approx(sum(accs.values()) / len(accs))
    for cat, acc in accs.items():
        assert task[f"cat_{cat},none"] == pytest.approx(acc)


def test_score_command_agrees_with_task_metrics(e2e_run):
    files = [str(e2e_run.samples[t]) for t in ("lrs_vqa_fair", "lrs_vqa_bridge", "lrs_vqa_star")]
    proc = subprocess.run(
        [sys.executable, "-m", "lrs_plugin.cli", "score", "lrs_vqa", *files, "--json"],
        capture_output=True,
        text=True,
        env=offline_env(),
        check=True,
    )
    summary = json.loads(proc.stdout)
    results = e2e_run.results["results"]
    for subset, task in TASK_OF.items():
        assert summary["subsets"][subset]["aa"] == pytest.approx(results[task]["aa,none"])
        assert summary["subsets"][subset]["oa"] == pytest.approx(results[task]["oa,none"])
    assert summary["mean_aa"] == pytest.approx(e2e_run.results["groups"]["lrs_vqa"]["aa,none"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lrs_plugin.cli",
            "score",
            "mmerealworld_rs",
            str(e2e_run.samples["mmerealworld_rs"]),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=offline_env(),
        check=True,
    )
    mme = json.loads(proc.stdout)
    task = results["mmerealworld_rs"]
    assert mme["acc"] == pytest.approx(task["acc,none"])
    assert mme["mean_category_acc"] == pytest.approx(task["mean_category_acc,none"])
