"""The task YAMLs and their Python glue, checked without running lmms-eval."""

from __future__ import annotations

import re

import pytest
import yaml

from lrs_plugin import tasks_dir
from lrs_plugin.data import lrs_vqa as lrs_data
from lrs_plugin.data import mme_realworld_rs as mme_data
from lrs_plugin.harness.record import STORE, SampleRecord, sample_key
from lrs_plugin.tasks import _common
from lrs_plugin.tasks.lrs_vqa import utils as lrs_utils
from lrs_plugin.tasks.mmerealworld_rs import utils as mme_utils


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _load(name: str) -> dict:
    with open(tasks_dir() / name) as fh:
        return yaml.load(fh, Loader=_Loader)


SUBTASKS = {"lrs_vqa_fair": "FAIR", "lrs_vqa_bridge": "GLH-Bridge", "lrs_vqa_star": "STAR"}


@pytest.mark.parametrize("task", sorted(SUBTASKS))
def test_subtask_metrics_are_its_categories(task):
    config = _load(f"lrs_vqa/{task}.yaml")
    metrics = [m["metric"] for m in config["metric_list"]]
    expected = ["aa", "oa"] + [lrs_utils.category_metric(c) for c in lrs_data.SUBSETS[SUBTASKS[task]]]
    expected += [f"eff_{k}" for k in _common.EFFICIENCY_KEYS] + ["score", "aa_tolerant", "tolerant_rescued"]
    assert metrics == expected
    assert config["task"] == task
    assert config["process_docs"].endswith(f"process_docs_{task.rsplit('_', 1)[1]}")


def test_group_metric_names_are_not_substrings_of_subtask_metrics():
    # lmms-eval 0.7.3 aggregates a group metric over every subtask metric whose name *contains* it.
    group = _load("lrs_vqa/lrs_vqa.yaml")
    group_metrics = [m["metric"] for m in group["aggregate_metric_list"]]
    assert group_metrics == ["aa", "oa"]
    for task in SUBTASKS:
        for metric in (m["metric"] for m in _load(f"lrs_vqa/{task}.yaml")["metric_list"]):
            for gm in group_metrics:
                # aa_tolerant on purpose: the group's unweighted mean of the subsets' tolerant AA is the right number
                assert gm not in metric or gm == metric or metric == "aa_tolerant", (gm, metric)
    assert group["task"] == list(SUBTASKS)


def test_template_generation_is_greedy_and_prompt_adds_nothing():
    template = _load("lrs_vqa/_lrs_vqa_template_yaml")
    gen = template["generation_kwargs"]
    assert gen["temperature"] == 0 and gen["do_sample"] is False and gen["max_new_tokens"] == 32
    doc = {"text": "How many planes are there? \nAnswer the question using a single word or phrase."}
    assert lrs_utils.doc_to_text(doc, template["lmms_eval_specific_kwargs"]["default"]) == doc["text"]


def test_mme_yaml_metrics_and_names():
    template = _load("mmerealworld_rs/_mmerealworld_rs_template_yaml")
    assert [m["metric"] for m in template["metric_list"]] == [
        "acc",
        "mean_category_acc",
        "cat_color",
        "cat_count",
        "cat_position",
    ] + [f"eff_{k}" for k in _common.EFFICIENCY_KEYS] + ["score"]
    assert _load("mmerealworld_rs/mmerealworld_rs.yaml")["task"] == "mmerealworld_rs"
    assert _load("mmerealworld_rs/mmerealworld_rs_strict.yaml")["task"] == "mmerealworld_rs_strict"


def test_every_yaml_function_resolves():
    import importlib

    for path in tasks_dir().rglob("*yaml"):
        text = path.read_text()
        for ref in re.findall(r"!function ([\w.]+)", text):
            module, _, name = ref.rpartition(".")
            assert callable(getattr(importlib.import_module(module), name)), ref


def _lrs_doc(**over):
    doc = {
        "benchmark": "lrs_vqa",
        "question_id": "STAR_7",
        "subset": "STAR",
        "category": "object color",
        "ground_truth": "gray",
        "text": "q",
        "image": "LRS_VQA/image/0001.png",
        "image_path": "/nope.png",
    }
    doc.update(over)
    return doc


def test_process_results_correct_wrong_and_recorded_failure():
    STORE.clear()
    out = lrs_utils.process_results(_lrs_doc(), ["Gray"])
    assert out["oa"] == 100.0 and out["cat_object_color"] == 100.0 and out["cat_count"] is None
    cats = {lrs_utils.category_metric(c) for c in lrs_data.SUBSETS["STAR"]}
    extra = {"score", "aa_tolerant", "tolerant_rescued"}
    assert set(out) == {"aa", "oa"} | cats | {f"eff_{k}" for k in _common.EFFICIENCY_KEYS} | extra
    assert out["eff_tflops"] is None  # nothing recorded by a model
    assert out["aa"]["correct"] is True and out["aa"]["synonyms"] == "wordnet"
    assert lrs_utils.process_results(_lrs_doc(), ["gray."])["oa"] == 0.0  # punctuation is not stripped
    assert lrs_utils.process_results(_lrs_doc(), [""])["oa"] == 0.0  # empty answer: recorded wrong
    # A model-side failure makes the sample wrong even if the text matches, and the reason is kept.
    doc = _lrs_doc()
    STORE.put(sample_key(doc), SampleRecord(error="ImageReadError: truncated", tflops=1.5, vision_tokens_to_llm=10))
    out = lrs_utils.process_results(doc, ["gray"])
    assert out["oa"] == 0.0 and out["aa"]["error"] == "ImageReadError: truncated"
    assert out["eff_tflops"] == 1.5 and out["eff_vision_tokens_to_llm"] == 10.0
    assert len(STORE) == 0


def test_aggregations_hand_computed():
    items = [
        {"category": "count", "correct": True},
        {"category": "count", "correct": False},
        {"category": "count", "correct": False},
        {"category": "reasoning", "correct": True},
    ]
    assert lrs_utils.aggregate_aa(items) == pytest.approx((100 / 3 + 100) / 2)
    assert _common.mean_skip_none([None, 100.0, 0.0, None]) == 50.0
    assert _common.mean_skip_none([None]) is None
    assert _common.first_response([["x"]]) == "x" and _common.first_response([]) == ""


def test_mme_process_results_official_vs_strict():
    STORE.clear()
    doc = {
        "benchmark": "mmerealworld_rs",
        "question_id": "11",
        "category": "count",
        "answer": "C",
        "options": ["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) none"],
        "image_error": None,
    }
    assert mme_utils.process_results(doc, ["C"])["acc"] == 100.0
    official = mme_utils.process_results(doc, ["Answer: C"])
    strict = mme_utils.process_results_strict(doc, ["Answer: C"])
    assert official["mean_category_acc"]["extracted"] == "A" and official["acc"] == 0.0
    assert strict["mean_category_acc"]["extraction"] == "strict"
    assert mme_utils.process_results(doc, [""])["acc"] == 0.0
    broken = dict(doc, image_error="not an image")
    out = mme_utils.process_results(broken, ["C"])
    assert out["acc"] == 0.0 and out["mean_category_acc"]["error"] == "not an image"
    assert out["cat_count"] == 0.0 and out["cat_color"] is None
    assert set(mme_data.L2_CATEGORIES) == {"color", "count", "position"}
