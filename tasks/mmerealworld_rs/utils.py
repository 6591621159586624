"""lmms-eval glue of the MME-RealWorld Remote Sensing tasks (``mmerealworld_rs``, ``mmerealworld_rs_strict``).

Referenced from the YAML files by full dotted path, so lmms-eval imports this module once as a package module.
The scoring rules live in :mod:`lrs_plugin.scoring.rules`; ``lrs-plugin score mmerealworld_rs`` uses the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lrs_plugin import scoring
from lrs_plugin.data import mme_realworld_rs as mme_data
from lrs_plugin.harness.record import STORE, sample_key
from lrs_plugin.tasks._common import efficiency_metrics, first_response, log_failures, mean_skip_none
from lrs_plugin.tasks._sample_scores import cluster_fields

__all__ = [
    "BENCHMARK",
    "process_docs",
    "doc_to_visual",
    "doc_to_text",
    "process_results",
    "process_results_strict",
    "aggregate_mean_category_acc",
    "mean_skip_none",
]

BENCHMARK = "mmerealworld_rs"


def _features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "benchmark": Value("string"),
            "question_id": Value("string"),
            "index": Value("int64"),
            "question": Value("string"),
            "options": Sequence(Value("string")),
            "answer": Value("string"),
            "category": Value("string"),
            "image": Value("string"),
            "image_path": Value("string"),
            "image_error": Value("string"),
        }
    )


def process_docs(dataset: Any):
    """Replace the placeholder rows with the prepared RS documents (image paths, not pixels)."""
    from datasets import Dataset

    root = mme_data.resolve_root()
    docs = [{"benchmark": BENCHMARK, **doc} for doc in mme_data.build_docs(root)]
    return Dataset.from_list(docs, features=_features())


def doc_to_visual(doc: Mapping[str, Any]) -> list:
    """The document's image, lazily decoded; an empty list (logged) when it is missing or broken."""
    from lrs_plugin.errors import ImageReadError
    from lrs_plugin.imagery.large_image import open_lazy

    if not doc.get("image_path"):
        return []
    try:
        return [open_lazy(doc["image_path"])]
    except ImageReadError as exc:
        from loguru import logger

        logger.warning("mmerealworld_rs: {}: {}", doc.get("question_id"), exc)
        return []


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    """Question, options and the letter-only instruction (``prompt_style``: ``paper`` or ``lmms_eval``)."""
    style = (lmms_eval_specific_kwargs or {}).get("prompt_style", "paper")
    return mme_data.build_prompt(doc, style=style)


@log_failures
def _process(doc: Mapping[str, Any], results: Sequence[Any], extraction: str) -> dict[str, Any]:
    prediction = first_response(results)
    record = STORE.get(sample_key(doc))
    error = (record.error if record else None) or doc.get("image_error")
    options = list(doc["options"])
    extracted = scoring.mme_extract_choice(prediction, options, mode=extraction)
    correct = error is None and extracted == doc["answer"]
    score = 100.0 if correct else 0.0
    sample = {
        "question_id": doc["question_id"],
        "category": doc["category"],
        "prediction": prediction,
        "extracted": extracted,
        "answer": doc["answer"],
        "options": options,
        "correct": bool(correct),
        "extraction": extraction,
        "error": error,
        **cluster_fields(doc, correct),  # lmms-eval's clustered stderr (tasks/_sample_scores.py)
    }
    out: dict[str, Any] = {"acc": score, "mean_category_acc": sample, "score": int(correct)}  # what --baseline pairs
    for category in mme_data.L2_CATEGORIES:
        out[f"cat_{category}"] = score if doc["category"] == category else None
    out.update(efficiency_metrics(record))
    STORE.pop(sample_key(doc))  # only once the sample is scored: lmms-eval retries a process_results that raised
    return out


def process_results(doc: Mapping[str, Any], results: Sequence[Any]) -> dict[str, Any]:
    """Score one answer with the official MME-RealWorld extraction."""
    return _process(doc, results, "official")


def process_results_strict(doc: Mapping[str, Any], results: Sequence[Any]) -> dict[str, Any]:
    """Score one answer with the strict extraction (standalone letter only)."""
    return _process(doc, results, "strict")


def aggregate_mean_category_acc(items: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean of the color / count / position accuracies (percent)."""
    if not items:
        return None
    return scoring.average_accuracy(items)
