"""One ``source=measured`` leaderboard row from an lmms-eval results file (and, optionally, its samples files).

The row's ``setting`` and ``config_hash`` come from the model arguments as :mod:`.model_args` reads them (the
harness's one definition of what changes an answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from lrs_plugin.data.lrs_vqa import SUBSETS
from lrs_plugin.data.mme_realworld_rs import EXPECTED_ROWS as MME_ROWS
from lrs_plugin.leaderboard.model_args import (
    answer_args,
    config_hash,
    default_setting,
    model_kwargs,
    written_model_args,
)
from lrs_plugin.leaderboard.schema import (
    ACCURACY_COLUMNS,
    COLUMNS,
    LRS_SUBSET_COLUMNS,
    MME_CATEGORIES,
    LeaderboardError,
    category_column,
    shown,
)

__all__ = ["LRS_TASKS", "LRS_VQA_QUESTIONS", "MME_TASKS", "OUR_TASKS", "build_row"]

LRS_TASKS: dict[str, str] = {"lrs_vqa_fair": "FAIR", "lrs_vqa_bridge": "GLH-Bridge", "lrs_vqa_star": "STAR"}
"""lmms-eval subtask -> LRS-VQA subset."""

MME_TASKS: dict[str, str] = {"mmerealworld_rs": "official", "mmerealworld_rs_strict": "strict"}
"""lmms-eval task -> its answer extraction rule."""

OUR_TASKS = frozenset({*LRS_TASKS, *MME_TASKS, "lrs_vqa"})
"""Every task (and group) of this plugin that a results file may contain."""

LRS_VQA_QUESTIONS = 7333
"""Questions of the full LRS-VQA benchmark (all three subsets)."""

_EFFICIENCY = {
    "vision_tokens_encoded": "eff_vision_tokens_encoded,none",
    "vision_tokens_to_llm": "eff_vision_tokens_to_llm,none",
    "tflops": "eff_tflops,none",
    "latency_s": "eff_latency_s,none",
    "ttft_s": "eff_ttft_s,none",
    "peak_memory_mib": "eff_peak_memory_mib,none",
}
_VERSION = re.compile(r"^\d+(\.\d+)+")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LeaderboardError(f"results file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeaderboardError(f"results file {path} is not readable JSON: {exc}") from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("results"), dict)
        or not isinstance(data.get("config"), dict)
    ):
        raise LeaderboardError(f"{path} is not an lmms-eval results file (no 'results' and 'config' objects)")
    return data


def _model_name(pretrained: str) -> str:
    """A Hub id (``org/name``) is kept; a local path becomes its last component (no user paths in the table)."""
    if pretrained.startswith(("/", ".", "~")) or pretrained.count("/") != 1 or "\\" in pretrained:
        return Path(pretrained.rstrip("/\\")).name or pretrained
    return pretrained


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # lmms-eval writes "N/A" or null for metrics it could not compute
    return float(value)


def _task_sizes(data: Mapping[str, Any], tasks: Sequence[str], path: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for task in tasks:
        counts = (data.get("n-samples") or {}).get(task) or {}
        effective, original = counts.get("effective"), counts.get("original")
        if not isinstance(effective, int) or effective < 1:
            raise LeaderboardError(f"{path}: n-samples of {task} missing or empty; not a complete run")
        if isinstance(original, int) and effective < original:
            raise LeaderboardError(
                f"{path}: {task} answered {effective} of {original} questions (--limit?); only full runs are submitted"
            )
        sizes[task] = effective
    return sizes


def _check_complete(data: Mapping[str, Any], sizes: Mapping[str, int], path: Path) -> None:
    if (data["config"].get("limit")) not in (None, "", 0):
        raise LeaderboardError(f"{path}: run with limit={shown(data['config']['limit'])}; only full runs are submitted")
    for task in MME_TASKS:
        if task in sizes and sizes[task] != MME_ROWS:
            raise LeaderboardError(f"{path}: {task} has {sizes[task]} questions, the benchmark {MME_ROWS}")
    if all(t in sizes for t in LRS_TASKS):
        total = sum(sizes[t] for t in LRS_TASKS)
        if total != LRS_VQA_QUESTIONS:
            raise LeaderboardError(f"{path}: LRS-VQA has {total} questions, the benchmark {LRS_VQA_QUESTIONS}")


def _read_samples(samples: Sequence[str | Path], tasks: Sequence[str], sizes: Mapping[str, int]) -> dict[str, set]:
    """Scoring modes recorded per sample, by task; checks counts and refuses samples that recorded a failure."""
    modes: dict[str, set] = {}
    for item in samples:
        path = Path(item)
        match = re.search(r"_samples_(?P<task>.+)\.jsonl$", path.name)
        if match is None or match["task"] not in tasks:
            raise LeaderboardError(
                f"samples file {shown(path.name)} is not '<date>_samples_<task>.jsonl' of {list(tasks)}"
            )
        task = match["task"]
        found: set = set()
        count = failed = 0
        first_failure = ""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise LeaderboardError(f"samples file {path} is not readable: {exc}") from exc
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LeaderboardError(f"{path}:{n}: not JSON ({exc})") from exc
            detail = record.get("aa") if task in LRS_TASKS else record.get("mean_category_acc")
            if not isinstance(detail, dict):
                raise LeaderboardError(f"{path}:{n}: no per-sample scoring record")
            count += 1
            if detail.get("error") is not None:
                failed += 1
                first_failure = first_failure or f"{shown(detail.get('question_id'))}: {shown(detail['error'], 200)}"
            found.add(detail.get("synonyms") if task in LRS_TASKS else detail.get("extraction"))
        if count != sizes[task]:
            raise LeaderboardError(f"{path}: {count} samples but the results file counts {sizes[task]} for {task}")
        if failed:
            raise LeaderboardError(
                f"{path}: {failed} sample(s) recorded a failure (first: {first_failure}); fix and rerun"
            )
        modes[task] = found
    return modes


def _scoring(data: Mapping[str, Any], tasks: Sequence[str], sample_modes: Mapping[str, set], path: Path) -> str:
    parts: list[str] = []
    lrs = [t for t in tasks if t in LRS_TASKS]
    if lrs:
        modes: set = set()
        for task in lrs:
            if task in sample_modes:
                modes |= sample_modes[task]
            else:
                text = str(((data.get("configs") or {}).get(task) or {}).get("metadata", {}).get("scoring", ""))
                modes.add("wordnet" if "wordnet" in text.casefold() else "exact" if "exact" in text else None)
        if len(modes) != 1 or None in modes:
            raise LeaderboardError(
                f"{path}: cannot tell one LRS-VQA synonym rule ({shown(modes, 200)}); pass the samples files"
            )
        parts.append(modes.pop())
    for task in (t for t in tasks if t in MME_TASKS):
        declared = ((data.get("configs") or {}).get(task) or {}).get("metadata", {}).get("extraction", MME_TASKS[task])
        if task in sample_modes and sample_modes[task] != {declared}:
            raise LeaderboardError(
                f"{path}: {task} samples were scored with {shown(sample_modes[task], 200)}, not {shown(declared)}"
            )
        parts.append(declared)
    return "+".join(parts)


def _weighted(results: Mapping[str, Any], sizes: Mapping[str, int], metric: str) -> float | None:
    total = weight = 0.0
    for task, n in sizes.items():
        value = _number(results[task].get(metric))
        if value is not None:
            total += value * n
            weight += n
    return total / weight if weight else None


def _lmms_eval_version(data: Mapping[str, Any]) -> str:
    recorded = str(data.get("lmms_eval_version") or "")
    if _VERSION.match(recorded):
        return recorded
    # lmms-eval 0.7.3 records "<branch>@<sha>" of the working directory's git checkout, not its own version.
    try:
        return metadata.version("lmms-eval")
    except metadata.PackageNotFoundError:
        return recorded


def _date(data: Mapping[str, Any], path: Path) -> str:
    raw = str(data.get("date") or "")
    try:
        return datetime.strptime(raw[:8], "%Y%m%d").date().isoformat()
    except ValueError as exc:
        raise LeaderboardError(f"{path}: date {shown(raw)} is not lmms-eval's YYYYMMDD_HHMMSS") from exc


def _method_of(reducer: str | None) -> str:
    """The leaderboard method of a reducer: ``anyres`` is the stock model on a tile limit, the paper's ``none`` row."""
    return "none" if reducer in (None, "", "anyres") else str(reducer)


