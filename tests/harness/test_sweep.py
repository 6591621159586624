"""``lrs-plugin sweep`` without lmms-eval: budget knobs, refusals, resuming finished points, the CSV and pictures."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.sweep import (
    BUDGET_KNOBS,
    CSV_COLUMNS,
    NO_BUDGET_KNOB,
    SweepConfig,
    budget_options,
    run_sweep,
)
from lrs_plugin.reducers.registry import available_reducers


def test_each_knob_maps_a_budget_to_the_reducers_own_options():
    assert budget_options("c2f", 144) == {"token_budget": 144}
    assert budget_options("random", 64) == {"budget": 64}
    assert budget_options("visionzip", 64) == {"dominant": 54, "contextual": 10}  # the official split
    assert budget_options("visionzip", 1) == {"dominant": 1, "contextual": 0}
    assert sum(budget_options("visionzip", 576).values()) == 576
    assert budget_options("fastv", 256) == {"budget": 256} and budget_options("pdrop", 576) == {"budget": 576}
    assert set(BUDGET_KNOBS) <= set(available_reducers())


@pytest.mark.parametrize("reducer", sorted(set(available_reducers()) - set(BUDGET_KNOBS)))
def test_a_reducer_without_a_budget_knob_is_refused_naming_the_valid_ones(reducer):
    why = re.escape(NO_BUDGET_KNOB[reducer])  # every registered reducer without a knob says why
    with pytest.raises(ConfigError, match=rf"'{reducer}' has no budget knob for sweep \({why}\); valid: c2f, fastv"):
        SweepConfig(task="lrs_synth", pretrained="ckpt", reducers=("c2f", reducer), budgets=(64,))


def test_blind_is_refused_as_the_language_prior_floor():
    with pytest.raises(ConfigError, match=r"'blind' has no budget knob for sweep \(it sends no vision token at all"):
        budget_options("blind", 64)


def test_bad_sweep_settings_name_the_value():
    ok = {"task": "lrs_synth", "pretrained": "ckpt", "reducers": ("c2f",), "budgets": (64,)}
    with pytest.raises(ConfigError, match="budget 0 is invalid"):
        SweepConfig(**{**ok, "budgets": (64, 0)})
    with pytest.raises(ConfigError, match="needs reducers and budgets"):
        SweepConfig(**{**ok, "reducers": ()})
    with pytest.raises(ConfigError, match=r"reducer options for \['fastv'\], not swept"):
        SweepConfig(**ok, reducer_options={"fastv": "k=3"})
    with pytest.raises(ConfigError, match="no default accuracy metric for task 'mmbench'"):
        SweepConfig(**{**ok, "task": "mmbench"})
    assert SweepConfig(**{**ok, "task": "mmbench"}, metric="acc").accuracy_metric == "acc"


class FakeLmmsEval:
    """Writes what lmms-eval would (results + samples) and counts calls; accuracy and tokens grow with the budget."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, *, model, model_args, tasks, output_path, use_task_hook, extra_args, env, timeout):
        assert model == "c2f_llava" and use_task_hook and tasks == ["lrs_synth"]
        self.calls.append(model_args)
        args = dict(a.split("=", 1) for a in model_args.split(","))
        budget = int(args.get("token_budget") or args.get("budget"))
        right = [i < budget // 16 for i in range(8)]
        folder = Path(output_path) / "ckpt"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = f"2026010{len(self.calls)}_000000"
        results = {
            "results": {"lrs_synth": {"aa,none": 100.0 * sum(right) / 8}},
            "config": {"model_args": model_args, "limit": None},
        }
        (folder / f"{stamp}_results.json").write_text(json.dumps(results))
        rows = []
        for i, ok in enumerate(right):
            record = {"question_id": f"SYNTH_{i}", "category": "count", "prediction": "p", "correct": ok,
                      "error": None, "image": f"img{i // 4}.png"}  # fmt: skip
            rows.append({"doc_id": i, "aa": record, "score": int(ok), "eff_vision_tokens_to_llm": budget - 1.0,
                         "eff_tflops": budget / 1000})  # fmt: skip
        (folder / f"{stamp}_samples_lrs_synth.jsonl").write_text("\n".join(map(json.dumps, rows)))
        return SimpleNamespace(results_path=folder / f"{stamp}_results.json")


def test_sweep_writes_every_point_resumes_finished_ones_and_draws_both_pictures(tmp_path):
    config = SweepConfig(
        task="lrs_synth",
        pretrained="ckpt",
        reducers=("c2f", "fastv"),
        budgets=(32, 64),
        reducer_options={"c2f": "focus=rfm"},
    )
    fake = FakeLmmsEval()
    report = run_sweep(config, tmp_path, runner=fake, log=lambda m: None)
    assert len(fake.calls) == 4 and report.reused == 0
    answers = (tmp_path / "c2f-32" / "answers").resolve()
    assert fake.calls[0] == f"pretrained=ckpt,reducer=c2f,token_budget=32,focus=rfm,resume_dir={answers}"
    with open(report.csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["reducer"], r["budget"]) for r in rows] == [
        ("c2f", "32"),
        ("c2f", "64"),
        ("fastv", "32"),
        ("fastv", "64"),
    ]
    c2f_64 = rows[1]
    assert c2f_64["accuracy"] == "50" and c2f_64["n"] == "8" and c2f_64["metric"] == "aa"
    assert c2f_64["vision_tokens"] == "63" and c2f_64["vision_tokens_basis"] == "measured"
    assert c2f_64["tflops"] == "0.064" and c2f_64["knob"] == "token_budget=64"
    assert float(c2f_64["accuracy_se"]) > 0
    assert rows[3]["vision_tokens"] == "64" and rows[3]["vision_tokens_basis"] == "layer-averaged budget"
    for png in report.plots:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size == (960, 640)
    # A rerun (e.g. after a kill) reuses every finished point; a changed setting reruns only what it changes.
    again = run_sweep(config, tmp_path, runner=fake, log=lambda m: None)
    assert len(fake.calls) == 4 and again.reused == 4 and again.rows == report.rows
    more = SweepConfig(task="lrs_synth", pretrained="ckpt", reducers=("c2f", "fastv"), budgets=(32, 64, 128),
                       reducer_options={"c2f": "focus=rfm"})  # fmt: skip
    run_sweep(more, tmp_path, runner=fake, log=lambda m: None)
    assert len(fake.calls) == 6
