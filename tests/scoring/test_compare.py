"""``lrs-plugin compare`` on a constructed pair of runs whose every number is known by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from lrs_plugin.errors import RunMismatchError, RunNotFoundError, ScoringInputError
from lrs_plugin.scoring.compare import clustered_se, compare_runs, mcnemar, paired_bootstrap_ci
from lrs_plugin.scoring.runs import load_run

# 12 questions on 4 images (3 each), categories x (q0-5) and y (q6-11).
#   A right: q0-q8                      -> 9/12 = 75 %
#   B right: q0 q2 q4 q7                -> 4/12 = 33.33 %
#   both right 4, right only in A 5 (q1 q3 q5 q6 q8), right only in B 0, both wrong 3 (q9-11)
#   agreement (4 + 3) / 12 = 58.33 %; McNemar exact, b = 5, c = 0: p = 2 * C(5,0) / 2^5 = 0.0625
#   same answer: the 4 both-right + q9, q10 (same wrong text modulo case/space) = 6/12 = 50 %
#   x: A 6/6, B 3/6, agreement 3/6; y: A 3/6, B 1/6, agreement q7 q9 q10 q11 = 4/6
#   low-res right: q0 q2 q4 q6 q8 -> resolution-sensitive (A right, low-res wrong) = q1 q3 q5 q7:
#   A 100 %, B 1/4 = 25 %; rest (8): A 5/8 = 62.5 %, B 3/8 = 37.5 %
A_RIGHT = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
B_RIGHT = [1, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0]
LOW_RIGHT = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0]
B_WRONG_TEXT = {9: " Wrong", 10: "WRONG", 11: "other"}


def _rows(right, task="lrs_synth", wrong_text=None, targets=None):
    rows = []
    for i, ok in enumerate(right):
        truth = (targets or {}).get(i, f"gt{i}")
        prediction = truth if ok else (wrong_text or {}).get(i, "wrong")
        record = {
            "question_id": f"SYNTH_{i}",
            "subset": "SYNTH",
            "category": "x" if i < 6 else "y",
            "prediction": prediction,
            "ground_truth": truth,
            "correct": bool(ok),
            "synonyms": "wordnet",
            "error": None,
            "score": ok,
            "image": f"img{i // 3}.png",
        }
        rows.append({"doc_id": i, "target": truth, "filtered_resps": [prediction], "aa": record, "score": ok})
    return rows


def _run(folder, right, task="lrs_synth", **kw):
    """An lmms-eval output folder: <folder>/model/<stamp>_results.json and its samples file."""
    model = folder / "tiny__ckpt"
    model.mkdir(parents=True)
    (model / "20260101_000000_results.json").write_text(json.dumps({"results": {task: {}}, "config": {}}))
    lines = "\n".join(json.dumps(r) for r in _rows(right, task, **kw))
    (model / f"20260101_000000_samples_{task}.jsonl").write_text(lines + "\n")
    return folder


@pytest.fixture
def pair(tmp_path):
    a = _run(tmp_path / "none", A_RIGHT)
    b = _run(tmp_path / "c2f", B_RIGHT, wrong_text=B_WRONG_TEXT)
    low = _run(tmp_path / "low", LOW_RIGHT)
    return a, b, low


def test_constructed_pair_hand_computed(pair):
    a, b, low = pair
    (result,) = compare_runs(a, b, low_res=low)
    assert list(result) == [
        "task",
        "n",
        "a",
        "b",
        "agreement",
        "same_answer",
        "delta",
        "ci95",
        "p_value",
        "by_category",
        "resolution_sensitive",
    ]
    assert result["task"] == "lrs_synth" and result["n"] == 12
    assert result["a"] == {"name": str(a), "acc": 75.0}
    assert result["b"] == {"name": str(b), "acc": pytest.approx(100 / 3)}
    assert result["agreement"] == pytest.approx(700 / 12)
    assert result["same_answer"] == pytest.approx(50.0)
    assert result["delta"] == pytest.approx(100 / 3 - 75)
    assert result["p_value"] == pytest.approx(0.0625)
    assert result["by_category"] == {
        "x": {"n": 6, "a_acc": 100.0, "b_acc": 50.0, "delta": -50.0, "agreement": 50.0},
        "y": pytest.approx({"n": 6, "a_acc": 50.0, "b_acc": 100 / 6, "delta": 100 / 6 - 50, "agreement": 400 / 6}),
    }
    assert result["resolution_sensitive"] == {
        "n": 4,
        "a_acc": 100.0,
        "b_acc": 25.0,
        "rest": {"n": 8, "a_acc": 62.5, "b_acc": 37.5},
    }
    lo, hi = result["ci95"]
    assert lo <= result["delta"] <= hi and hi < 0  # every image has A ahead or level: B never wins a draw
    assert compare_runs(a, b, low_res=low)[0]["ci95"] == [lo, hi]  # fixed seed


def test_mcnemar_by_hand():
    assert mcnemar(5, 0) == (pytest.approx(2 / 32), "exact")
    assert mcnemar(3, 1) == (pytest.approx(2 * (1 + 4) / 16), "exact")
    assert mcnemar(0, 0) == (1.0, "exact") and mcnemar(4, 4)[0] == 1.0
    assert mcnemar(14, 10)[1] == "exact"  # 24 discordant: still exact
    p, method = mcnemar(20, 10)  # chi2 = (|20 - 10| - 1)^2 / 30 = 2.7, one degree of freedom
    assert method == "chi2_cc" and p == pytest.approx(0.10034824646, abs=1e-9)
    assert mcnemar(10, 20) == mcnemar(20, 10)


def test_bootstrap_over_clusters():
    # Every image holds one question right only in A and one right in both: each draw gives the same delta.
    a = [1, 1] * 5
    b = [0, 1] * 5
    clusters = [i // 2 for i in range(10)]
    assert paired_bootstrap_ci(a, b, clusters) == (pytest.approx(-50.0), pytest.approx(-50.0))
    # One cluster: nothing to resample.
    assert paired_bootstrap_ci([1, 0, 1], [0, 0, 1], ["one"] * 3) == (pytest.approx(-100 / 3),) * 2
    # Clusters widen the interval: the same questions as 2 big images vs 20 single-question images.
    a, b = [1] * 10 + [0] * 10, [0] * 10 + [1] * 10
    wide = paired_bootstrap_ci(a, b, [i // 10 for i in range(20)], iters=500)
    narrow = paired_bootstrap_ci(a, b, list(range(20)), iters=500)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]


def test_clustered_se_is_lmms_evals_formula():
    from lmms_eval.api.metrics import clustered_stderr

    scores, clusters = [1, 1, 0, 1, 0, 0, 1, 0], [1, 1, 1, 2, 2, 3, 3, 3]
    assert clustered_se(scores, clusters) == pytest.approx(clustered_stderr(scores, clusters))
    naive = math.sqrt((sum((s - 0.5) ** 2 for s in scores) / 7) / 8)
    assert clustered_se(scores, list(range(8))) == pytest.approx(naive)
    assert clustered_se([1.0], ["a"]) is None


def test_runs_of_different_tasks_are_refused_naming_both(tmp_path):
    a = _run(tmp_path / "a", A_RIGHT, task="lrs_vqa_fair")
    b = _run(tmp_path / "b", B_RIGHT, task="lrs_vqa_star")
    with pytest.raises(RunMismatchError, match=r"(?s)'.*a' \(tasks: lrs_vqa_fair\).*'.*b' \(tasks: lrs_vqa_star\)"):
        compare_runs(a, b)


def test_other_bad_inputs(tmp_path, pair):
    a, b, _ = pair
    with pytest.raises(RunNotFoundError, match="does not exist"):
        compare_runs(tmp_path / "nope", b)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFoundError, match="no lmms-eval"):
        load_run(tmp_path / "empty")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "20260101_000000_results.json").write_text("{}")
    with pytest.raises(RunNotFoundError, match="--log_samples"):
        load_run(lonely)
    other = _run(tmp_path / "other", B_RIGHT, targets={0: "something else"})
    with pytest.raises(RunMismatchError, match="'SYNTH_0' has target 'gt0'"):
        compare_runs(a, other)
    low = _run(tmp_path / "low_other_task", LOW_RIGHT, task="lrs_vqa_fair")
    with pytest.raises(RunMismatchError, match="low-resolution run .* lacks lrs_synth"):
        compare_runs(a, b, low_res=low)
    bad = tmp_path / "x_samples_lrs_synth.jsonl"
    bad.write_text('{"doc_id": 0, "filtered_resps": ["a"]}\n')
    with pytest.raises(ScoringInputError, match="line 1: no per-sample record"):
        load_run(bad)
    twice = tmp_path / "y_samples_lrs_synth.jsonl"
    twice.write_text("\n".join(json.dumps(r) for r in _rows([1, 1])[:1] * 2))
    with pytest.raises(ScoringInputError, match="appears twice"):
        load_run(twice)


def test_samples_files_and_other_tasks_numeric_score(tmp_path, pair):
    a, b, _ = pair
    files = [next(p.rglob("*_samples_lrs_synth.jsonl")) for p in (a, b)]
    (result,) = compare_runs(*files)
    assert result["p_value"] == pytest.approx(0.0625)
    # A task outside this plugin: rows with a numeric 0/1 score and doc_id, no record.
    for name, right in (("p", A_RIGHT), ("q", B_RIGHT)):
        rows = [
            {"doc_id": i, "score": s, "filtered_resps": ["r"], "doc": {"image": f"i{i // 3}"}}
            for i, s in enumerate(right)
        ]
        (tmp_path / f"{name}_samples_mmbench.jsonl").write_text("\n".join(map(json.dumps, rows)))
    (other,) = compare_runs(tmp_path / "p_samples_mmbench.jsonl", tmp_path / "q_samples_mmbench.jsonl")
    assert other["task"] == "mmbench" and other["delta"] == pytest.approx(100 / 3 - 75) and other["by_category"] == {}
    assert other["same_answer"] == 100.0


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lrs_plugin.cli", *args], capture_output=True, text=True)


def test_cli_json_and_table(pair, tmp_path):
    a, b, low = pair
    proc = _cli("compare", str(a), str(b), "--low-res", str(low), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(compare_runs(a, b, low_res=low)[0]))
    text = _cli("compare", str(a), str(b)).stdout
    assert "McNemar p = 0.0625 (exact; right only in A: 5, only in B: 0)" in text
    assert "12 questions paired over 4 images" in text and "agreement (same correctness) 58.33 %" in text
    mismatch = _cli("compare", str(a), str(_run(tmp_path / "fair", A_RIGHT, task="lrs_vqa_fair")))
    assert mismatch.returncode == 2 and mismatch.stderr.startswith("error: ") and "share no task" in mismatch.stderr


def test_newest_run_of_a_folder_and_questions_answered_by_one_run_only(tmp_path, pair):
    a, b, _ = pair
    model = a / "tiny__ckpt"  # an older run in the same folder: ignored
    (model / "20250101_000000_results.json").write_text("{}")
    (model / "20250101_000000_samples_lrs_synth.jsonl").write_text(json.dumps(_rows([0] * 12)[0]) + "\n")
    assert load_run(a).source.name == "20260101_000000_results.json"
    short = _run(tmp_path / "short", B_RIGHT[:10])  # e.g. another --limit: q10, q11 not answered
    (result,) = compare_runs(a, short, detail=True)
    assert result["n"] == 10 and result["_detail"]["unpaired_a"] == 2 and result["_detail"]["unpaired_b"] == 0
    assert result["a"]["acc"] == 90.0  # q0-q8 right of q0-q9
