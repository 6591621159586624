"""Reading finished lmms-eval runs as per-question outcomes, for ``lrs-plugin compare`` and ``lrs-plugin sweep``.

A run is given as an lmms-eval ``--output_path`` folder (the newest ``*_results.json`` below it is read), a
``<stamp>_results.json`` file (its ``<stamp>_samples_<task>.jsonl`` siblings are read: the run needs
``--log_samples``), or one ``*_samples_<task>.jsonl`` file.

Each sample log row becomes a :class:`SampleOutcome`. For this plugin's tasks the per-sample record (the dict-valued
metric with ``question_id``, ``prediction`` and ``correct``: ``aa`` of LRS-VQA / lrs_synth, ``mean_category_acc`` of
MME-RealWorld-RS) gives the question id, correctness, answer, category and image; any other task works when its rows
carry a numeric 0/1 ``score`` (lmms-eval's ``score_key``), keyed by ``doc_id``, clustered by ``doc["image"]`` when
the document has one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrs_plugin._jsonl import iter_json_objects
from lrs_plugin.errors import RunNotFoundError, ScoringInputError

__all__ = ["RunSamples", "SampleOutcome", "load_run", "read_samples_file", "task_of_samples_file"]

_SAMPLES = re.compile(r"^(?P<stamp>.+?)_samples_(?P<task>.+)\.jsonl$")


@dataclass(frozen=True)
class SampleOutcome:
    """One answered question of one run."""

    key: str  # the question id (``doc_id:<n>`` when the row has no per-sample record)
    correct: bool  # scored right by the task's own rule (a recorded failure is wrong)
    prediction: str  # the model's answer
    category: str | None  # the question's category, when the task has them
    cluster: str  # the image the question is about (the question itself when unknown)
    vision_tokens: float | None = None  # ``eff_vision_tokens_to_llm`` of the row, when logged
    tflops: float | None = None  # ``eff_tflops`` of the row, when logged
    failed: bool = False  # the model recorded an error on this sample
    target: str | None = None  # the row's ``target`` (ground truth), to check that two runs asked the same question


@dataclass(frozen=True)
class RunSamples:
    """The outcomes of one run, by task and question key."""

    name: str  # how the run was named on the command line
    source: Path  # the results or samples file that was read
    tasks: dict[str, dict[str, SampleOutcome]] = field(default_factory=dict)
    results: dict[str, Any] | None = None  # the parsed results file (``None`` for a bare samples file)


def task_of_samples_file(path: Path) -> str:
    """``<stamp>_samples_<task>.jsonl`` -> ``task`` (the file stem for any other name)."""
    match = _SAMPLES.match(path.name)
    return match["task"] if match else path.stem


def _record(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for value in row.values():
        if isinstance(value, dict) and {"question_id", "prediction", "correct"} <= value.keys():
            return value
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _outcome(row: Mapping[str, Any], where: str) -> SampleOutcome:
    record = _record(row)
    doc = row.get("doc") if isinstance(row.get("doc"), dict) else {}
    if record is not None:
        correct = record["correct"]
        if not isinstance(correct, bool) and correct not in (0, 1):
            raise ScoringInputError(f"{where}: 'correct' must be a bool or 0/1, got {correct!r}")
        key = str(record["question_id"])
        prediction = str(record["prediction"] or "")
        category = record.get("category")
        cluster = record.get("image") or doc.get("image") or key
        failed = record.get("error") is not None
    else:
        score = _number(row.get("score"))
        if score not in (0.0, 1.0) or "doc_id" not in row:
            raise ScoringInputError(
                f"{where}: no per-sample record (a dict with 'question_id', 'prediction', 'correct') and no 0/1 "
                "'score' with a 'doc_id': is this an lmms-eval samples file of this plugin's tasks?"
            )
        correct = bool(score)
        key = f"doc_id:{row['doc_id']}"
        responses = row.get("filtered_resps") or [""]
        prediction = str(responses[0][0] if isinstance(responses[0], list) and responses[0] else responses[0])
        category = None
        cluster = doc.get("image") or key
        failed = False
    return SampleOutcome(
        key=key,
        correct=bool(correct),
        prediction=prediction,
        category=None if category is None else str(category),
        cluster=str(cluster),
        vision_tokens=_number(row.get("eff_vision_tokens_to_llm")),
        tflops=_number(row.get("eff_tflops")),
        failed=failed,
        target=None if row.get("target") is None else str(row["target"]),
    )


def read_samples_file(path: str | Path) -> dict[str, SampleOutcome]:
    """The outcomes of one ``*_samples_<task>.jsonl`` file, by question key.

    Raises:
        ScoringInputError: An unreadable file, a malformed line, a row without a score, a question answered twice.
    """
    out: dict[str, SampleOutcome] = {}
    for where, _line, row in iter_json_objects(path, error=ScoringInputError, what="samples file"):
        outcome = _outcome(row, where)
        if outcome.key in out:
            raise ScoringInputError(f"{where}: question {outcome.key!r} appears twice in the file")
        out[outcome.key] = outcome
    return out


def _newest_results(folder: Path) -> Path | None:
    found = sorted(folder.rglob("*_results.json"), key=lambda p: (p.name, p.stat().st_mtime))
    return found[-1] if found else None


def load_run(path: str | Path, name: str | None = None) -> RunSamples:
    """Read a run (module doc): a folder, a results file or a samples file.

    Args:
        path: Where the run is.
        name: Its display name (default: ``path`` as given).

    Raises:
        RunNotFoundError: Nothing there, no results file in the folder, or a results file without sample logs.
        ScoringInputError: A malformed results or samples file.
    """
    path = Path(path)
    name = str(path) if name is None else name
    if not path.exists():
        raise RunNotFoundError(f"run {name!r}: {path} does not exist")
    results_path: Path | None
    if path.is_dir():
        results_path = _newest_results(path)
        if results_path is None:
            raise RunNotFoundError(f"run {name!r}: no lmms-eval *_results.json under {path}")
    elif path.name.endswith("_results.json"):
        results_path = path
    else:
        return RunSamples(name=name, source=path, tasks={task_of_samples_file(path): read_samples_file(path)})
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScoringInputError(f"run {name!r}: cannot read results file {results_path}: {exc}") from exc
    stamp = results_path.name[: -len("_results.json")]
    samples = sorted(results_path.parent.glob(f"{stamp}_samples_*.jsonl"))
    if not samples:
        raise RunNotFoundError(
            f"run {name!r}: {results_path} has no sample logs ({stamp}_samples_<task>.jsonl); rerun lmms-eval with "
            "--log_samples"
        )
    tasks = {task_of_samples_file(p): read_samples_file(p) for p in samples}
    return RunSamples(name=name, source=results_path, tasks=tasks, results=results)
