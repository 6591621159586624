"""Scoring rules as tables: the LRS-VQA answer rule, aggregation, MME-RealWorld extraction, answer files, tables."""

from __future__ import annotations

import json
from pathlib import Path

import nltk.data
import pytest

from lrs_plugin import scoring
from lrs_plugin.errors import ConfigError, ScoringInputError, WordNetUnavailableError
from lrs_plugin.scoring import wordnet


def _have_wordnet() -> bool:
    if (wordnet.DEBIAN_WORDNET_DIR / "data.noun").is_file():
        return True
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return False
    return True


needs_wordnet = pytest.mark.skipif(
    not _have_wordnet(), reason="no WordNet here: apt-get install wordnet-base wordnet-sense-index (CI does)"
)

# ---------------------------------------------------------------------------------------------------------------
# LRS-VQA answer rule
# ---------------------------------------------------------------------------------------------------------------

# (prediction, ground truth, correct under "exact", correct under "wordnet")
LRS_RULE = [
    pytest.param("yes", "yes", True, True, id="exact"),
    pytest.param("Gray", "gray", True, True, id="case-of-prediction"),
    pytest.param("gray", "Gray", True, True, id="case-of-ground-truth"),
    pytest.param("  gray\n", "gray", True, True, id="prediction-whitespace-stripped"),
    pytest.param("gray", " gray", False, False, id="ground-truth-not-stripped"),
    pytest.param("yes.", "yes", False, False, id="punctuation-not-stripped"),
    pytest.param("Yes, it is.", "yes", False, False, id="sentence-not-matched"),
    pytest.param("", "yes", False, False, id="empty-prediction"),
    pytest.param("   ", "yes", False, False, id="whitespace-prediction"),
    pytest.param("parking lot", "parking lot", True, True, id="multi-word-exact"),
    # Pairs measured against WordNet 3.0 (Debian wordnet-base and nltk's corpus hold the same database):
    pytest.param("grey", "gray", False, True, id="wordnet-grey-gray"),
    pytest.param("gray", "grey", False, True, id="wordnet-gray-grey"),
    pytest.param("two", "2", False, True, id="wordnet-two-2"),
    pytest.param("2", "two", False, True, id="wordnet-2-two"),
    pytest.param("one", "1", False, True, id="wordnet-one-1"),
    pytest.param("ten", "10", False, True, id="wordnet-ten-10"),
    pytest.param("cars", "car", False, True, id="wordnet-plural-via-lemmatiser"),
    pytest.param("plane", "airplane", False, True, id="wordnet-plane-airplane"),
    pytest.param("round", "circular", False, True, id="wordnet-round-circular"),
    pytest.param("harbour", "harbor", False, True, id="wordnet-harbour-harbor"),
    pytest.param("rectangle", "rectangular", False, False, id="wordnet-rectangle-rectangular-differ"),
    pytest.param("circle", "circular", False, False, id="wordnet-circle-circular-differ"),
    pytest.param("boat", "ship", False, False, id="wordnet-related-not-synonyms"),
    pytest.param("urban", "rural", False, False, id="wordnet-unrelated"),
    pytest.param("no", "yes", False, False, id="wordnet-yes-no"),
    pytest.param("parking_lot", "parking lot", False, False, id="wordnet-multi-word-has-no-synsets"),
    pytest.param("grey.", "gray", False, False, id="wordnet-punctuation-not-stripped"),
]


@pytest.mark.parametrize(("pred", "gt", "exact", "_"), LRS_RULE)
def test_lrs_rule_exact(pred, gt, exact, _):
    assert scoring.lrs_is_correct(pred, gt, synonyms="exact") is exact


@needs_wordnet
@pytest.mark.parametrize(("pred", "gt", "_", "with_wordnet"), LRS_RULE)
def test_lrs_rule_wordnet(pred, gt, _, with_wordnet):
    assert scoring.lrs_is_correct(pred, gt, synonyms="wordnet") is with_wordnet
    assert scoring.lrs_is_correct(pred, gt) is with_wordnet  # the paper's rule is the default


def test_lrs_rule_unknown_mode():
    with pytest.raises(ConfigError, match=r"unknown synonyms mode 'fuzzy'; valid: wordnet, exact"):
        scoring.lrs_is_correct("gray", "gray", synonyms="fuzzy")


