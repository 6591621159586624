"""Reading answer files for ``lrs-plugin score``: the original runners' JSONL and lmms-eval samples JSONL.

Each non-blank line is one JSON object; the format is recognised per line, so files may mix them:

* **lmms-eval samples** of this plugin's tasks: the line has ``doc_id`` and a metric whose value is the per-sample
  record the task wrote (a dict with ``question_id`` and ``prediction``; for LRS-VQA also ``category``,
  ``ground_truth``; for MME-RealWorld also ``category`` = l2-category, ``answer``, ``options``; optional ``error``
  when the model recorded a failure).
* **LRS-VQA runners** (``model_rsvqa.py``): ``question_id``, ``text`` (the model answer), ``ground_truth``,
  ``category``.
* **MME-RealWorld official** (``eval_your_results.py`` input, as JSON lines): ``Question_id``, ``Output``,
  ``Ground truth``, ``Answer choices``, ``Category``.

Answers are returned as plain dicts: LRS-VQA ``{question_id, category, prediction, ground_truth, error}``,
MME-RealWorld ``{question_id, category, prediction, answer, options, error}`` (``error`` is ``None`` unless a
samples record carries one). Any malformed line raises :class:`~lrs_plugin.errors.ScoringInputError` naming the
file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lrs_plugin._jsonl import iter_json_objects
from lrs_plugin.errors import ConfigError, ScoringInputError

__all__ = ["read_answer_records", "read_lrs_answers", "read_mme_answers"]

_BENCHMARKS = ("lrs_vqa", "mmerealworld_rs")
#: Every LRS-VQA question text ends with this instruction; a ``text`` that does is a question, not an answer.
_LRS_INSTRUCTION = "Answer the question using a single word or phrase."


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, object)`` per non-blank line; ``location`` is ``"<path>, line <n>"``."""
    for where, _number, obj in iter_json_objects(path, error=ScoringInputError, what="answers file"):
        yield where, obj


def _field(obj: Mapping[str, Any], name: str, where: str, kinds: type | tuple[type, ...] = str) -> Any:
    if name not in obj:
        raise ScoringInputError(f"{where}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ScoringInputError(f"{where}: field {name!r} has the wrong type ({type(value).__name__}: {value!r})")
    return value


def _sample_record(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """The per-sample record of an lmms-eval samples line (the dict-valued metric of our tasks)."""
    for value in obj.values():
        if isinstance(value, dict) and "question_id" in value and "prediction" in value:
            return value
    raise ScoringInputError(
        f"{where}: lmms-eval samples line without a per-sample record (a metric whose value is a dict with "
        "'question_id' and 'prediction'): is this a samples file of lrs_vqa or mmerealworld_rs?"
    )


def _error(record: Mapping[str, Any], where: str) -> str | None:
    error = record.get("error")
    if error is not None and not isinstance(error, str):
        raise ScoringInputError(f"{where}: field 'error' must be a string or null, got {error!r}")
    return error


def _lrs_answer(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    if "doc_id" in obj:
        record, where, answer_field = _sample_record(obj, where), f"{where} (per-sample record)", "prediction"
    else:
        record, answer_field = obj, "text"
    prediction = _field(record, answer_field, where)
    if answer_field == "text" and prediction.rstrip().endswith(_LRS_INSTRUCTION):
        raise ScoringInputError(f"{where}: 'text' is a question (it ends with the answer instruction), not an answer")
    answer = {
        "question_id": _field(record, "question_id", where),
        "category": _field(record, "category", where),
        "prediction": prediction,
        "ground_truth": _field(record, "ground_truth", where),
        "error": _error(record, where),
    }
    if not answer["ground_truth"]:
        raise ScoringInputError(f"{where}: field 'ground_truth' is empty")
    from lrs_plugin.scoring.rules import subset_of

    try:
        subset_of(answer["question_id"])
    except ScoringInputError as exc:
        raise ScoringInputError(f"{where}: {exc}") from None
    return answer


def _options(record: Mapping[str, Any], name: str, where: str) -> list[str]:
    options = _field(record, name, where, list)
    if not all(isinstance(option, str) for option in options):
        raise ScoringInputError(f"{where}: field {name!r} must be a list of strings, got {options!r}")
    return options


def _mme_answer(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    if "doc_id" in obj:
        record, where = _sample_record(obj, where), f"{where} (per-sample record)"
        names = ("question_id", "category", "prediction", "answer", "options")
    elif "Question_id" in obj or "Output" in obj:
        record = obj
        names = ("Question_id", "Category", "Output", "Ground truth", "Answer choices")
    else:
        raise ScoringInputError(
            f"{where}: neither an lmms-eval samples line ('doc_id') nor an MME-RealWorld answer ('Question_id', "
            "'Output', 'Ground truth', 'Answer choices', 'Category')"
        )
    qid_name, category_name, prediction_name, answer_name, options_name = names
    return {
        "question_id": str(_field(record, qid_name, where, (str, int))),
        "category": _field(record, category_name, where).lower(),
        "prediction": _field(record, prediction_name, where),
        "answer": _field(record, answer_name, where),
        "options": _options(record, options_name, where),
        "error": _error(record, where),
    }


def read_lrs_answers(path: str | Path) -> list[dict[str, Any]]:
    """LRS-VQA answers of one file (runners' JSONL or lmms-eval samples), normalised (module docstring).

    Raises:
        ScoringInputError: Unreadable file, invalid JSON, a missing or mistyped field, an empty ground truth, a
            question id without a known subset, or a question text in place of an answer (names file and line).
    """
    path = Path(path)
    return [_lrs_answer(obj, where) for where, obj in _json_lines(path)]


def read_mme_answers(path: str | Path) -> list[dict[str, Any]]:
    """MME-RealWorld answers of one file (official JSON lines or lmms-eval samples), normalised (module docstring).

    Raises:
        ScoringInputError: Unreadable file, invalid JSON, a missing or mistyped field (names file and line).
    """
    path = Path(path)
    return [_mme_answer(obj, where) for where, obj in _json_lines(path)]


def read_answer_records(path: str | Path, benchmark: str = "lrs_vqa") -> list[dict[str, Any]]:
    """:func:`read_lrs_answers` or :func:`read_mme_answers`, by ``benchmark`` (``lrs_vqa`` or ``mmerealworld_rs``).

    Raises:
        ConfigError: Unknown ``benchmark``.
        ScoringInputError: See the two readers.
    """
    if benchmark not in _BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; valid: {', '.join(_BENCHMARKS)}")
    return read_lrs_answers(path) if benchmark == "lrs_vqa" else read_mme_answers(path)
