"""Answer scoring of LRS-VQA and MME-RealWorld-RS, shared by the lmms-eval tasks and ``lrs-plugin score``.

**LRS-VQA** (the paper's protocol, ``Script/evaluation_LRSVQA.py``): an answer is correct when
``pred.strip().lower() == gt.lower()`` or, in ``synonyms="wordnet"`` mode, when some WordNet synset of the ground
truth and some synset of the answer have ``path_similarity > 0.8``. Path similarity is ``1 / (1 + distance)``, so
only distance 0 passes: the two strings share a synset (``grey``/``gray``, ``2``/``two``, ``cars``/``car`` through
nltk's lemmatiser; not ``rectangle``/``rectangular``; multi-word answers have no synsets). Nothing else: no
punctuation stripping (``"yes."`` is wrong), an empty answer is wrong. Per subset (``FAIR``, ``GLH-Bridge``,
``STAR``, from the question id): per-category accuracy, OA (pooled) and AA (unweighted mean of the category
accuracies, the number the paper reports); ``mean_aa`` is the mean of the subsets' AA.

**MME-RealWorld** (``evaluation/eval_your_results.py``): the official letter extraction (:func:`mme_extract_choice`)
compared, case-sensitively, with the answer letter; pooled accuracy, per category (``color``, ``count``,
``position``) and the mean of the category accuracies (the paper does not say which of the two it reports).

All percentages are 0-100 at full float precision. Records are mappings (or objects) with at least
``question_id``, ``category`` and ``correct`` (bool, or 0/1). Reading answer files lives in
:mod:`lrs_plugin.scoring.answer_files`.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lrs_plugin.data.lrs_vqa import SUBSETS as LRS_DATA_SUBSETS
from lrs_plugin.data.lrs_vqa import subset_of as question_subset
from lrs_plugin.errors import ConfigError, ScoringInputError
from lrs_plugin.scoring.answer_files import read_answer_records, read_lrs_answers, read_mme_answers

__all__ = [
    "SYNONYM_MODES",
    "MME_EXTRACTION_MODES",
    "LRS_SUBSETS",
    "ScoredAnswer",
    "lrs_is_correct",
    "subset_of",
    "category_accuracies",
    "average_accuracy",
    "overall_accuracy",
    "summarize_lrs",
    "mme_extract_choice",
    "mme_is_correct",
    "summarize_mme",
    "read_answer_records",
    "read_lrs_answers",
    "read_mme_answers",
]

#: LRS-VQA synonym rules: ``wordnet`` (the paper's: exact match or a shared WordNet synset), ``exact`` (no WordNet).
SYNONYM_MODES = ("wordnet", "exact")
#: MME-RealWorld answer extraction: ``official`` (``eval_your_results.py``) or ``strict`` (a standalone letter only).
MME_EXTRACTION_MODES = ("official", "strict")
#: LRS-VQA subsets, in report order (the data module's table); the question id is ``<subset>_<n>``.
LRS_SUBSETS: tuple[str, ...] = tuple(LRS_DATA_SUBSETS)


@dataclass(frozen=True)
class ScoredAnswer:
    """One scored answer, the record the aggregation functions read (plain dicts with these keys work too)."""

    question_id: str  # e.g. "STAR_7" (LRS-VQA) or the MME-RealWorld index
    category: str  # LRS-VQA category, or MME-RealWorld l2-category (color / count / position)
    correct: bool  # whether the answer was scored correct


def _check_mode(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


# LRS-VQA: the answer rule
# ---------------------------------------------------------------------------------------------------------------


def lrs_is_correct(pred: str, gt: str, synonyms: str = "wordnet") -> bool:
    """Whether ``pred`` answers a question whose ground truth is ``gt``, by the official LRS-VQA rule.

    Args:
        pred: Model answer; surrounding whitespace is stripped (as the authors' runners do), nothing else.
        gt: Ground truth (lower-cased for the comparison).
        synonyms: ``"wordnet"`` (the paper's rule) or ``"exact"`` (lower-cased exact match only).

    Returns:
        ``True`` iff ``pred.strip().lower() == gt.lower()``, or (``wordnet``) a synset of ``gt.lower()`` and a
        synset of ``pred.strip().lower()`` have ``path_similarity > 0.8``. An empty answer is never correct.

    Raises:
        ConfigError: ``synonyms`` is not one of :data:`SYNONYM_MODES`.
        WordNetUnavailableError: ``synonyms="wordnet"`` and no WordNet is installed (no silent fallback; also
            raised for answers that match exactly, so a run never depends on which answers it met).
    """
    _check_mode(synonyms, SYNONYM_MODES, "synonyms mode")
    if synonyms == "wordnet":
        from lrs_plugin.scoring.wordnet import load_wordnet

        load_wordnet()
    answer = pred.strip().lower()
    truth = gt.lower()
    if not answer:
        return False
    if answer == truth:
        return True
    return synonyms == "wordnet" and _wordnet_synonyms(truth, answer)


@functools.lru_cache(maxsize=1 << 16)
def _wordnet_synonyms(truth: str, answer: str) -> bool:
    """The official ``are_synonyms``: some synset pair has ``path_similarity > 0.8`` (``None`` = no path)."""
    from lrs_plugin.scoring.wordnet import load_wordnet

    wordnet = load_wordnet()
    answer_synsets = wordnet.synsets(answer)
    return any(
        (truth_synset.path_similarity(answer_synset) or 0.0) > 0.8
        for truth_synset in wordnet.synsets(truth)
        for answer_synset in answer_synsets
    )


# ---------------------------------------------------------------------------------------------------------------
# Aggregation (LRS-VQA and MME-RealWorld)
# ---------------------------------------------------------------------------------------------------------------


def _get(record: Any, field: str) -> Any:
    try:
        return record[field] if isinstance(record, Mapping) else getattr(record, field)
    except (KeyError, AttributeError):
        raise ScoringInputError(f"scored record has no {field!r}: {record!r}") from None


def _is_correct(record: Any) -> bool:
    value = _get(record, "correct")
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    raise ScoringInputError(f"'correct' must be a bool or 0/1, got {value!r} in {record!r}")


def category_accuracies(records: Iterable[Any]) -> dict[str, tuple[int, float]]:
    """Per-category ``(n, accuracy %)``, categories sorted alphabetically."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        tally = counts[str(_get(record, "category"))]
        tally[0] += 1
        tally[1] += _is_correct(record)
    return {category: (n, 100.0 * hits / n) for category, (n, hits) in sorted(counts.items())}


def average_accuracy(records: Iterable[Any]) -> float:
    """AA: the unweighted mean of the per-category accuracies (percent).

    Raises:
        ScoringInputError: There are no records.
    """
    accuracies = [acc for _, acc in category_accuracies(records).values()]
    if not accuracies:
        raise ScoringInputError("no scored answers: average accuracy is undefined")
    return sum(accuracies) / len(accuracies)


def overall_accuracy(records: Iterable[Any]) -> float:
    """OA: the accuracy pooled over all records (percent).

    Raises:
        ScoringInputError: There are no records.
    """
    flags = [_is_correct(record) for record in records]
    if not flags:
        raise ScoringInputError("no scored answers: overall accuracy is undefined")
    return 100.0 * sum(flags) / len(flags)


def subset_of(question_id: str) -> str:
    """The LRS-VQA subset of a question id (:func:`lrs_plugin.data.lrs_vqa.subset_of`), checked against the table.

    ``"GLH-Bridge_12"`` -> ``GLH-Bridge``; the data module owns how an id is read, this adds the scoring error.

    Raises:
        ScoringInputError: The prefix is not one of :data:`LRS_SUBSETS`.
    """
    subset = question_subset(question_id)
    if subset not in LRS_SUBSETS:
        raise ScoringInputError(
            f"question id {question_id!r} names no LRS-VQA subset; expected <subset>_<n> with subset in "
            f"{', '.join(LRS_SUBSETS)}"
        )
    return subset


def _accuracy_block(records: Sequence[Any]) -> dict[str, dict[str, float | int]]:
    return {category: {"n": n, "acc": acc} for category, (n, acc) in category_accuracies(records).items()}


def summarize_lrs(records: Iterable[Any], synonyms: str = "wordnet") -> dict[str, Any]:
    """The LRS-VQA score of ``records``, in the JSON shape of ``lrs-plugin score lrs_vqa --json``.

    Args:
        records: Scored answers (``question_id``, ``category``, ``correct``).
        synonyms: The synonym mode that produced ``correct`` (recorded in the result).

    Returns:
        ``{"task": "lrs_vqa", "synonyms": mode, "subsets": {subset: {"n", "oa", "aa", "categories": {category:
        {"n", "acc"}}}}, "mean_aa": pct}``; subsets in :data:`LRS_SUBSETS` order and only those with records,
        categories sorted, ``mean_aa`` the mean of the present subsets' AA.

    Raises:
        ConfigError: Unknown ``synonyms``.
        ScoringInputError: No records, or a question id without a known subset.
    """
    _check_mode(synonyms, SYNONYM_MODES, "synonyms mode")
    by_subset: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        by_subset[subset_of(_get(record, "question_id"))].append(record)
    if not by_subset:
        raise ScoringInputError("no LRS-VQA answers to score")
    subsets = {
        name: {
            "n": len(by_subset[name]),
            "oa": overall_accuracy(by_subset[name]),
            "aa": average_accuracy(by_subset[name]),
            "categories": _accuracy_block(by_subset[name]),
        }
        for name in LRS_SUBSETS
        if name in by_subset
    }
    mean_aa = sum(block["aa"] for block in subsets.values()) / len(subsets)
    return {"task": "lrs_vqa", "synonyms": synonyms, "subsets": subsets, "mean_aa": mean_aa}


# ---------------------------------------------------------------------------------------------------------------
# MME-RealWorld: answer extraction
# ---------------------------------------------------------------------------------------------------------------

#: The official prefix list. Its last item is one string: the official list lacks a comma between
#: ``"Best answer:"`` and ``"Best option:"``, so Python joins them and neither is removed on its own.
_OFFICIAL_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:Best option:",
)
#: The same phrases as the official list meant them (two separate prefixes), longest first where one extends another.
_STRICT_PREFIXES = _OFFICIAL_PREFIXES[:-1] + ("Best answer:", "Best option:")
_LETTERS = "ABCDE"
_DEFAULT_OPTIONS = tuple(f"({letter})" for letter in _LETTERS)
_STRICT_ANSWER = re.compile(r"\(([A-E])\)\.?(?:\s.*)?|([A-E])[.)]?|([A-E])[.)]\s+\S.*", re.DOTALL)


def _option_letter(index: int, option: str) -> str:
    match = re.match(r"\s*\(([A-E])\)", option)
    return match.group(1) if match else _LETTERS[index]


def _extract_official(text: str, options: Sequence[str]) -> str:
    for prefix in _OFFICIAL_PREFIXES:
        text = text.replace(prefix, "")
    letter = re.search(r"[ABCDE]", text)
    if letter is None and len(text.split()) > 10:
        return ""
    if letter is not None:
        return letter.group(0)
    for index, option in enumerate(options):
        if text.lower() in option.lower():
            return _option_letter(index, option)
    return ""


def _extract_strict(text: str) -> str:
    lowered = text.lower()
    for prefix in _STRICT_PREFIXES:
        if lowered.startswith(prefix.lower()):
            text = text[len(prefix) :].lstrip(" \t\n:")
            break
    match = _STRICT_ANSWER.fullmatch(text)
    return next(group for group in match.groups() if group) if match else ""


def mme_extract_choice(response: str, options: Sequence[str] | None = None, mode: str = "official") -> str:
    """The option letter a response chooses, by the MME-RealWorld rule.

    ``official`` reproduces ``extract_characters_regex`` of ``eval_your_results.py``: strip; delete every
    occurrence of the answer prefixes ("The best answer is", "The correct answer is", "The answer is",
    "The answer", "The best option is", "The correct option is", and the glued "Best answer:Best option:" — the
    official list misses a comma, so "Best answer:" and "Best option:" are *not* removed on their own and
    ``"Best option: D"`` extracts the ``B`` of "Best"); if more than 10 words remain and none of them holds a
    capital A-E, ``""``; else the first capital A-E anywhere (``"Answer: C"`` -> ``A``); else the letter of the
    first option whose text contains the whole response, case-insensitively (``"gray"`` -> the ``(C) Gray``
    option); else ``""``.

    ``strict`` accepts only a standalone capital letter: ``C``, ``C.``, ``C)``, ``(C)``, ``(C).``, ``(C) text``,
    ``C. text``, ``C) text``, optionally after one leading answer prefix (case-insensitive, the official phrases
    with "Best answer:" and "Best option:" separate, then any ``:``); anything else gives ``""``.

    Deviation from the official rule, in both modes: an empty or whitespace-only response gives ``""``. The
    official fallback finds the empty string inside every option and answers ``A``, right ~20 % of the time.

    Args:
        response: The model's answer text.
        options: The option strings, e.g. ``["(A) Yellow", ...]``; the letter comes from a leading ``(X)``, else
            from the position. ``None`` means the bare labels ``(A)``-``(E)`` (lmms-eval's default).
        mode: One of :data:`MME_EXTRACTION_MODES`.

    Returns:
        ``"A"``-``"E"``, or ``""`` when no choice can be read.

    Raises:
        ConfigError: Unknown ``mode``.
    """
    _check_mode(mode, MME_EXTRACTION_MODES, "MME extraction mode")
    text = response.strip()
    if not text:
        return ""
    if mode == "strict":
        return _extract_strict(text)
    return _extract_official(text, _DEFAULT_OPTIONS if options is None else options)


def mme_is_correct(
    response: str, answer_letter: str, options: Sequence[str] | None = None, mode: str = "official"
) -> bool:
    """Whether the letter extracted from ``response`` equals ``answer_letter`` (case-sensitive, as official)."""
    extracted = mme_extract_choice(response, options, mode=mode)
    return bool(extracted) and extracted == answer_letter


def summarize_mme(records: Iterable[Any], extraction: str = "official") -> dict[str, Any]:
    """The MME-RealWorld-RS score, in the JSON shape of ``lrs-plugin score mmerealworld_rs --json``.

    Args:
        records: Scored answers (``category`` = the l2-category, ``correct``).
        extraction: The extraction mode that produced ``correct`` (recorded in the result).

    Returns:
        ``{"task": "mmerealworld_rs", "extraction": mode, "n", "acc", "mean_category_acc", "categories":
        {category: {"n", "acc"}}}``: pooled accuracy, and the unweighted mean over the present categories.

    Raises:
        ConfigError: Unknown ``extraction``.
        ScoringInputError: No records.
    """
    _check_mode(extraction, MME_EXTRACTION_MODES, "MME extraction mode")
    records = list(records)
    return {
        "task": "mmerealworld_rs",
        "extraction": extraction,
        "n": len(records),
        "acc": overall_accuracy(records),
        "mean_category_acc": average_accuracy(records),
        "categories": _accuracy_block(records),
    }


# ---------------------------------------------------------------------------------------------------------------