def test_lrs_rule_never_falls_back_without_wordnet(monkeypatch):
    def unavailable(**kwargs):
        raise WordNetUnavailableError("no WordNet (test)")

    monkeypatch.setattr(wordnet, "load_wordnet", unavailable)
    with pytest.raises(WordNetUnavailableError):
        scoring.lrs_is_correct("gray", "gray")  # even an exact match: a run never depends on which answers it met
    assert scoring.lrs_is_correct("gray", "gray", synonyms="exact")


# ---------------------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------------------


def _records():
    """FAIR: count 1/3, reasoning 1/1 (OA 50, AA 66.7). STAR: object color 2/2, count 0/2 (OA 50, AA 50)."""
    rows = [
        ("FAIR_1", "count", True),
        ("FAIR_2", "count", False),
        ("FAIR_3", "count", False),
        ("FAIR_4", "reasoning", True),
        ("STAR_1", "object color", True),
        ("STAR_2", "object color", 1),
        ("STAR_3", "count", 0),
        ("STAR_4", "count", False),
    ]
    return [{"question_id": q, "category": c, "correct": ok} for q, c, ok in rows]


def test_category_oa_and_aa_hand_computed():
    fair = _records()[:4]
    assert scoring.category_accuracies(fair) == {"count": (3, 100 / 3), "reasoning": (1, 100.0)}
    assert scoring.overall_accuracy(fair) == 50.0
    assert scoring.average_accuracy(fair) == pytest.approx((100 / 3 + 100) / 2)  # AA != OA
    dataclass_records = [scoring.ScoredAnswer(r["question_id"], r["category"], bool(r["correct"])) for r in fair]
    assert scoring.average_accuracy(dataclass_records) == scoring.average_accuracy(fair)


def test_categories_sorted_alphabetically():
    records = [{"category": c, "correct": True} for c in ("rural or urban", "count", "object shape")]
    assert list(scoring.category_accuracies(records)) == ["count", "object shape", "rural or urban"]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        pytest.param([], "undefined", id="empty"),
        pytest.param([{"category": "count", "correct": "yes"}], "bool or 0/1", id="correct-not-boolean"),
        pytest.param([{"category": "count", "correct": 2}], "bool or 0/1", id="correct-out-of-range"),
        pytest.param([{"category": "count"}], "no 'correct'", id="correct-missing"),
    ],
)
def test_aggregation_bad_records(records, message):
    with pytest.raises(ScoringInputError, match=message):
        scoring.average_accuracy(records)


def test_summarize_lrs_exact_shape():
    summary = scoring.summarize_lrs(_records(), synonyms="exact")
    fair_aa = (100.0 * 1 / 3 + 100.0) / 2
    expected = {
        "task": "lrs_vqa",
        "synonyms": "exact",
        "subsets": {
            "FAIR": {
                "n": 4,
                "oa": 50.0,
                "aa": fair_aa,
                "categories": {"count": {"n": 3, "acc": 100.0 * 1 / 3}, "reasoning": {"n": 1, "acc": 100.0}},
            },
            "STAR": {
                "n": 4,
                "oa": 50.0,
                "aa": 50.0,
                "categories": {"count": {"n": 2, "acc": 0.0}, "object color": {"n": 2, "acc": 100.0}},
            },
        },
        "mean_aa": (fair_aa + 50.0) / 2,
    }
    assert json.loads(json.dumps(summary)) == expected
    assert list(summary) == ["task", "synonyms", "subsets", "mean_aa"]
    assert list(summary["subsets"]) == ["FAIR", "STAR"]  # only subsets with records, in report order
    assert list(summary["subsets"]["FAIR"]) == ["n", "oa", "aa", "categories"]


def test_summarize_lrs_subset_order_and_errors():
    records = [{"question_id": q, "category": "count", "correct": True} for q in ("STAR_1", "GLH-Bridge_1", "FAIR_9")]
    assert list(scoring.summarize_lrs(records)["subsets"]) == ["FAIR", "GLH-Bridge", "STAR"]
    with pytest.raises(ScoringInputError, match="no LRS-VQA answers"):
        scoring.summarize_lrs([])
    with pytest.raises(ConfigError, match="valid: wordnet, exact"):
        scoring.summarize_lrs(records, synonyms="both")