def build_row(
    results_json_path: str | Path,
    *,
    samples: Sequence[str | Path] | None = None,
    model: str | None = None,
    method: str | None = None,
    setting: str | None = None,
    hardware: str | None = None,
    link: str | None = None,
    backbone: str | None = None,
    vision_encoder: str | None = None,
    llm: str | None = None,
    train_data: str | None = None,
) -> dict[str, Any]:
    """A typed ``source=measured`` row from an lmms-eval results file of this plugin's tasks.

    Accuracies are the subtasks' ``aa,none`` (LRS-VQA) and ``acc,none`` (MME-RW-RS, pooled) in percent; efficiency
    columns are the tasks' per-question means, weighted by each task's question count.

    Args:
        results_json_path: ``<output>/<model>/<date>_results.json`` written by ``lmms-eval``.
        samples: its ``<date>_samples_<task>.jsonl`` files; when given, their counts, failures and recorded scoring
            rules are checked against the results file.
        model: default: ``pretrained`` of ``config.model_args`` (a local path becomes its folder name).
        method: default: ``reducer`` of ``config.model_args`` (``none`` when absent).
        setting: default: :func:`default_setting` of the answer-changing ``model_args`` other than pretrained /
            reducer (``anyres-pN`` for ``max_tiles=N``, then ``k=v`` sorted), or ``default``.
        hardware: device the latency was measured on (required when the results carry a latency).
        link: where the results file is published (default: ``results_json_path`` as given).
        backbone: architecture the method is applied to (identity column).
        vision_encoder: vision encoder (identity column).
        llm: language model (identity column).
        train_data: size of the training data (identity column).

    Raises:
        LeaderboardError: not a results file, tasks that are not this plugin's, an incomplete run, samples that
            disagree with the results, or an undeterminable scoring rule.
    """
    path = Path(results_json_path)
    data = _load_json(path)
    results = data["results"]
    foreign = sorted(set(results) - OUR_TASKS)
    tasks = [t for t in (*LRS_TASKS, *MME_TASKS) if t in results]
    if foreign:
        raise LeaderboardError(
            f"{path}: tasks {shown(foreign, 200)} are not lrs-plugin's; "
            f"a leaderboard row takes only {sorted(OUR_TASKS)}"
        )
    if not tasks:
        raise LeaderboardError(
            f"{path}: no results of {sorted(OUR_TASKS - {'lrs_vqa'})} (found {shown(sorted(results, key=str), 200)})"
        )
    if all(t in results for t in MME_TASKS):
        raise LeaderboardError(f"{path}: both {list(MME_TASKS)} present; submit one extraction rule per row")
    sizes = _task_sizes(data, tasks, path)
    _check_complete(data, sizes, path)
    sample_modes = _read_samples(samples or (), tasks, sizes)
    harness_model = str(data["config"].get("model") or "")
    given = written_model_args(data["config"])
    answers = answer_args(harness_model, model_kwargs(data["config"]))
    row: dict[str, Any] = {c.name: "" if c.kind == "text" else None for c in COLUMNS}
    pretrained = str(answers.get("pretrained") or data.get("model_name") or "")
    shown_args = {k: v for k, v in answers.items() if k in given and k not in ("pretrained", "reducer")}
    row.update(
        model=model or _model_name(pretrained),
        backbone=backbone or "",
        vision_encoder=vision_encoder or "",
        llm=llm or "",
        train_data=train_data or "",
        method=method or _method_of(answers.get("reducer")),
        setting=setting or default_setting(shown_args),
    )
    for task in tasks:
        metrics = results[task]
        if task in LRS_TASKS:
            prefix = LRS_SUBSET_COLUMNS[LRS_TASKS[task]]
            row[prefix] = _number(metrics.get("aa,none"))
            for cat in SUBSETS[LRS_TASKS[task]]:
                row[category_column(prefix, cat)] = _number(metrics.get(f"cat_{cat.replace(' ', '_')},none"))
        else:
            row["mme_rw_rs"] = _number(metrics.get("acc,none"))
            for cat in MME_CATEGORIES:
                row[category_column("mme_rw_rs", cat)] = _number(metrics.get(f"cat_{cat},none"))
        main = "aa,none" if task in LRS_TASKS else "acc,none"
        if _number(metrics.get(main)) is None:
            raise LeaderboardError(f"{path}: {task} has no numeric {main!r} result ({shown(metrics.get(main))})")
    values = [row[c] for c in ACCURACY_COLUMNS]
    row["avg_acc"] = sum(values) / 4 if all(v is not None for v in values) else None
    for col, metric in _EFFICIENCY.items():
        row[col] = _weighted(results, sizes, metric)
    measured = [c for c in ("latency_s", "ttft_s", "peak_memory_mib") if row[c] is not None]
    if measured and not hardware:
        raise LeaderboardError(
            f"{path}: the results carry {', '.join(measured)}; name the hardware it ran on (--hardware)"
        )
    row.update(
        hardware=hardware or "",
        source="measured",
        scoring=_scoring(data, tasks, sample_modes, path),
        plugin_version=_plugin_version(),
        lmms_eval_version=_lmms_eval_version(data),
        config_hash=config_hash(harness_model, _model_name(pretrained), answers, data.get("versions") or {}),
        date=_date(data, path),
        results_link=link or str(results_json_path),
        reference=f"lmms-eval results {path.name}, tasks {','.join(tasks)}",
    )
    return row


def _plugin_version() -> str:
    from lrs_plugin import __version__

    return __version__
