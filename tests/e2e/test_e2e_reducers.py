"""Every registered reducer through the real ``lmms-eval`` command on the generated LRS-VQA set (slow: one run each).

The same ``c2f_llava`` model class, checkpoint, prompt, greedy decoding and image reader for every method; the
results JSON must carry the per-category metrics and the efficiency metrics of each.
"""

from __future__ import annotations

import pytest

from lrs_plugin.backbone.tiny import TINY_REDUCER_OPTIONS
from lrs_plugin.harness.run import offline_env, run_lmms_eval
from lrs_plugin.reducers.registry import available_reducers

OPTIONS = TINY_REDUCER_OPTIONS
SUBTASKS = ("lrs_vqa_fair", "lrs_vqa_bridge", "lrs_vqa_star")


def test_every_registered_reducer_has_options_here():
    missing = sorted(set(available_reducers()) - set(OPTIONS))
    assert not missing, f"add end-to-end options for {missing}"


@pytest.fixture(scope="module")
def setting(tmp_path_factory, make_lrs_vqa_tree, make_tiny_checkpoint):
    base = tmp_path_factory.mktemp("reducers")
    tree = make_lrs_vqa_tree(seed=7, questions_per_subset={"FAIR": 6, "GLH-Bridge": 4, "STAR": 7}, bomb_image=False)
    checkpoint = make_tiny_checkpoint("llava_next", "qwen2")
    env = offline_env({"LRS_VQA_ROOT": str(tree), "LRS_PLUGIN_HOME": str(base / "home")})
    return base, checkpoint, env


@pytest.mark.slow
@pytest.mark.parametrize("reducer", sorted(available_reducers()))
def test_reducer_runs_end_to_end(setting, reducer):
    base, checkpoint, env = setting
    args = ",".join(a for a in (f"pretrained={checkpoint}", f"reducer={reducer}", OPTIONS[reducer]) if a)
    run = run_lmms_eval(
        model="c2f_llava",
        model_args=args,
        tasks=["lrs_vqa"],
        output_path=base / reducer,
        env=env,
        use_task_hook=True,
        extra_args=["--limit", "2"],
        timeout=900,
    )
    for task in SUBTASKS:
        metrics = run.results["results"][task]
        assert 0.0 <= metrics["aa,none"] <= 100.0
        keys = ("eff_vision_tokens_encoded", "eff_vision_tokens_to_llm", "eff_tflops", "eff_latency_s", "eff_ttft_s")
        for key in keys:
            if reducer == "blind" and key.startswith("eff_vision_"):  # no vision token: the language-prior floor
                assert metrics[f"{key},none"] == 0, (reducer, task, key)
                continue
            assert metrics[f"{key},none"] is not None and metrics[f"{key},none"] > 0, (reducer, task, key)