@pytest.mark.parametrize(
    ("qid", "subset"),
    [("FAIR_1", "FAIR"), ("GLH-Bridge_1062", "GLH-Bridge"), ("STAR_3999", "STAR"), ("STAR_x_y", "STAR")],
)
def test_subset_of(qid, subset):
    assert scoring.subset_of(qid) == subset


@pytest.mark.parametrize("qid", ["fair_1", "GLH_Bridge_3", "DOTA_5", "", "7"])
def test_subset_of_unknown(qid):
    with pytest.raises(ScoringInputError, match=rf"question id '{qid}'.*FAIR, GLH-Bridge, STAR"):
        scoring.subset_of(qid)


# ---------------------------------------------------------------------------------------------------------------
# MME-RealWorld extraction
# ---------------------------------------------------------------------------------------------------------------

# A colour question with the letters of the one measured in research/datasets.md §6.3 (Gray = C, White = D).
OPTIONS = ["(A) Yellow", "(B) Brown", "(C) Gray", "(D) White", "(E) The image does not feature the color."]
LONG_NO_LETTER = "the roof of the building in the picture looks like it is made of metal sheets"

# (response, official, strict)
MME_TABLE = [
    pytest.param("C", "C", "C", id="letter"),
    pytest.param("(C) Gray", "C", "C", id="parenthesised-with-text"),
    pytest.param("The best answer is: C", "C", "C", id="prefix"),
    pytest.param("c", "C", "", id="lower-case-text-fallback"),
    pytest.param("Answer: C", "A", "", id="capital-A-of-Answer"),
    pytest.param("Based on the image, the roof is gray (C).", "B", "", id="capital-B-of-Based"),
    pytest.param("", "", "", id="empty-deviation-official-gives-A"),
    pytest.param("  \n", "", "", id="whitespace-deviation"),
    pytest.param("gray", "C", "", id="text-fallback-gray"),
    pytest.param("white", "D", "", id="text-fallback-white"),
    pytest.param("Best option: D", "B", "D", id="missing-comma-quirk"),
    pytest.param("Best answer: D", "B", "D", id="missing-comma-quirk-answer"),
    pytest.param(LONG_NO_LETTER, "", "", id="long-without-letter"),
    pytest.param("purple", "", "", id="no-option-text"),
    pytest.param("(D)", "D", "D", id="parenthesised"),
    pytest.param("(D).", "D", "D", id="parenthesised-dot"),
    pytest.param("(D)White", "D", "", id="parenthesised-glued-text"),
    pytest.param("D\nbecause it is white", "D", "", id="letter-then-explanation"),
    pytest.param("D.", "D", "D", id="letter-dot"),
    pytest.param("D)", "D", "D", id="letter-paren"),
    pytest.param("D. White", "D", "D", id="letter-dot-text"),
    pytest.param("The answer is (E)", "E", "E", id="prefix-parenthesised"),
    pytest.param("the answer is D", "D", "D", id="prefix-case-insensitive-in-strict"),
    pytest.param("A dog", "A", "", id="article-A"),
    pytest.param("C or D", "C", "", id="two-letters"),
    pytest.param("F", "E", "", id="F-found-in-option-E-text-feature"),
]


@pytest.mark.parametrize(("response", "official", "strict"), MME_TABLE)
def test_mme_extraction(response, official, strict):
    assert scoring.mme_extract_choice(response, OPTIONS) == official
    assert scoring.mme_extract_choice(response, OPTIONS, mode="official") == official
    assert scoring.mme_extract_choice(response, OPTIONS, mode="strict") == strict


@pytest.mark.parametrize(
    ("response", "options", "letter"),
    [
        pytest.param("c", None, "C", id="default-labels-match-lower-case"),
        pytest.param("gray", None, "", id="default-labels-no-text"),
        pytest.param("gray", ["Yellow", "Brown", "Gray"], "C", id="positional-letters"),
    ],
)
def test_mme_extraction_options(response, options, letter):
    assert scoring.mme_extract_choice(response, options) == letter


def test_mme_is_correct_and_unknown_mode():
    assert scoring.mme_is_correct("The best answer is C", "C", OPTIONS)
    assert not scoring.mme_is_correct("The best answer is C", "c", OPTIONS)  # case-sensitive, as official
    assert not scoring.mme_is_correct("", "A", OPTIONS)  # the official rule would count this right
    assert not scoring.mme_is_correct("Answer: C", "C", OPTIONS, mode="strict")
    with pytest.raises(ConfigError, match=r"unknown MME extraction mode 'lenient'; valid: official, strict"):
        scoring.mme_extract_choice("C", OPTIONS, mode="lenient")


