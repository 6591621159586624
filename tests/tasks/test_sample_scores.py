"""The per-sample fields lmms-eval's own statistics read (``score``, ``cluster_key``) and the tolerant metrics."""

from __future__ import annotations

import pytest

from lrs_plugin.harness.record import STORE, SampleRecord, sample_key
from lrs_plugin.tasks import _sample_scores
from lrs_plugin.tasks.lrs_vqa import utils as lrs_utils
from lrs_plugin.tasks.mmerealworld_rs import utils as mme_utils


def _doc(**over):
    doc = {
        "benchmark": "lrs_vqa",
        "question_id": "FAIR_3",
        "subset": "FAIR",
        "category": "object shape",
        "ground_truth": "t-shaped",
        "text": "q",
        "image": "LRS_VQA/image/15565.tif",
        "image_path": "/nope.tif",
    }
    doc.update(over)
    return doc


def test_every_lrs_row_has_a_numeric_score_and_an_image_cluster():
    STORE.clear()
    right = lrs_utils.process_results(_doc(), ["T-shaped"])
    wrong = lrs_utils.process_results(_doc(), ["round"])
    assert right["score"] == 1 and wrong["score"] == 0 and isinstance(right["score"], int)
    assert right["aa"]["score"] == 1 and right["aa"]["image"] == "LRS_VQA/image/15565.tif"
    assert wrong["aa"]["score"] == 0 and (right["oa"], wrong["oa"]) == (100.0, 0.0)


def test_the_tolerant_metrics_rescue_form_variants_and_keep_aa_strict():
    STORE.clear()
    out = lrs_utils.process_results(_doc(), ["T shape."])
    assert out["aa"]["correct"] is False and out["oa"] == 0.0 and out["score"] == 0  # the paper's rule
    assert out["aa_tolerant"] == {"question_id": "FAIR_3", "category": "object shape", "correct": True}
    assert out["tolerant_rescued"] == 1
    both = lrs_utils.process_results(_doc(), ["t-shaped"])
    assert both["aa_tolerant"]["correct"] is True and both["tolerant_rescued"] == 0  # right anyway: not rescued
    doc = _doc()
    STORE.put(sample_key(doc), SampleRecord(error="ImageReadError: truncated"))
    failed = lrs_utils.process_results(doc, ["t-shaped"])
    assert failed["aa_tolerant"]["correct"] is False and failed["tolerant_rescued"] == 0 and failed["score"] == 0


def test_mme_rows_have_a_score_and_an_image_cluster():
    STORE.clear()
    doc = {
        "benchmark": "mmerealworld_rs",
        "question_id": "11",
        "category": "count",
        "answer": "C",
        "options": ["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) none"],
        "image": "images/ab12.png",
        "image_error": None,
    }
    out = mme_utils.process_results(doc, ["C"])
    assert out["score"] == 1 and out["mean_category_acc"]["score"] == 1
    assert out["mean_category_acc"]["image"] == "images/ab12.png"
    broken = mme_utils.process_results(dict(doc, image=None, image_error="undecodable image"), ["C"])
    assert broken["score"] == 0 and broken["mean_category_acc"]["image"] == "question:11"  # its own cluster


def test_aggregations():
    assert _sample_scores.percent_mean([1, 0, 0, 1, None]) == 50.0
    assert _sample_scores.percent_mean([None]) is None
    assert _sample_scores.count_true([1, 0, 1, None]) == 2
    items = [
        {"category": "count", "correct": True},
        {"category": "count", "correct": False},
        {"category": "reasoning", "correct": True},
    ]
    assert lrs_utils.aggregate_aa(items) == pytest.approx(75.0)
