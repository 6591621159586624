"""``c2f_llava`` under ``accelerate launch`` with 2 CPU processes (gloo) equals the single-process run.

17 generated questions (odd, so the shards are uneven: 9 and 8 docs, lmms-eval pads rank 1), a tiny random
checkpoint. The form that really starts 2 processes on CPU is
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 ...`` (``--cpu`` alone runs one).
The 2-process kill-and-resume test is ``tests/harness/test_resume.py::test_sigkill_then_resume_under_two_processes`` (slow).
"""

from __future__ import annotations

import json
import math
import re
import socket
import sys
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
def tree(tmp_path_factory) -> Path:
    from lrs_plugin.data.synthetic.lrs_vqa import write_lrs_vqa

    return write_lrs_vqa(tmp_path_factory.mktemp("mp_tree"), seed=3, questions_per_subset=SIZES, bomb_image=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from lrs_plugin.backbone.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("mp_ckpt") / "tiny-next-qwen2", arch="llava_next", lm="qwen2")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _evaluate(tree: Path, checkpoint: Path, out: Path, num_processes: int) -> EvalRun:
    launcher = None
    if num_processes > 1:
        launcher = [
            str(Path(sys.executable).with_name("accelerate")),
            "launch",
            "--multi_gpu",
            f"--num_processes={num_processes}",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            f"--main_process_port={_free_port()}",
        ]
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
def runs(tree, checkpoint, tmp_path_factory) -> dict[int, EvalRun]:
    return {n: _evaluate(tree, checkpoint, tmp_path_factory.mktemp(f"np{n}"), n) for n in (1, 2)}


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


class _FakeAccelerator:
    def __init__(self, device: str, num_processes: int, local_process_index: int) -> None:
        import torch

        self.device = torch.device(device)
        self.num_processes = num_processes
        self.local_process_index = local_process_index


@pytest.mark.parametrize(
    ("accelerator", "requested", "expected"),
    [
        (("cpu", 2, 1), None, "cpu"),  # ACCELERATE_USE_CPU / no GPU: gloo on the CPU
        (("cuda:1", 2, 1), None, "cuda:1"),
        (("cuda", 1, 0), None, "cuda:0"),
        (("cuda:1", 2, 1), "cuda", "cuda:1"),  # a bare --device cuda goes to the rank's GPU
        (("cuda:1", 2, 1), "cuda:0", "cuda:0"),  # an explicit index is the user's choice
        (("cpu", 1, 0), "cpu", "cpu"),
    ],
)
def test_rank_device(accelerator, requested, expected):
    from lrs_plugin.models.c2f_llava import _rank_device

    assert _rank_device(_FakeAccelerator(*accelerator), requested) == expected
