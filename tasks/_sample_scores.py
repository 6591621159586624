"""Per-sample fields that lmms-eval 0.7.3's own statistics read, and the tolerant LRS-VQA metrics.

**Paired test (``--baseline``).** ``evaluator.simple_evaluate`` reads each sample log row's ``score_key`` field
(the task's ``score_key``, default ``score``; a number, or a dict with ``score``) for the current run, and
``baselines.loader._extract_score_from_sample`` reads the *first top-level key containing* ``score`` whose value is a
number from the baseline's samples file (a dict there only counts through ``pred``/``answer`` equality, which is not
this plugin's rule). So every row carries a top-level numeric ``score``: 1 when the answer is right, else 0. Its
metric is the pooled accuracy in percent (:func:`percent_mean`), the row whose ``Diff``/``CI``/``P_Value`` columns
lmms-eval fills (it subtracts the baseline's mean x 100 from every metric of the task).

**Clustered standard errors (``cluster_key``).** ``TaskOutput.calculate_clt_aggregate_metric`` takes, for each
metric whose items are dicts holding ``score_key``, that field as the 0/1 score and the ``cluster_key`` field as the
cluster. The per-sample record (``aa`` of LRS-VQA, ``mean_category_acc`` of MME-RealWorld-RS) therefore also carries
``score`` and ``image`` (:func:`cluster_fields`), and the task YAMLs set ``cluster_key: image``; lmms-eval then
reports ``<record metric>_stderr_clt`` and ``_stderr_clustered``: the naive and the image-clustered standard error
of the pooled per-question score (a fraction, 0-1), LRS-VQA having ~6 questions per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["cluster_fields", "count_true", "percent_mean", "tolerant_metrics"]


def cluster_fields(doc: Mapping[str, Any], correct: bool) -> dict[str, Any]:
    """``{"score": 0|1, "image": id}`` for the per-sample record; the image id falls back to the question id."""
    image = doc.get("image") or doc.get("image_path") or f"question:{doc.get('question_id')}"
    return {"score": int(bool(correct)), "image": str(image)}


def percent_mean(items: Sequence[float | None]) -> float | None:
    """Mean of the 0/1 scores in percent (``None`` items skipped; ``None`` when there are none)."""
    values = [float(v) for v in items if v is not None]
    return 100.0 * sum(values) / len(values) if values else None


def count_true(items: Sequence[float | None]) -> int:
    """How many items are 1 (``tolerant_rescued``: answers only the tolerant rule accepts)."""
    return int(sum(1 for v in items if v))


def tolerant_metrics(
    doc: Mapping[str, Any], prediction: str, strict_correct: bool, error: str | None, synonyms: str
) -> dict[str, Any]:
    """``aa_tolerant`` (a record read by ``aggregate_aa``) and ``tolerant_rescued`` (0/1) of one LRS-VQA answer.

    A sample whose model recorded a failure is wrong under both rules.
    """
    from lrs_plugin.scoring.tolerant import tolerant_is_correct

    tolerant = error is None and tolerant_is_correct(prediction, doc["ground_truth"], synonyms=synonyms)
    record = {"question_id": doc["question_id"], "category": doc["category"], "correct": bool(tolerant)}
    return {"aa_tolerant": record, "tolerant_rescued": int(bool(tolerant) and not strict_correct)}
