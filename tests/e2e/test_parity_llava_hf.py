"""``c2f_llava reducer=none`` is the plain backbone: same answers as lmms-eval's own ``llava_hf``.

Both run through the real ``lmms-eval`` command on the same tiny checkpoint, prompts and generated images.
lmms-eval's ``llava_hf`` imports ``decord`` (a video reader) at module level although images never need it; the
test puts a two-name stand-in on the child's ``PYTHONPATH`` so the real module can be imported on this machine.
"""

from __future__ import annotations

import json

import pytest

from lrs_plugin.harness.run import offline_env, run_lmms_eval

SUBTASKS = ("lrs_vqa_fair", "lrs_vqa_bridge", "lrs_vqa_star")


@pytest.fixture(scope="module")
def setting(tmp_path_factory, make_lrs_vqa_tree, make_tiny_checkpoint, decord_stub):
    base = tmp_path_factory.mktemp("parity")
    tree = make_lrs_vqa_tree(seed=5, questions_per_subset={"FAIR": 6, "GLH-Bridge": 4, "STAR": 7}, bomb_image=False)
    env = offline_env(
        {"LRS_VQA_ROOT": str(tree), "LRS_PLUGIN_HOME": str(base / "home"), "PYTHONPATH": str(decord_stub)}
    )
    return base, tree, env, make_tiny_checkpoint


def _predictions(run):
    out = {}
    for task in SUBTASKS:
        for line in run.samples[task].read_text().splitlines():
            record = json.loads(line)["aa"]
            out[record["question_id"]] = record["prediction"]
    return out


@pytest.mark.parametrize(("arch", "lm"), [("llava", "llama"), ("llava_next", "qwen2")])
def test_reducer_none_answers_equal_llava_hf(setting, arch, lm):
    base, _tree, env, tiny_checkpoint = setting
    checkpoint = tiny_checkpoint(arch, lm)
    ours = run_lmms_eval(
        model="c2f_llava",
        model_args=f"pretrained={checkpoint},reducer=none,device=cpu",
        tasks=["lrs_vqa"],
        output_path=base / f"ours-{arch}",
        env=env,
        timeout=900,
    )
    theirs = run_lmms_eval(
        model="llava_hf",
        model_args=f"pretrained={checkpoint},device=cpu,device_map=cpu",
        tasks=["lrs_vqa"],
        output_path=base / f"llava_hf-{arch}",
        env=env,
        extra_args=["--force_simple"],
        timeout=900,
    )
    assert "LlavaHf" in theirs.results["config"]["model_backend"] or "llava_hf" in theirs.results["config"]["model"]
    a, b = _predictions(ours), _predictions(theirs)
    assert len(a) == 17 and a.keys() == b.keys()
    assert sum(bool(v) for v in a.values()) >= 10, "the tiny model should answer with text"
    assert a == b