def test_summarize_mme_exact_shape():
    rows = [("color", True), ("color", False), ("color", False), ("count", True), ("position", 0), ("position", 0)]
    summary = scoring.summarize_mme([{"category": c, "correct": ok} for c, ok in rows], extraction="strict")
    assert json.loads(json.dumps(summary)) == {
        "task": "mmerealworld_rs",
        "extraction": "strict",
        "n": 6,
        "acc": 100.0 * 2 / 6,
        "mean_category_acc": (100.0 * 1 / 3 + 100.0 + 0.0) / 3,
        "categories": {
            "color": {"n": 3, "acc": 100.0 * 1 / 3},
            "count": {"n": 1, "acc": 100.0},
            "position": {"n": 2, "acc": 0.0},
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# Answer files
# ---------------------------------------------------------------------------------------------------------------


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _runner(qid="STAR_1", text="Gray", gt="gray", category="object color"):
    return {
        "question_id": qid,
        "image": "LRS_VQA/image/0001.png",
        "category": category,
        "text": text,
        "ground_truth": gt,
    }


def _lrs_sample(qid="FAIR_1", prediction="2", gt="two", category="count", error=None, metric="aa"):
    record = {
        "question_id": qid,
        "subset": qid.split("_")[0],
        "category": category,
        "prediction": prediction,
        "ground_truth": gt,
        "correct": False,
        "synonyms": "wordnet",
        "error": error,
    }
    return {
        "doc_id": 0,
        "doc": {"question_id": qid, "category": category, "ground_truth": gt, "text": "How many?"},  # not the record
        "target": gt,
        "filtered_resps": [prediction],
        "resps": [[prediction]],
        metric: record,
        "oa": 0.0,
        "cat_count": 0.0,
    }


def _mme_sample(qid="17", prediction="C", answer="C", category="color", error=None, metric="mean_category_acc"):
    record = {
        "question_id": qid,
        "category": category,
        "prediction": prediction,
        "extracted": "C",
        "answer": answer,
        "options": OPTIONS,
        "correct": True,
        "extraction": "official",
        "error": error,
    }
    doc = {"question_id": qid, "category": category, "answer": answer, "options": OPTIONS}  # not the record
    return {"doc_id": 3, "doc": doc, "target": answer, "filtered_resps": prediction, metric: record, "acc": 100.0}


def _mme_official(qid="perception/remote_sensing/color/0001", output="gray", gt="C", category="Color"):
    return {
        "Question_id": qid,
        "Question Type": "Multiple Choice",
        "Text": "q",
        "Answer choices": OPTIONS,
        "Ground truth": gt,
        "Subtask": "Remote Sensing",
        "Category": category,
        "Output": output,
    }


def _lrs_answer(question_id, category, prediction, ground_truth, error=None):
    return {
        "question_id": question_id,
        "category": category,
        "prediction": prediction,
        "ground_truth": ground_truth,
        "error": error,
    }


def test_read_lrs_answers_both_formats(tmp_path):
    rows = [
        _runner(),
        "",
        _lrs_sample(),
        _lrs_sample("GLH-Bridge_4", "x", "yes", "rural or urban", metric="lrs_sample"),
    ]
    answers = scoring.read_lrs_answers(_write(tmp_path / "a.jsonl", rows))
    assert answers == [
        _lrs_answer("STAR_1", "object color", "Gray", "gray"),
        _lrs_answer("FAIR_1", "count", "2", "two"),
        _lrs_answer("GLH-Bridge_4", "rural or urban", "x", "yes"),
    ]
    assert scoring.read_answer_records(tmp_path / "a.jsonl") == answers


def test_read_mme_answers_both_formats(tmp_path):
    answers = scoring.read_mme_answers(_write(tmp_path / "m.jsonl", [_mme_sample(), _mme_official()]))
    assert answers == [
        {"question_id": "17", "category": "color", "prediction": "C", "answer": "C", "options": OPTIONS, "error": None},
        {
            "question_id": "perception/remote_sensing/color/0001",
            "category": "color",
            "prediction": "gray",
            "answer": "C",
            "options": OPTIONS,
            "error": None,
        },
    ]
    assert scoring.read_answer_records(tmp_path / "m.jsonl", "mmerealworld_rs") == answers
    with pytest.raises(ConfigError, match="unknown benchmark 'vqa'; valid: lrs_vqa, mmerealworld_rs"):
        scoring.read_answer_records(tmp_path / "m.jsonl", "vqa")


def _without(row, field):
    return {k: v for k, v in row.items() if k != field}


def _record_without(row, field, metric="aa"):
    return {**row, metric: _without(row[metric], field)}


LRS_MALFORMED = [
    pytest.param('{"question_id": "FAIR_1", "text": ', r"line 2: malformed JSON", id="invalid-json"),
    pytest.param("[1, 2]", r"line 2: expected a JSON object, got list", id="not-an-object"),
    pytest.param(_without(_runner(), "text"), r"line 2: missing field 'text'", id="runner-no-text"),
    pytest.param(_without(_runner(), "category"), r"line 2: missing field 'category'", id="runner-no-category"),
    pytest.param(_without(_runner(), "ground_truth"), r"line 2: missing field 'ground_truth'", id="runner-no-gt"),
    pytest.param(_without(_runner(), "question_id"), r"line 2: missing field 'question_id'", id="runner-no-qid"),
    pytest.param(_runner(text=None), r"line 2: field 'text' has the wrong type \(NoneType", id="runner-text-null"),
    pytest.param(_runner(gt=""), r"line 2: field 'ground_truth' is empty", id="runner-empty-gt"),
    pytest.param(_runner(qid="DOTA_3"), r"line 2: question id 'DOTA_3' names no LRS-VQA subset", id="bad-subset"),
    pytest.param(
        _runner(text="What color is it?\n Answer the question using a single word or phrase."),
        r"line 2: 'text' is a question",
        id="question-file-not-answers",
    ),
    pytest.param(
        _record_without(_lrs_sample(), "prediction"), r"line 2: lmms-eval samples line without", id="sample-no-record"
    ),
    pytest.param(
        _record_without(_lrs_sample(), "ground_truth"),
        r"line 2 \(per-sample record\): missing field 'ground_truth'",
        id="sample-no-gt",
    ),
    pytest.param(_lrs_sample(error=5), r"line 2 \(per-sample record\): field 'error'", id="sample-bad-error"),
]


@pytest.mark.parametrize(("bad_line", "message"), LRS_MALFORMED)
def test_read_lrs_answers_malformed(tmp_path, bad_line, message):
    path = _write(tmp_path / "bad.jsonl", [_runner(), bad_line, _runner("STAR_2")])
    with pytest.raises(ScoringInputError, match=message) as info:
        scoring.read_lrs_answers(path)
    assert str(path) in str(info.value)


MME_MALFORMED = [
    pytest.param("{", r"line 2: malformed JSON", id="invalid-json"),
    pytest.param({"foo": 1}, r"line 2: neither an lmms-eval samples line", id="unknown-format"),
    pytest.param(_without(_mme_official(), "Output"), r"line 2: missing field 'Output'", id="official-no-output"),
    pytest.param(
        _without(_mme_official(), "Answer choices"), r"line 2: missing field 'Answer choices'", id="official-no-choices"
    ),
    pytest.param(
        {**_mme_official(), "Answer choices": "(A) x"},
        r"line 2: field 'Answer choices' has the wrong type",
        id="official-choices-not-list",
    ),
    pytest.param(
        _record_without(_mme_sample(), "options", "mean_category_acc"),
        r"line 2 \(per-sample record\): missing field 'options'",
        id="sample-no-options",
    ),
    pytest.param(
        {**_mme_sample(), "mean_category_acc": {**_mme_sample()["mean_category_acc"], "options": [1, 2]}},
        r"line 2 \(per-sample record\): field 'options' must be a list of strings",
        id="sample-options-not-strings",
    ),
]


@pytest.mark.parametrize(("bad_line", "message"), MME_MALFORMED)
def test_read_mme_answers_malformed(tmp_path, bad_line, message):
    path = _write(tmp_path / "bad.jsonl", [_mme_sample(), bad_line])
    with pytest.raises(ScoringInputError, match=message):
        scoring.read_mme_answers(path)


def test_read_missing_file(tmp_path):
    with pytest.raises(ScoringInputError, match="cannot read answers file"):
        scoring.read_lrs_answers(tmp_path / "nope.jsonl")


def test_score_lrs_file_hand_computed(tmp_path):
    first = _write(
        tmp_path / "fair.jsonl",
        [
            _lrs_sample("FAIR_1", "two", "two"),  # right
            _lrs_sample("FAIR_2", "three", "two"),  # wrong
            _lrs_sample("FAIR_3", "two", "two", error="ImageReadError: truncated"),  # recorded failure: wrong
            _lrs_sample("FAIR_4", "Urban ", "urban", "rural or urban"),  # right (case, whitespace)
        ],
    )
    second = _write(tmp_path / "star.jsonl", [_runner("STAR_1", "yes.", "yes", "reasoning")])  # wrong: punctuation
    summary = scoring.score_lrs_file([first, second], synonyms="exact")
    assert summary["subsets"]["FAIR"] == {
        "n": 4,
        "oa": 50.0,
        "aa": (100.0 * 1 / 3 + 100.0) / 2,
        "categories": {"count": {"n": 3, "acc": 100.0 * 1 / 3}, "rural or urban": {"n": 1, "acc": 100.0}},
    }
    assert summary["subsets"]["STAR"]["aa"] == 0.0
    assert summary["mean_aa"] == pytest.approx((100 / 3 + 100) / 4)
    assert scoring.score_lrs_file(first, synonyms="exact")["subsets"]["FAIR"]["oa"] == 50.0  # one path works too
    with pytest.raises(ScoringInputError, match=r"question 'FAIR_1' is answered twice"):
        scoring.score_lrs_file([first, first], synonyms="exact")


@needs_wordnet
def test_score_lrs_file_wordnet(tmp_path):
    path = _write(tmp_path / "a.jsonl", [_runner("STAR_1", "grey", "gray"), _runner("STAR_2", "2", "two", "count")])
    assert scoring.score_lrs_file(path)["mean_aa"] == 100.0
    assert scoring.score_lrs_file(path, synonyms="exact")["mean_aa"] == 0.0


def test_score_mme_file_both_modes(tmp_path):
    rows = [
        _mme_sample("1", "C", "C", "color"),
        _mme_sample("2", "Answer: D", "D", "count"),  # official extracts the A of "Answer"
        _mme_sample("3", "B", "B", "position", error="ImageReadError: broken"),
        _mme_official("4", "gray", "C", "Color"),  # text fallback, official only
    ]
    path = _write(tmp_path / "m.jsonl", rows)
    official = scoring.score_mme_file([path])
    assert official["categories"] == {
        "color": {"n": 2, "acc": 100.0},
        "count": {"n": 1, "acc": 0.0},
        "position": {"n": 1, "acc": 0.0},
    }
    assert official["acc"] == 50.0 and official["mean_category_acc"] == pytest.approx(100 / 3)
    strict = scoring.score_mme_file(path, mode="strict")
    assert strict["extraction"] == "strict" and strict["acc"] == 25.0
    with pytest.raises(ScoringInputError, match="no MME-RealWorld answers"):
        scoring.score_mme_file([_write(tmp_path / "empty.jsonl", [])])


# ---------------------------------------------------------------------------------------------------------------
# Text tables
# ---------------------------------------------------------------------------------------------------------------


def test_format_lrs_table():
    text = scoring.format_lrs_table(scoring.summarize_lrs(_records(), synonyms="exact"))
    assert text.splitlines() == [
        "LRS-VQA (synonyms: exact; accuracy in %)",
        "FAIR                           n      acc",
        "  count                        3    33.33",
        "  reasoning                    1   100.00",
        "  OA (pooled)                  4    50.00",
        "  AA (mean of categories)           66.67",
        "STAR                           n      acc",
        "  count                        2     0.00",
        "  object color                 2   100.00",
        "  OA (pooled)                  4    50.00",
        "  AA (mean of categories)           50.00",
        "mean AA over 2 subset(s): 58.33",
    ]


def test_format_mme_table():
    records = [{"category": c, "correct": ok} for c, ok in [("color", True), ("count", False), ("count", True)]]
    assert scoring.format_mme_table(scoring.summarize_mme(records)).splitlines() == [
        "MME-RealWorld-RS (extraction: official; accuracy in %)",
        "                               n      acc",
        "  color                        1   100.00",
        "  count                        2    50.00",
        "  pooled                       3    66.67",
        "  mean of categories                75.00",
    ]
