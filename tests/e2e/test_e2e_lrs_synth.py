"""``lrs_synth`` through the plain ``lmms-eval`` command: the task registers, scores per category, reports recall."""

from __future__ import annotations

import json

import pytest

from lrs_plugin.harness.run import offline_env, run_lmms_eval
from lrs_plugin.testbed.scenes import CATEGORIES


@pytest.fixture(scope="module")
def synth_tree(make_lrs_synth_tree):
    return make_lrs_synth_tree(split="eval", seed=5, num_scenes=2)


@pytest.fixture(scope="module")
def checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint("llava_next", "qwen2")


def _run(tree, checkpoint, tmp_path_factory, stub, model, model_args, extra=()):
    env = offline_env({"LRS_SYNTH_ROOT": str(tree), "PYTHONPATH": str(stub)})  # llava_hf imports decord at import
    env["LRS_PLUGIN_HOME"] = str(tmp_path_factory.getbasetemp() / "lrs_plugin_home")
    return run_lmms_eval(
        model=model,
        model_args=f"pretrained={checkpoint},{model_args}" if model_args else f"pretrained={checkpoint}",
        tasks=["lrs_synth"],
        output_path=tmp_path_factory.mktemp("out"),
        env=env,
        use_task_hook=True,
        extra_args=list(extra),
        timeout=900,
    )


def test_c2f_oracle_on_lrs_synth_scores_and_finds_the_targets(synth_tree, checkpoint, tmp_path_factory, decord_stub):
    exact = "reducer=c2f,focus=oracle,newline_vote_quirk=False,unpad_floor_quirk=False"
    run = _run(synth_tree, checkpoint, tmp_path_factory, decord_stub, "c2f_llava", exact)
    metrics = run.results["results"]["lrs_synth"]
    assert 0.0 <= metrics["aa,none"] <= 100.0
    for category in CATEGORIES:
        assert f"cat_{category.replace(' ', '_')},none" in metrics
    samples = [json.loads(line) for line in run.samples["lrs_synth"].read_text().splitlines()]
    assert len(samples) == 8
    assert all(s["aa"]["error"] is None for s in samples)
    recalls = [s["eff_focus_tile_recall"] for s in samples]
    categories = [s["aa"]["category"] for s in samples]
    assert metrics["eff_focus_tile_recall,none"] == pytest.approx(sum(recalls) / len(recalls))
    assert 0.0 < metrics["eff_focus_token_recall,none"] <= 1.0
    # With the exact geometry (docs/c2f.md quirks 1 and 4 off) the box as focus reaches every one-object target
    # (docs/testbed.md: 100 % on 515 evaluation questions); a count box surrounds several discs, so its centre may
    # fall between them, where no tile needs to be.
    assert [r for r, c in zip(recalls, categories, strict=True) if c != "count"] == [1.0] * 6, (recalls, categories)
    assert categories.count("count") == 2


@pytest.mark.slow
def test_reducer_none_answers_lrs_synth_like_builtin_llava_hf(synth_tree, checkpoint, tmp_path_factory, decord_stub):
    args = (synth_tree, checkpoint, tmp_path_factory, decord_stub)
    theirs = _run(*args, "llava_hf", "device=cpu,device_map=cpu", extra=("--force_simple",))
    ours = _run(*args, "c2f_llava", "reducer=none,device=cpu")
    for run in (theirs, ours):
        metrics = run.results["results"]["lrs_synth"]
        assert 0.0 <= metrics["aa,none"] <= 100.0 and 0.0 <= metrics["oa,none"] <= 100.0

    def predictions(run):
        rows = [json.loads(line) for line in run.samples["lrs_synth"].read_text().splitlines()]
        return {r["doc_id"]: r["filtered_resps"][0] for r in rows}

    assert ours.results["results"]["lrs_synth"]["eff_focus_tile_recall,none"] == 1.0  # every tile kept
    assert ours.results["results"]["lrs_synth"]["eff_focus_token_recall,none"] == 1.0
    a, b = predictions(ours), predictions(theirs)
    assert a.keys() == b.keys() and len(a) == 8
    assert a == b
