"""Measured costs and ``reducer=blind`` through the real ``lmms-eval`` command on the generated LRS-VQA set.

Checked by invariants only (no timing thresholds): every sample log row carries the measured figures, its stages sum
to at most its latency, its TTFT is within it, and the task means are the means of the rows.
"""

from __future__ import annotations

import json

import pytest

from lrs_plugin.backbone.tiny import TINY_REDUCER_OPTIONS
from lrs_plugin.flops.accounting import EFFICIENCY_KEYS
from lrs_plugin.harness.run import offline_env, run_lmms_eval

SUBTASKS = ("lrs_vqa_fair", "lrs_vqa_bridge", "lrs_vqa_star")
STAGE_KEYS = ("eff_image_read_s", "eff_vision_encode_s", "eff_focus_s", "eff_llm_prefill_s", "eff_llm_decode_s")
MEASURED = (*STAGE_KEYS, "eff_ttft_s", "eff_peak_memory_mib", "eff_peak_memory_growth_mib", "eff_kv_cache_mib")


@pytest.fixture(scope="module")
def setting(tmp_path_factory, make_lrs_vqa_tree, make_tiny_checkpoint):
    base = tmp_path_factory.mktemp("costs")
    tree = make_lrs_vqa_tree(seed=3, questions_per_subset={"FAIR": 6, "GLH-Bridge": 4, "STAR": 7}, bomb_image=False)
    checkpoint = make_tiny_checkpoint("llava_next", "qwen2")
    env = offline_env({"LRS_VQA_ROOT": str(tree), "LRS_PLUGIN_HOME": str(base / "home")})
    return base, checkpoint, env


def _run(setting, reducer: str):
    base, checkpoint, env = setting
    args = ",".join(a for a in (f"pretrained={checkpoint}", f"reducer={reducer}", TINY_REDUCER_OPTIONS[reducer]) if a)
    return run_lmms_eval(
        model="c2f_llava",
        model_args=args,
        tasks=["lrs_vqa"],
        output_path=base / reducer,
        env=env,
        use_task_hook=True,
        extra_args=["--limit", "2"],
        timeout=900,
    )


def _samples(run, task: str) -> list[dict]:
    return [json.loads(line) for line in run.samples[task].read_text().splitlines() if line.strip()]


def test_results_and_sample_logs_carry_the_measured_costs(setting):
    run = _run(setting, "c2f")
    for task in SUBTASKS:
        metrics = run.results["results"][task]
        rows = _samples(run, task)
        assert len(rows) == 2
        for row in rows:
            assert row["aa"]["error"] is None
            assert all(isinstance(row[k], float) and row[k] >= 0.0 for k in MEASURED), row
            assert sum(row[k] for k in STAGE_KEYS) <= row["eff_latency_s"]
            assert 0.0 < row["eff_ttft_s"] <= row["eff_latency_s"]
            assert row["eff_focus_s"] > 0.0 and row["eff_kv_cache_mib"] > 0.0  # C2F scores; the LLM caches keys
        for key in MEASURED:
            assert metrics[f"{key},none"] == pytest.approx(sum(r[key] for r in rows) / len(rows)), (task, key)
    figures = run.results["throughput"]  # the same means for any task, through lmms-eval's own channel
    for key in EFFICIENCY_KEYS:
        if key.startswith("focus_"):
            continue  # recall needs a target box (the generated LRS-VQA set has one; not asserted here)
        assert figures[f"avg_eff_{key}"] is not None, key


def test_blind_answers_without_vision_tokens_and_reports_accuracy(setting):
    run = _run(setting, "blind")
    answers = []
    for task in SUBTASKS:
        metrics = run.results["results"][task]
        assert 0.0 <= metrics["aa,none"] <= 100.0 and 0.0 <= metrics["oa,none"] <= 100.0
        assert metrics["eff_vision_tokens_to_llm,none"] == 0.0 and metrics["eff_vision_tokens_encoded,none"] == 0.0
        assert metrics["eff_tflops,none"] > 0.0  # the text prefill and decoding
        assert metrics["eff_vision_encode_s,none"] == 0.0 and metrics["eff_focus_s,none"] == 0.0
        for row in _samples(run, task):
            assert row["aa"]["error"] is None and row["eff_focus_tile_recall"] is None  # recall: null
            answers.append(row["filtered_resps"][0])
    assert len(answers) == 2 * len(SUBTASKS)
    assert any(a.strip() for a in answers), "the tiny model should answer with text"
    assert run.results["throughput"]["avg_eff_text_only"] == 0  # the requests held images: blind chose not to look
