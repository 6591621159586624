"""``lrs-plugin sweep``: one task, several reducers x budgets, each point a real ``lmms-eval`` run; a CSV and pictures.

Each budget ``B`` is "vision tokens sent to the LLM" (docs/fairness.md) and reaches a reducer through its own knob
(:data:`BUDGET_KNOBS`, documented per reducer in docs/fairness.md); a reducer without one is refused with a
:class:`~lrs_plugin.errors.ConfigError` naming the valid ones. Every point runs ``lmms-eval --model c2f_llava`` (the
plain command, :func:`lrs_plugin.harness.run.run_lmms_eval`) into ``OUT/<reducer>-<B>/lmms_eval`` with
``resume_dir=OUT/<reducer>-<B>/answers``: a killed sweep run again skips the finished points (their results file
holds the same ``--model_args`` and ``--limit``) and the unfinished one serves the answers it had saved.

``OUT/sweep.csv`` has one row per point (:data:`CSV_COLUMNS`); ``OUT/sweep_tokens.png`` and ``OUT/sweep_tflops.png``
draw the task's accuracy against vision tokens and against TFLOPs per question, a line per reducer, the Pareto front
marked, error bars of one image-clustered standard error (part 1 of issue 14: the same formula lmms-eval reports as
``*_stderr_clustered``, over the pooled per-question scores).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrs_plugin.errors import ConfigError

__all__ = [
    "BUDGET_KNOBS",
    "CSV_COLUMNS",
    "HEADLINE_METRICS",
    "NO_BUDGET_KNOB",
    "BudgetKnob",
    "SweepConfig",
    "budget_options",
    "draw_sweep",
    "read_point",
    "run_sweep",
    "write_csv",
]


@dataclass(frozen=True)
class BudgetKnob:
    """How a budget of ``B`` vision tokens reaches one reducer."""

    options: Callable[[int], dict[str, Any]]  # B -> the reducer's --model_args options
    measured: bool  # True: the x axis is the measured eff_vision_tokens_to_llm; False: B itself (layer-averaged)
    meaning: str  # one line for the docs and the CSV


def _visionzip(budget: int) -> dict[str, Any]:
    dominant = max(1, round(budget * 54 / 64))  # the official 54 + 10 split, scaled
    return {"dominant": dominant, "contextual": budget - dominant}


#: The reducers ``sweep`` can drive (docs/fairness.md, "Budget sweeps").
BUDGET_KNOBS: dict[str, BudgetKnob] = {
    "c2f": BudgetKnob(lambda b: {"token_budget": b}, True, "token_budget=B: cap on thumbnail + kept tokens"),
    "random": BudgetKnob(lambda b: {"budget": b}, True, "budget=B: tokens drawn, newlines included"),
    "visionzip": BudgetKnob(_visionzip, True, "dominant+contextual=B per tile (54:10): B x tiles on LLaVA-NeXT"),
    "fastv": BudgetKnob(lambda b: {"budget": b}, False, "budget=B: layer-averaged vision tokens"),
    "pdrop": BudgetKnob(lambda b: {"budget": b}, False, "budget=B: layer-averaged vision tokens"),
}

#: Registered reducers ``sweep`` refuses, and why (docs/fairness.md, "Budget sweeps").
NO_BUDGET_KNOB: dict[str, str] = {
    "none": "it sends every vision token: the unpruned reference, run it once beside the sweep",
    "anyres": "its knob is max_tiles, a tile count, not vision tokens",
    "downsample": "its knob is max_pixels, not vision tokens",
    "prumerge": "its knob is reduction_ratio, a fraction per tile (adaptive mode picks its own count)",
    "blind": "it sends no vision token at all: the language-prior floor, run it once beside the sweep",
}

#: The accuracy each of this plugin's tasks is plotted by (the paper's number); other tasks need ``metric=``.
HEADLINE_METRICS = {
    "lrs_vqa": "aa",
    "lrs_vqa_fair": "aa",
    "lrs_vqa_bridge": "aa",
    "lrs_vqa_star": "aa",
    "lrs_synth": "aa",
    "mmerealworld_rs": "acc",
    "mmerealworld_rs_strict": "acc",
}

CSV_COLUMNS = (
    "task",
    "reducer",
    "budget",
    "knob",
    "metric",
    "accuracy",
    "accuracy_se",
    "n",
    "failed",
    "vision_tokens",
    "vision_tokens_basis",
    "tflops",
    "results",
)
"""``accuracy`` (percent) is the task's ``metric``; ``accuracy_se`` one image-clustered standard error of the pooled
per-question score, in points; ``vision_tokens`` the mean measured ``eff_vision_tokens_to_llm`` (``basis`` =
``measured``) or the budget for the in-LLM reducers (``layer-averaged budget``); ``tflops`` the mean ``eff_tflops``;
``failed`` the samples that recorded an error (scored wrong); ``results`` the lmms-eval results file."""


def budget_options(reducer: str, budget: int) -> dict[str, Any]:
    """The ``--model_args`` options that give ``reducer`` a budget of ``budget`` vision tokens.

    Raises:
        ConfigError: ``reducer`` has no budget knob (names the valid ones), or ``budget`` is not an int >= 1.
    """
    if reducer not in BUDGET_KNOBS:
        why = f" ({NO_BUDGET_KNOB[reducer]})" if reducer in NO_BUDGET_KNOB else ""
        raise ConfigError(
            f"reducer {reducer!r} has no budget knob for sweep{why}; valid: {', '.join(sorted(BUDGET_KNOBS))} "
            "(docs/fairness.md, 'Budget sweeps')"
        )
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"sweep budget {budget!r} is invalid; valid: an int >= 1 (vision tokens)")
    return BUDGET_KNOBS[reducer].options(budget)


def _fragment(options: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items())


@dataclass(frozen=True)
class SweepConfig:
    """One sweep: a task, reducers x budgets, and what every point shares."""

    task: str  # one lmms-eval task or group
    pretrained: str  # checkpoint of every point
    reducers: tuple[str, ...]  # each must have a budget knob (BUDGET_KNOBS)
    budgets: tuple[int, ...]  # vision tokens sent to the LLM, each >= 1
    model_args: str = ""  # more --model_args shared by every point (e.g. "device=cuda,dtype=bfloat16")
    reducer_options: Mapping[str, str] = field(default_factory=dict)  # more --model_args of one reducer
    limit: int | None = None  # --limit of every run (None: every question)
    metric: str | None = None  # accuracy to plot; None: HEADLINE_METRICS[task]

    def __post_init__(self) -> None:
        if not self.reducers or not self.budgets:
            raise ConfigError(f"sweep needs reducers and budgets; got {self.reducers!r} and {self.budgets!r}")
        for reducer in self.reducers:
            budget_options(reducer, 1)
        for budget in self.budgets:
            budget_options(self.reducers[0], budget)
        if unknown := sorted(set(self.reducer_options) - set(self.reducers)):
            raise ConfigError(f"reducer options for {unknown}, not swept; swept: {', '.join(self.reducers)}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ConfigError(f"sweep limit {self.limit!r} is invalid; valid: None or an int >= 1")
        if self.metric is None and self.task not in HEADLINE_METRICS:
            raise ConfigError(
                f"no default accuracy metric for task {self.task!r}; pass metric= (defaults exist for "
                f"{', '.join(sorted(HEADLINE_METRICS))})"
            )

    @property
    def accuracy_metric(self) -> str:
        """The metric plotted."""
        return self.metric or HEADLINE_METRICS[self.task]

    def point_model_args(self, reducer: str, budget: int, resume_dir: Path) -> str:
        """The full ``--model_args`` of one point."""
        parts = [f"pretrained={self.pretrained}", f"reducer={reducer}", _fragment(budget_options(reducer, budget))]
        parts += [self.reducer_options.get(reducer, ""), self.model_args, f"resume_dir={resume_dir}"]
        return ",".join(p for p in parts if p)


def _finished(folder: Path, model_args: str, limit: int | None, task: str):
    """The run already in ``folder`` with these arguments (``None`` when there is none)."""
    from lrs_plugin.errors import LrsPluginError
    from lrs_plugin.scoring.runs import load_run

    for path in sorted(folder.rglob("*_results.json"), reverse=True):
        try:
            config = json.loads(path.read_text(encoding="utf-8")).get("config", {})
        except (OSError, ValueError):
            continue
        if config.get("model_args") == model_args and config.get("limit") == limit:
            try:
                run = load_run(path)
            except LrsPluginError:
                continue
            if task in (run.results or {}).get("results", {}):
                return run
    return None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def read_point(run: Any, config: SweepConfig, reducer: str, budget: int) -> dict[str, Any]:
    """One CSV row (:data:`CSV_COLUMNS`) from a finished run (:class:`lrs_plugin.scoring.runs.RunSamples`)."""
    from lrs_plugin.scoring.compare import clustered_se

    results = (run.results or {}).get("results", {}).get(config.task, {})
    outcomes = [o for task in sorted(run.tasks) for o in run.tasks[task].values()]
    se = clustered_se([float(o.correct) for o in outcomes], [o.cluster for o in outcomes])
    knob = BUDGET_KNOBS[reducer]
    return {
        "task": config.task,
        "reducer": reducer,
        "budget": budget,
        "knob": _fragment(budget_options(reducer, budget)),
        "metric": config.accuracy_metric,
        "accuracy": results.get(f"{config.accuracy_metric},none"),
        "accuracy_se": None if se is None else 100.0 * se,
        "n": len(outcomes),
        "failed": sum(o.failed for o in outcomes),
        "vision_tokens": _mean([o.vision_tokens for o in outcomes]) if knob.measured else float(budget),
        "vision_tokens_basis": "measured" if knob.measured else "layer-averaged budget",
        "tflops": _mean([o.tflops for o in outcomes]),
        "results": str(run.source),
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` with :data:`CSV_COLUMNS`, floats as ``%.6g``, empty for missing values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([_cell(row.get(c)) for c in CSV_COLUMNS] for row in rows)
    return path


def draw_sweep(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """``sweep_tokens.png`` and ``sweep_tflops.png`` in ``out_dir`` (module doc)."""
    from lrs_plugin._tradeoff_plot import draw_curves

    out_dir = Path(out_dir)
    task = rows[0]["task"] if rows else "?"
    metric = rows[0]["metric"] if rows else "accuracy"
    paths = []
    for cost, name, what, label in (
        ("vision_tokens", "sweep_tokens.png", "vision tokens", "vision tokens sent to the LLM (mean; in-LLM: budget)"),
        ("tflops", "sweep_tflops.png", "TFLOPs", "TFLOPs per question (mean)"),
    ):
        series: dict[str, list] = {}
        for row in rows:
            if row.get("accuracy") is not None:
                point = (row.get(cost), row["accuracy"], row.get("accuracy_se"), f"B={row['budget']}")
                series.setdefault(row["reducer"], []).append(point)
        title = f"{task}: {metric} (%) vs {what}; bars: ±1 image-clustered SE; red rings: Pareto front"
        paths.append(draw_curves(series, out_dir / name, title=title, x_label=label))
    return paths[0], paths[1]


@dataclass(frozen=True)
class SweepReport:
    """What :func:`run_sweep` wrote."""

    rows: list[dict[str, Any]]
    csv: Path
    plots: tuple[Path, Path]
    reused: int  # points whose finished run was reused


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    runner: Callable[..., Any] | None = None,
    log: Callable[[str], None] = print,
    timeout: float | None = None,
) -> SweepReport:
    """Run every point that is not finished yet, then write the CSV and the pictures (module doc).

    Args:
        config: The sweep.
        out: Output folder.
        env: Environment of the lmms-eval runs (default: this process's).
        runner: :func:`lrs_plugin.harness.run.run_lmms_eval` or a stand-in with its keywords (tests).
        log: Progress lines.
        timeout: Seconds per lmms-eval run.

    Raises:
        EvaluationFailedError: A point's run wrote no results file (a rerun resumes from its saved answers).
    """
    from lrs_plugin.scoring.runs import load_run

    if runner is None:
        from lrs_plugin.harness.run import run_lmms_eval as runner
    out = Path(out)
    rows, reused = [], 0
    for reducer in config.reducers:
        for budget in config.budgets:
            folder = out / f"{reducer}-{budget}"
            answers, output = (folder / "answers").resolve(), folder / "lmms_eval"
            model_args = config.point_model_args(reducer, budget, answers)
            run = _finished(output, model_args, config.limit, config.task) if output.exists() else None
            if run is not None:
                reused += 1
                log(f"sweep: {reducer} B={budget}: finished earlier ({run.source})")
            else:
                log(f"sweep: {reducer} B={budget}: lmms-eval --model_args {model_args}")
                done = runner(
                    model="c2f_llava",
                    model_args=model_args,
                    tasks=[config.task],
                    output_path=output,
                    use_task_hook=True,
                    extra_args=["--limit", str(config.limit)] if config.limit else [],
                    env=dict(os.environ) if env is None else env,
                    timeout=timeout,
                )
                run = load_run(done.results_path)
            rows.append(read_point(run, config, reducer, budget))
    csv_path = write_csv(rows, out / "sweep.csv")
    return SweepReport(rows=rows, csv=csv_path, plots=draw_sweep(rows, out), reused=reused)
