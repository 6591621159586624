"""``c2f_llava`` under ``accelerate launch`` with 2 CPU processes (gloo) equals the single-process run.

17 generated questions (odd, so the shards are uneven: 9 and 8 docs, lmms-eval pads rank 1), a tiny random
checkpoint. The form that really starts 2 processes on CPU is
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 ...`` (``--cpu`` alone runs one).
The 2-process kill-and-resume test is
``tests/harness/test_resume.py::test_sigkill_then_resume_under_two_processes`` (slow).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from lrs_plugin.flops.accounting import MEASURED_KEYS
from lrs_plugin.harness.run import EvalRun, offline_env, run_lmms_eval

SIZES = {"FAIR": 6, "GLH-Bridge": 4, "STAR": 7}
N_DOCS = sum(SIZES.values())
METHOD = "reducer=c2f,focus=llm_attention,focus_layer=1"
GENERATED = re.compile(r"c2f_llava: generated (\S+)/(\d+) \((\S+)\) on rank (\d+)")
EFFICIENCY = ("eff_vision_tokens_encoded", "eff_vision_tokens_to_llm", "eff_tflops", "eff_latency_s")


@pytest.fixture(scope="module")
def tree(make_lrs_vqa_tree) -> Path:
    return make_lrs_vqa_tree(seed=3, questions_per_subset=SIZES, bomb_image=False)


@pytest.fixture(scope="module")
def checkpoint(make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint("llava_next", "qwen2")


def _evaluate(tree: Path, checkpoint: Path, out: Path, launcher: list[str] | None) -> EvalRun:
    env = offline_env(
        {
            "LRS_VQA_ROOT": str(tree),
            "LRS_PLUGIN_HOME": str(out / "lrs_plugin_home"),
            "ACCELERATE_USE_CPU": "true",
            "OMP_NUM_THREADS": "1",
        }
    )
    return run_lmms_eval(
        model="c2f_llava",
        model_args=f"pretrained={checkpoint},{METHOD}",
        tasks=["lrs_vqa"],
        output_path=out,
        env=env,
        launcher=launcher,
        extra_args=["--verbosity", "DEBUG"],  # per-generation log lines; an exception gives rc 1
        timeout=600,
    )


@pytest.fixture(scope="module")
def runs(tree, checkpoint, tmp_path_factory, accelerate_launch) -> dict[int, EvalRun]:
    return {n: _evaluate(tree, checkpoint, tmp_path_factory.mktemp(f"np{n}"), accelerate_launch(n)) for n in (1, 2)}


def _metrics(run: EvalRun) -> dict[str, object]:
    return {
        f"{section}/{task}/{name}": value
        for section in ("results", "groups")
        for task, metrics in run.results[section].items()
        for name, value in metrics.items()
        if name != "alias" and not any(k in name for k in MEASURED_KEYS)  # measured times and memory vary
    }


def _samples(run: EvalRun) -> dict[tuple[str, int], dict]:
    out = {}
    for task, path in run.samples.items():
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            out[(task, sample["doc_id"])] = sample
    return out


def test_two_processes_really_ran(runs):
    log = runs[2].log
    assert "rank 0/2 on cpu" in log and "rank 1/2 on cpu" in log
    per_rank = Counter(int(m.group(4)) for m in GENERATED.finditer(log))
    # 17 docs round-robin: 9 + 8 real ones; lmms-eval pads rank 1 with a copy of its last request.
    assert per_rank[0] == 9 and per_rank[1] in (8, 9), per_rank
    assert Counter(int(m.group(4)) for m in GENERATED.finditer(runs[1].log)) == {0: N_DOCS}


def test_metrics_equal_single_process(runs):
    one, two = _metrics(runs[1]), _metrics(runs[2])
    assert one.keys() == two.keys()
    assert any("/eff_tflops," in key for key in one) and any("/aa," in key for key in one)
    for key, value in one.items():
        if isinstance(value, float) and isinstance(two[key], float):
            assert math.isclose(value, two[key], rel_tol=1e-9, abs_tol=1e-15), (key, value, two[key])  # sum order
        else:
            assert value == two[key], (key, value, two[key])
    for task in ("lrs_vqa_fair", "lrs_vqa_bridge", "lrs_vqa_star"):
        assert runs[2].results["n-samples"][task] == runs[1].results["n-samples"][task]


def test_samples_of_both_ranks_carry_efficiency(runs):
    one, two = _samples(runs[1]), _samples(runs[2])
    assert one.keys() == two.keys() and len(one) == N_DOCS
    ranks = {(m.group(1), int(m.group(2))): int(m.group(4)) for m in GENERATED.finditer(runs[2].log)}
    assert set(ranks.values()) == {0, 1}
    for key, sample in two.items():
        assert key in ranks, key
        for name in EFFICIENCY:
            assert sample[name] is not None and sample[name] > 0, (key, ranks[key], name)
        for name in ("eff_vision_tokens_encoded", "eff_vision_tokens_to_llm", "eff_tflops"):
            assert sample[name] == one[key][name], (key, name)
        assert sample["filtered_resps"] == one[key]["filtered_resps"], key
        assert sample["aa"]["error"] is None, sample["aa"]
