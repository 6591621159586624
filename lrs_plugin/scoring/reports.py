"""Text tables of score summaries, and scoring whole answer files (read by :mod:`lrs_plugin.scoring.answer_files`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lrs_plugin.errors import ScoringInputError
from lrs_plugin.scoring.answer_files import read_lrs_answers, read_mme_answers
from lrs_plugin.scoring.rules import (
    MME_EXTRACTION_MODES,
    SYNONYM_MODES,
    _check_mode,
    lrs_is_correct,
    mme_extract_choice,
    summarize_lrs,
    summarize_mme,
)

__all__ = [
    "format_lrs_table",
    "format_mme_table",
    "score_lrs_answers",
    "score_mme_answers",
    "score_lrs_file",
    "score_mme_file",
]


# ---------------------------------------------------------------------------------------------------------------
# Text tables
# ---------------------------------------------------------------------------------------------------------------


def _row(label: str, n: int | str, acc: float) -> str:
    return f"  {label:<24}{n:>6}  {acc:7.2f}"


def format_lrs_table(summary: Mapping[str, Any]) -> str:
    """Per subset: each category's n and accuracy, then OA and AA; finally the mean AA (all in percent)."""
    lines = [f"LRS-VQA (synonyms: {summary['synonyms']}; accuracy in %)"]
    for name, block in summary["subsets"].items():
        lines.append(f"{name:<26}{'n':>6}  {'acc':>7}")
        lines.extend(_row(category, cell["n"], cell["acc"]) for category, cell in block["categories"].items())
        lines.append(_row("OA (pooled)", block["n"], block["oa"]))
        lines.append(_row("AA (mean of categories)", "", block["aa"]))
    lines.append(f"mean AA over {len(summary['subsets'])} subset(s): {summary['mean_aa']:.2f}")
    return "\n".join(lines)


def format_mme_table(summary: Mapping[str, Any]) -> str:
    """Each category's n and accuracy, the pooled accuracy and the mean of the category accuracies (percent)."""
    lines = [f"MME-RealWorld-RS (extraction: {summary['extraction']}; accuracy in %)", f"{'':<26}{'n':>6}  {'acc':>7}"]
    lines.extend(_row(category, cell["n"], cell["acc"]) for category, cell in summary["categories"].items())
    lines.append(_row("pooled", summary["n"], summary["acc"]))
    lines.append(_row("mean of categories", "", summary["mean_category_acc"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Scoring answer files (reading: lrs_plugin.scoring.answer_files)
# ---------------------------------------------------------------------------------------------------------------


def _as_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def score_lrs_answers(answers: Iterable[Mapping[str, Any]], synonyms: str = "wordnet") -> list[dict[str, Any]]:
    """Add ``correct`` to normalised LRS-VQA answers; an answer whose model recorded an ``error`` is wrong."""
    _check_mode(synonyms, SYNONYM_MODES, "synonyms mode")
    scored = []
    for answer in answers:
        correct = answer.get("error") is None and lrs_is_correct(answer["prediction"], answer["ground_truth"], synonyms)
        scored.append({**answer, "correct": correct})
    return scored


def score_mme_answers(answers: Iterable[Mapping[str, Any]], mode: str = "official") -> list[dict[str, Any]]:
    """Add ``extracted`` and ``correct`` to normalised MME answers; an answer with a recorded ``error`` is wrong."""
    _check_mode(mode, MME_EXTRACTION_MODES, "MME extraction mode")
    scored = []
    for answer in answers:
        extracted = mme_extract_choice(answer["prediction"], answer["options"], mode=mode)
        correct = answer.get("error") is None and bool(extracted) and extracted == answer["answer"]
        scored.append({**answer, "extracted": extracted, "correct": correct})
    return scored


def score_lrs_file(paths: str | Path | Iterable[str | Path], synonyms: str = "wordnet") -> dict[str, Any]:
    """Read LRS-VQA answer files (see :func:`read_lrs_answers`), score them and return :func:`summarize_lrs`.

    Raises:
        ScoringInputError: A file is malformed, or a question id occurs twice across the files.
    """
    answers: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for path in _as_paths(paths):
        for answer in read_lrs_answers(path):
            qid = answer["question_id"]
            if qid in seen:
                raise ScoringInputError(f"question {qid!r} is answered twice: in {seen[qid]} and in {path}")
            seen[qid] = path
            answers.append(answer)
    return summarize_lrs(score_lrs_answers(answers, synonyms), synonyms)


def score_mme_file(paths: str | Path | Iterable[str | Path], mode: str = "official") -> dict[str, Any]:
    """Read MME-RealWorld-RS answer files (see :func:`read_mme_answers`), score them, return :func:`summarize_mme`."""
    answers = [answer for path in _as_paths(paths) for answer in read_mme_answers(path)]
    if not answers:
        raise ScoringInputError("no MME-RealWorld answers to score")
    return summarize_mme(score_mme_answers(answers, mode), mode)
