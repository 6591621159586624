"""``c2f_llava`` end to end through the plain ``lmms-eval`` command (no ``--include_path``) on generated data.

Tiny random checkpoints (built from configs, saved, loaded with ``from_pretrained``): the answers are noise; the
test checks the machinery: every subtask scored per category, efficiency metrics in the results JSON, C2F and the
plain backbone accounted the same way.
"""

from __future__ import annotations

import json

import pytest

from lrs_plugin.harness.run import offline_env, run_lmms_eval

SUBTASKS = ("lrs_vqa_fair", "lrs_vqa_bridge", "lrs_vqa_star")


@pytest.fixture(scope="module")
def small_tree(make_lrs_vqa_tree):
    sizes = {"FAIR": 6, "GLH-Bridge": 4, "STAR": 7}  # one question per category
    return make_lrs_vqa_tree(seed=3, questions_per_subset=sizes, bomb_image=False)


@pytest.fixture(scope="module")
def checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint("llava_next", "qwen2")


def _run(tree, checkpoint, tmp_path_factory, model_args):
    env = offline_env({"LRS_VQA_ROOT": str(tree)})
    env["LRS_PLUGIN_HOME"] = str(tmp_path_factory.getbasetemp() / "lrs_plugin_home")
    return run_lmms_eval(
        model="c2f_llava",
        model_args=f"pretrained={checkpoint},{model_args}",
        tasks=["lrs_vqa"],
        output_path=tmp_path_factory.mktemp("out"),
        env=env,
        use_task_hook=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def runs(small_tree, checkpoint, tmp_path_factory):
    c2f = _run(small_tree, checkpoint, tmp_path_factory, "reducer=c2f,focus=llm_attention,focus_layer=1")
    plain = _run(small_tree, checkpoint, tmp_path_factory, "reducer=none")
    return {"c2f": c2f, "none": plain}


@pytest.mark.parametrize("method", ["c2f", "none"])
def test_results_hold_accuracy_and_efficiency(runs, method):
    results = runs[method].results["results"]
    for task in SUBTASKS:
        metrics = results[task]
        assert 0.0 <= metrics["aa,none"] <= 100.0
        assert any(k.startswith("cat_") for k in metrics)
        for key in ("eff_vision_tokens_encoded", "eff_vision_tokens_to_llm", "eff_tflops", "eff_latency_s"):
            assert metrics[f"{key},none"] is not None and metrics[f"{key},none"] > 0, (task, key)
    assert "lrs_vqa" in runs[method].results["groups"]
    assert runs[method].results["config"]["model"] == "c2f_llava"


def test_no_sample_failed(runs):
    for method, run in runs.items():
        for task in SUBTASKS:
            for line in run.samples[task].read_text().splitlines():
                sample = json.loads(line)
                assert sample["aa"]["error"] is None, (method, sample["aa"])
                assert sample["eff_tflops"] > 0


def test_c2f_encodes_more_tiles_but_sends_fewer_tokens_per_encoded_token(runs):
    # C2F encodes thumbnail + base level + selected zoom tiles and keeps 25 % of the zoomed grid.
    for task in SUBTASKS:
        c2f = runs["c2f"].results["results"][task]
        ratio = c2f["eff_vision_tokens_to_llm,none"] / c2f["eff_vision_tokens_encoded,none"]
        assert ratio < 0.5, (task, ratio)
