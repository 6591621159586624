"""The ``lrs-plugin`` command, run as users run it: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lrs_plugin import __version__


def _cli(*args, check=True, env=None):
    return subprocess.run(
        [sys.executable, "-m", "lrs_plugin.cli", *args], capture_output=True, text=True, check=check, env=env
    )


def test_version_and_help():
    assert _cli("--version").stdout.strip() == f"lrs-plugin {__version__}"
    out = _cli("--help").stdout
    for command in ("fetch", "score", "demo", "flops"):
        assert command in out


def test_fetch_missing_parts_is_a_clean_error(tmp_path):
    (tmp_path / "parts").mkdir()
    proc = _cli(
        "fetch", "lrs_vqa", "--root", str(tmp_path / "root"), "--parts-dir", str(tmp_path / "parts"), check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "LRS_VQA.7z.001" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fetch_from_local_parts_then_noop(lrs_vqa_tree, tmp_path):
    from lrs_plugin.data.synthetic.lrs_vqa import write_lrs_vqa_archive

    parts = write_lrs_vqa_archive(lrs_vqa_tree, tmp_path / "parts", num_parts=3)
    root = tmp_path / "root"
    first = _cli("fetch", "lrs_vqa", "--root", str(root), "--parts-dir", str(parts[0].parent), "--quiet")
    assert "LRS-VQA ready" in first.stdout
    assert (root / "LRS_VQA" / "LRS_VQA_merged.jsonl").is_file()
    marker = (root / ".lrs_vqa_complete.json").read_bytes()
    _cli("fetch", "lrs_vqa", "--root", str(root), "--parts-dir", str(parts[0].parent), "--quiet")
    assert (root / ".lrs_vqa_complete.json").read_bytes() == marker


def test_score_runner_format_hand_computed(tmp_path):
    rows = [
        ("FAIR_1", "count", "3", "3"),  # exact
        ("FAIR_2", "count", "2", "two"),  # WordNet: 2 and two share a synset
        ("FAIR_3", "count", "4", "5"),
        ("FAIR_4", "reasoning", "yes", "yes."),  # punctuation is not stripped: wrong
        ("STAR_1", "object color", "gray", "Grey"),  # case + WordNet spelling
        ("STAR_2", "object color", "white", "black"),
    ]
    path = tmp_path / "answers.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"question_id": q, "category": c, "ground_truth": gt, "text": pred}) for q, c, gt, pred in rows
        )
    )
    summary = json.loads(_cli("score", "lrs_vqa", str(path), "--json").stdout)
    assert summary["task"] == "lrs_vqa" and summary["synonyms"] == "wordnet"
    fair = summary["subsets"]["FAIR"]
    assert fair["n"] == 4
    assert fair["categories"]["count"] == {"n": 3, "acc": pytest.approx(200 / 3)}
    assert fair["categories"]["reasoning"] == {"n": 1, "acc": 0.0}
    assert fair["oa"] == pytest.approx(50.0)
    assert fair["aa"] == pytest.approx((200 / 3 + 0.0) / 2)
    assert summary["subsets"]["STAR"]["aa"] == pytest.approx(50.0)
    assert summary["mean_aa"] == pytest.approx(((200 / 3) / 2 + 50.0) / 2)
    exact = json.loads(_cli("score", "lrs_vqa", str(path), "--json", "--synonyms", "exact").stdout)
    assert exact["synonyms"] == "exact" and exact["subsets"]["FAIR"]["oa"] == pytest.approx(25.0)
    table = _cli("score", "lrs_vqa", str(path)).stdout
    assert "FAIR" in table and "STAR" in table


def test_score_reports_the_bad_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": "FAIR_1", "category": "count", "ground_truth": "3", "text": "3"}\n{oops\n')
    proc = _cli("score", "lrs_vqa", str(path), check=False)
    assert proc.returncode == 2 and "line 2" in proc.stderr


def test_flops_paper_table_json():
    rows = json.loads(_cli("flops", "--paper-table", "--json").stdout)
    assert len(rows) == 7
    for row in rows:
        assert set(row) == {"setting", "tflops", "paper_tflops"}
        assert row["tflops"] == pytest.approx(row["paper_tflops"], abs=0.005)


def test_demo_small_end_to_end(tmp_path):
    from lrs_plugin.harness.run import offline_env

    env = offline_env({"LRS_PLUGIN_HOME": str(tmp_path / "home")})
    proc = _cli("demo", "--small", "--out", str(tmp_path / "demo"), env=env)
    assert "AA (mean of categories)" in proc.stdout and "meaningless" in proc.stdout
    results = list((tmp_path / "demo" / "results").rglob("*_results.json"))
    assert results
    for path in results:  # every task's efficiency reached its metrics (the MME task's metadata once dropped it)
        metrics = json.loads(path.read_text())["results"]
        for task in ("lrs_vqa_fair", "mmerealworld_rs"):
            assert metrics[task]["eff_latency_s,none"] > 0, (path, task)


def test_flops_setting_with_a_model_config(tmp_path):
    from transformers import LlavaNextConfig, Qwen2Config

    text = Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    )
    LlavaNextConfig(text_config=text.to_dict()).save_pretrained(tmp_path)
    out = _cli("flops", "--model-config", str(tmp_path / "config.json"), "--setting", "anyres-p144 w/ PDrop").stdout
    assert "101.62" in out
    small = Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    LlavaNextConfig(text_config=small.to_dict()).save_pretrained(tmp_path / "small")
    proc = _cli("flops", "--model-config", str(tmp_path / "small"), "--setting", "anyres-p144", check=False)
    assert proc.returncode == 2 and "28 LLM layers" in proc.stderr
