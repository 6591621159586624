"""lmms-eval glue of the LRS-VQA tasks: documents, prompt, per-sample scoring and aggregation.

Referenced from the YAML files by full dotted path (``lrs_plugin.tasks.lrs_vqa.utils.x``) so that lmms-eval imports
this module once, as a normal package module, instead of loading a fresh copy of the file per function.
The scoring rules live in :mod:`lrs_plugin.scoring.rules`; ``lrs-plugin score`` uses the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lrs_plugin import scoring
from lrs_plugin.data import lrs_vqa as lrs_data
from lrs_plugin.harness.record import STORE, sample_key
from lrs_plugin.tasks._common import efficiency_metrics, first_response, log_failures, mean_skip_none
from lrs_plugin.tasks._sample_scores import cluster_fields, tolerant_metrics

__all__ = [
    "BENCHMARK",
    "SYNONYMS",
    "category_metric",
    "process_docs_fair",
    "process_docs_bridge",
    "process_docs_star",
    "doc_to_visual",
    "doc_to_text",
    "process_results",
    "score_sample",
    "aggregate_aa",
    "mean_skip_none",
]

BENCHMARK = "lrs_vqa"
#: Synonym rule of the task metrics: the paper's (exact match or a shared WordNet synset).
SYNONYMS = "wordnet"


def category_metric(category: str) -> str:
    """Metric name of one category: ``"object color"`` -> ``"cat_object_color"``."""
    return "cat_" + category.replace(" ", "_")


def _features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "benchmark": Value("string"),
            "question_id": Value("string"),
            "subset": Value("string"),
            "image": Value("string"),
            "image_path": Value("string"),
            "category": Value("string"),
            "text": Value("string"),
            "ground_truth": Value("string"),
            "hbox": Sequence(Value("int64")),
            "rbox": Sequence(Value("float64")),
            "image_size": Sequence(Value("int64")),
            "size_bin": Value("string"),
            "abs_size": Value("string"),
        }
    )


def _subset_docs(subset: str):
    """Build the evaluation documents of one subset from the extracted data (images stay on disk)."""
    from datasets import Dataset

    if SYNONYMS == "wordnet":
        from lrs_plugin.scoring.wordnet import load_wordnet

        load_wordnet()  # raises WordNetUnavailableError with the fix before generation, not after hours of it
    root = lrs_data.resolve_root()
    docs = [{"benchmark": BENCHMARK, **doc} for doc in lrs_data.build_docs(root, subset)]
    return Dataset.from_list(docs, features=_features())


def process_docs_fair(dataset: Any):
    """``process_docs`` of ``lrs_vqa_fair``: the placeholder rows are replaced by the FAIR questions."""
    return _subset_docs("FAIR")


def process_docs_bridge(dataset: Any):
    """``process_docs`` of ``lrs_vqa_bridge``: the GLH-Bridge questions."""
    return _subset_docs("GLH-Bridge")


def process_docs_star(dataset: Any):
    """``process_docs`` of ``lrs_vqa_star``: the STAR questions."""
    return _subset_docs("STAR")


def doc_to_visual(doc: Mapping[str, Any]) -> list:
    """Return the document's image as a lazily decoded PIL image (header read only; pixels on first use).

    ``c2f_llava`` reads the file behind this lazy image through its own large-image reader (nothing is decoded to
    learn the size). A missing file, or one Pillow cannot open, gives an empty list (logged): ``c2f_llava`` then reads
    ``doc["image_path"]`` itself, so the image is either read by its own decoders (e.g. a 4-band TIFF) or the failure
    is recorded on the sample; other models answer without the image. The run goes on either way.
    """
    from lrs_plugin.errors import ImageReadError
    from lrs_plugin.imagery.large_image import open_lazy

    try:
        return [open_lazy(doc["image_path"])]
    except ImageReadError as exc:
        from loguru import logger

        logger.warning("lrs_vqa: {} ({}): {}", doc.get("question_id"), doc.get("image"), exc)
        return []


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    """The question text exactly as given (it already ends with the single-word instruction)."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['text']}{kwargs.get('post_prompt', '')}"


@log_failures
def process_results(doc: Mapping[str, Any], results: Sequence[Any]) -> dict[str, Any]:
    """Score one answer: ``oa`` (0 or 100), ``aa`` (the sample record), and the ``cat_*`` metrics of its subset.

    A sample whose model recorded a failure (e.g. unreadable image) is scored wrong and keeps the reason.
    """
    return score_sample(doc, results, lrs_data.SUBSETS)


def score_sample(
    doc: Mapping[str, Any], results: Sequence[Any], subsets: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """:func:`process_results` for any benchmark in the LRS-VQA schema; ``subsets`` names each subset's categories."""
    prediction = first_response(results)
    record = STORE.get(sample_key(doc))
    error = record.error if record else None
    correct = error is None and scoring.lrs_is_correct(prediction, doc["ground_truth"], synonyms=SYNONYMS)
    score = 100.0 if correct else 0.0
    sample = {
        "question_id": doc["question_id"],
        "subset": doc["subset"],
        "category": doc["category"],
        "prediction": prediction,
        "ground_truth": doc["ground_truth"],
        "correct": bool(correct),
        "synonyms": SYNONYMS,
        "error": error,
        **cluster_fields(doc, correct),  # lmms-eval's clustered stderr (tasks/_sample_scores.py)
    }
    out: dict[str, Any] = {"aa": sample, "oa": score, "score": int(correct)}  # score: what --baseline pairs
    for category in subsets[doc["subset"]]:
        out[category_metric(category)] = score if doc["category"] == category else None
    out.update(efficiency_metrics(record))
    out.update(tolerant_metrics(doc, prediction, correct, error, SYNONYMS))
    STORE.pop(sample_key(doc))  # only once the sample is scored: lmms-eval retries a process_results that raised
    return out


def aggregate_aa(items: Sequence[Mapping[str, Any]]) -> float | None:
    """Average accuracy (percent): unweighted mean over categories of the per-category accuracy."""
    if not items:
        return None
    return scoring.average_accuracy(items)
