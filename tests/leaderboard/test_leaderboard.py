"""leaderboard.csv: rows from lmms-eval results files, validation, locked atomic submission, rendering."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lrs_plugin.data.lrs_vqa import SUBSETS
from lrs_plugin.errors import LrsPluginError
from lrs_plugin.leaderboard import results as results_mod
from lrs_plugin.leaderboard import submit as lb
from lrs_plugin.leaderboard.paper import normalize_name, paper_rows_from_reference
from lrs_plugin.leaderboard.render import MARKER_END, MARKER_START, pareto_front
from lrs_plugin.leaderboard.schema import COLUMN_NAMES, parse_row, row_key, sort_rows

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = REPO_ROOT.parent / "shared" / "reference"

# Small benchmark sizes for generated results files (the real ones are 7,333 and 3,738 questions).
SIZES = {"lrs_vqa_fair": 4, "lrs_vqa_bridge": 3, "lrs_vqa_star": 5, "mmerealworld_rs": 6}
LRS_TASK_SUBSET = {"lrs_vqa_fair": "FAIR", "lrs_vqa_bridge": "GLH-Bridge", "lrs_vqa_star": "STAR"}


@pytest.fixture(autouse=True)
def _small_benchmark(monkeypatch):
    monkeypatch.setattr(results_mod, "LRS_VQA_QUESTIONS", sum(v for k, v in SIZES.items() if k.startswith("lrs")))
    monkeypatch.setattr(results_mod, "MME_ROWS", SIZES["mmerealworld_rs"])


def _cat_metrics(values: list[float], names: tuple[str, ...]) -> dict[str, float]:
    return {f"cat_{n.replace(' ', '_')},none": v for n, v in zip(names, values, strict=True)}


def write_results(
    folder: Path,
    *,
    model_args: str = "pretrained=/ckpts/llava-next-qwen2-7b,reducer=c2f,keep_ratio=0.25",
    model: str = "c2f_llava",
    device: str | None = None,
    tasks: tuple[str, ...] = tuple(SIZES),
    base: float = 20.0,
    limit: int | None = None,
    extra_results: dict | None = None,
    sizes: dict[str, int] | None = None,
    samples: bool = True,
    sample_error: str | None = None,
) -> Path:
    """A results file with lmms-eval 0.7.3's layout (and samples files), for this plugin's tasks."""
    sizes = {**SIZES, **(sizes or {})}
    folder.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for i, task in enumerate(tasks):
        eff = {
            "eff_vision_tokens_encoded,none": 1000.0 + i,
            "eff_vision_tokens_to_llm,none": 250.0,
            "eff_tflops,none": 2.0,
            "eff_latency_s,none": 0.5,
            "eff_ttft_s,none": 0.25,
            "eff_peak_memory_mib,none": 900.0 + 100 * i,
            "eff_tflops_stderr,none": "N/A",
        }
        if task in LRS_TASK_SUBSET:
            cats = SUBSETS[LRS_TASK_SUBSET[task]]
            values = [base + 2 * k for k in range(len(cats))]
            results[task] = {"alias": task, "aa,none": sum(values) / len(values), "oa,none": base, **eff}
            results[task].update(_cat_metrics(values, cats))
        else:
            values = [base, base + 3, base + 6]
            results[task] = {"alias": task, "acc,none": base + 2.5, "mean_category_acc,none": base + 3, **eff}
            results[task].update(_cat_metrics(values, ("color", "count", "position")))
    if any(t in LRS_TASK_SUBSET for t in tasks):
        results["lrs_vqa"] = {"aa,none": base, "oa,none": base, "alias": "LRS-VQA"}
    results.update(extra_results or {})
    data = {
        "results": results,
        "versions": {t: 1.0 for t in results},
        "n-samples": {t: {"original": sizes[t], "effective": sizes[t]} for t in tasks},
        "configs": {
            **{t: {"metadata": {"version": 1.0, "scoring": "exact match or WordNet path_similarity"}} for t in tasks},
            "mmerealworld_rs": {"metadata": {"version": 1.0, "extraction": "official"}},
        },
        "config": {"model": model, "model_args": model_args, "batch_size": 1, "device": device, "limit": limit},
        "lmms_eval_version": "main@d72f451",
        "date": "20260102_030405",
    }
    path = folder / "20260102_030405_results.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    if samples:
        for task in tasks:
            lines = []
            for n in range(sizes[task]):
                error = sample_error if n == 0 else None
                if task in LRS_TASK_SUBSET:
                    record = {"aa": {"question_id": f"Q{n}", "synonyms": "wordnet", "error": error}}
                else:
                    record = {"mean_category_acc": {"question_id": f"M{n}", "extraction": "official", "error": error}}
                lines.append(json.dumps({"doc_id": n, **record}))
            (folder / f"20260102_030405_samples_{task}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def samples_of(results: Path) -> list[Path]:
    return sorted(results.parent.glob("*_samples_*.jsonl"))


def test_round_trip_results_file_to_csv_and_back(tmp_path):
    results = write_results(tmp_path / "run")
    csv_path = tmp_path / "leaderboard.csv"
    lb.submit(results, csv_path, samples=samples_of(results), hardware="1x H200", link="https://x.org/r.json")
    assert lb.validate_file(csv_path) == []
    (row,) = lb.read_rows(csv_path)
    assert (row["model"], row["method"], row["setting"]) == ("llava-next-qwen2-7b", "c2f", "keep_ratio=0.25")
    assert row["lrs_fair"] == pytest.approx(25.0) and row["lrs_bridge"] == pytest.approx(23.0)
    assert row["lrs_star"] == pytest.approx(26.0) and row["mme_rw_rs"] == pytest.approx(22.5)
    assert row["avg_acc"] == pytest.approx(round((25 + 23 + 26 + 22.5) / 4, 2))
    assert row["lrs_fair.object_category"] == 22.0 and row["lrs_star.rural_or_urban"] == 32.0
    assert row["mme_rw_rs.position"] == 26.0
    assert row["vision_tokens_to_llm"] == 250.0 and row["tflops"] == 2.0 and row["hardware"] == "1x H200"
    assert row["ttft_s"] == 0.25  # measured columns: per-question means weighted by the tasks' sizes
    assert row["peak_memory_mib"] == pytest.approx((4 * 900 + 3 * 1000 + 5 * 1100 + 6 * 1200) / 18, rel=1e-5)
    assert (row["source"], row["scoring"], row["date"]) == ("measured", "wordnet+official", "2026-01-02")
    assert row["lmms_eval_version"][0].isdigit()  # not lmms-eval's "<branch>@<sha>" of the working directory
    assert len(row["config_hash"]) == 64 and row["results_link"] == "https://x.org/r.json"
    text = csv_path.read_text()
    assert text.splitlines()[0] == ",".join(COLUMN_NAMES)
    assert ",25.00,23.00,26.00," in text  # one float format for accuracies


def test_config_hash_ignores_path_and_resume_but_not_device_or_reducer_options(tmp_path):
    def hash_of(args: str, name: str, device: str | None = None) -> str:
        results = write_results(tmp_path / name, model_args=args, device=device, samples=False)
        return lb.build_row(results, hardware="h")["config_hash"]

    a = hash_of("pretrained=/a/ckpt,reducer=c2f,keep_ratio=0.25,device=cuda:0", "a")
    b = hash_of(
        "keep_ratio=0.25,image_cache=4,reducer=c2f,resume_dir=/tmp/store,pretrained=/elsewhere/ckpt", "b", "cuda:0"
    )
    c = hash_of("pretrained=/a/ckpt,keep_ratio=0.25,device=cuda:0,tile_batch_size=16,focus=auto", "c")  # defaults
    assert a == b == c  # --device on the command line reaches the model as device=
    assert hash_of("pretrained=/a/ckpt,reducer=c2f,keep_ratio=0.5,device=cuda:0", "d") != a
    assert hash_of("pretrained=/a/ckpt,reducer=c2f,keep_ratio=0.25,device=cpu", "e") != a
    assert hash_of("pretrained=/a/ckpt,reducer=c2f,keep_ratio=0.25", "f") != a


def test_rows_of_other_lmms_eval_models_keep_their_model_method_and_setting(tmp_path):
    args = "pretrained=llava-hf/llava-v1.6-mistral-7b-hf,attn_implementation=sdpa,resume_dir=/x,max_pixels=1e6"
    results = write_results(tmp_path / "hf", model="llava_hf", model_args=args, device="cuda", samples=False)
    row = lb.build_row(results, hardware="h")
    assert (row["model"], row["method"]) == ("llava-hf/llava-v1.6-mistral-7b-hf", "none")
    assert row["setting"] == "attn_implementation=sdpa,max_pixels=1000000.0"  # typed as lmms-eval types it
    other = write_results(tmp_path / "hf2", model="llava_hf", model_args=args, device="cpu", samples=False)
    assert lb.build_row(other, hardware="h")["config_hash"] != row["config_hash"]


def test_cli_submit_validate_render_through_a_subprocess(tmp_path):
    results = write_results(tmp_path / "run", samples=False)
    csv_path = tmp_path / "lb.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    code = (
        "import sys; from lrs_plugin.leaderboard import results as m; m.LRS_VQA_QUESTIONS = 12; m.MME_ROWS = 6; "
        "from lrs_plugin.leaderboard.submit import main; sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", code, "leaderboard"]
    args = ["submit", str(results), "--csv", str(csv_path), "--hardware", "cpu", "--method", "c2f-test"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    again = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 2 and "already has a row" in again.stderr and "--replace" in again.stderr
    ok = subprocess.run([*cmd, "validate", str(csv_path)], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and "valid" in ok.stdout


# ---------------------------------------------------------------- build_row refusals


@pytest.mark.parametrize(
    ("kwargs", "build", "message"),
    [
        ({"extra_results": {"mme": {"acc,none": 1.0}}}, {}, "tasks ['mme'] are not lrs-plugin's"),
        ({"tasks": ()}, {}, "no results of ['lrs_vqa_bridge'"),
        ({"extra_results": {"lrs_vqa_star": {"aa,none": "N/A"}}}, {}, "lrs_vqa_star has no numeric 'aa,none'"),
        ({"limit": 5}, {}, "limit=5"),
        ({"sizes": {"mmerealworld_rs": 5}}, {}, "mmerealworld_rs has 5 questions, the benchmark 6"),
        ({}, {"hardware": None}, "name the hardware"),
        ({"sample_error": "ImageReadError: truncated"}, {"samples": True}, "1 sample(s) recorded a failure"),
    ],
)
def test_build_row_refuses(tmp_path, kwargs, build, message):
    results = write_results(tmp_path / "run", **kwargs)
    options = {"hardware": "cpu", **build}
    if options.pop("samples", False):
        options["samples"] = samples_of(results)
    with pytest.raises(lb.LeaderboardError, match=re.escape(message)) as info:
        lb.build_row(results, **options)
    assert isinstance(info.value, LrsPluginError)


def test_build_row_refuses_samples_that_do_not_match(tmp_path):
    results = write_results(tmp_path / "run")
    star = results.parent / "20260102_030405_samples_lrs_vqa_star.jsonl"
    star.write_text(star.read_text().splitlines()[0] + "\n")
    with pytest.raises(lb.LeaderboardError, match="1 samples but the results file counts 5"):
        lb.build_row(results, samples=samples_of(results), hardware="cpu")
    with pytest.raises(lb.LeaderboardError, match="is not '<date>_samples_<task>.jsonl'"):
        lb.build_row(results, samples=[results], hardware="cpu")


def test_build_row_refuses_non_results_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(lb.LeaderboardError, match="not readable JSON"):
        lb.build_row(bad)
    bad.write_text(json.dumps({"results": {}}))
    with pytest.raises(lb.LeaderboardError, match="not an lmms-eval results file"):
        lb.build_row(bad)
    with pytest.raises(lb.LeaderboardError, match="does not exist"):
        lb.build_row(tmp_path / "missing.json")


def test_partial_benchmark_row_has_no_avg_acc(tmp_path):
    results = write_results(tmp_path / "run", tasks=("lrs_vqa_fair",), samples=False)
    row = lb.build_row(results, hardware="cpu")
    assert row["lrs_fair"] == 25.0 and row["avg_acc"] is None and row["scoring"] == "wordnet"
    assert lb.validate_rows([row]) == []


# ---------------------------------------------------------------- validate_rows rejections


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@"])
def test_formula_cells_are_refused(prefix, measured_row):
    errors = lb.validate_rows([measured_row(model=f'{prefix}HYPERLINK("x")')])
    assert any("model=" in e and "formula" in e and repr(prefix) in e for e in errors), errors


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lrs_fair": 101.0}, "lrs_fair=101.0 is outside 0-100"),
        ({"lrs_star": -1.0}, "lrs_star=-1.0 is outside 0-100"),
        ({"tflops": -2.0}, "tflops=-2.0 is negative"),
        ({"mme_rw_rs": "abc"}, "mme_rw_rs='abc' is not a number"),
        ({"mme_rw_rs": "=1+1"}, "mme_rw_rs='=1+1' is not a number"),
        ({"tflops": float("nan")}, "not a finite number"),
        ({"source": "guess"}, "source='guess' is not one of ['paper', 'measured']"),
        ({"config_hash": ""}, "config_hash is required for source=measured rows"),
        ({"results_link": ""}, "results_link is required for source=measured rows"),
        ({"config_hash": "xyz"}, "is not a sha256 hex digest"),
        ({"date": "02/01/2026"}, "is not YYYY-MM-DD"),
        ({"scoring": "fuzzy"}, "scoring='fuzzy' is not one of"),
        ({"scoring": "paper"}, "scoring=paper is only for source=paper rows"),
        ({"avg_acc": 50.0}, "avg_acc=50.0 but the mean"),
        ({"lrs_bridge": None}, "avg_acc is set but not all of"),
        ({"latency_s": 0.5}, "latency_s / fps / ttft_s / peak_memory_mib need the hardware"),
        ({"ttft_s": 0.2}, "need the hardware they were measured on"),
        ({"peak_memory_mib": 900.0}, "need the hardware they were measured on"),
        ({"peak_memory_mib": -1.0, "hardware": "cpu"}, "peak_memory_mib=-1.0 is negative"),
        ({"lrs_fair.count": 90.0, **{f"lrs_fair.{c.replace(' ', '_')}": 90.0 for c in SUBSETS["FAIR"]}}, "mean of its"),
        ({"unknown_subset.count": 3.0}, "unknown column(s) ['unknown_subset.count']"),
        ({"model": 3}, "model=3 must be text"),
    ],
)
def test_validate_rows_rejections(changes, message, measured_row):
    errors = lb.validate_rows([measured_row(**changes)])
    assert any(message in e for e in errors), errors


def test_a_file_without_the_optional_measured_columns_is_read_and_rewritten_with_them(tmp_path, measured_row):
    from lrs_plugin.leaderboard.schema import OPTIONAL_COLUMNS

    old_header = [c for c in COLUMN_NAMES if c not in OPTIONAL_COLUMNS]
    csv_path = tmp_path / "leaderboard.csv"
    row = measured_row(latency_s=0.5, hardware="cpu")
    lines = [",".join(old_header), ",".join(lb.format_cell(c, row[c]) for c in old_header)]
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert lb.validate_file(csv_path) == []
    (read,) = lb.read_rows(csv_path)
    assert read["ttft_s"] is None and read["peak_memory_mib"] is None and read["latency_s"] == 0.5
    lb.submit(write_results(tmp_path / "run"), csv_path, hardware="cpu", link="https://x.org/r.json")
    assert csv_path.read_text().splitlines()[0] == ",".join(COLUMN_NAMES)
    moved = [c for c in COLUMN_NAMES if c != "ttft_s"] + ["ttft_s"]  # optional, but never out of order
    csv_path.write_text(",".join(moved) + "\n", encoding="utf-8")
    assert any("header is not the schema's columns in order" in e for e in lb.validate_file(csv_path))


def test_missing_column_and_duplicate_key_are_refused(measured_row):
    row = measured_row()
    del row["tflops"]
    assert any("missing column(s) ['tflops']" in e for e in lb.validate_rows([row]))
    errors = lb.validate_rows([measured_row(), measured_row(avg=20.0)])
    assert any("duplicate key model='m'" in e and "same as row 1" in e for e in errors), errors
    assert lb.validate_rows([measured_row(), measured_row(setting="p25")]) == []


def test_validate_file_reports_header_and_row_problems(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    path.write_text("model,method\nx,y\n")
    (error,) = lb.validate_file(path)
    assert "header is not the schema's columns" in error and "missing" in error
    lb.submit(measured_row(), path := tmp_path / "ok.csv")
    text = path.read_text().replace("https://example.org/results.json", "@SUM(A1)")
    path.write_text(text)
    assert any("results_link='@SUM(A1)'" in e for e in lb.validate_file(path))
    assert lb.main(["leaderboard", "validate", str(path)]) == 1
    assert lb.validate_file(tmp_path / "nope.csv") == [f"leaderboard file {tmp_path / 'nope.csv'} does not exist"]


# ---------------------------------------------------------------- submit


def test_submit_refuses_duplicates_unless_replace(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(avg=30.0), path)
    with pytest.raises(lb.LeaderboardError, match="already has a row with key model='m'.*replace=True"):
        lb.submit(measured_row(avg=40.0), path)
    assert lb.read_rows(path)[0]["avg_acc"] == 30.0
    lb.submit(measured_row(avg=40.0), path, replace=True)
    assert [r["avg_acc"] for r in lb.read_rows(path)] == [40.0]


def test_submit_refuses_paper_rows_and_invalid_rows(tmp_path, measured_row):
    paper = lb.paper_rows()[0]
    with pytest.raises(lb.LeaderboardError, match="source=measured rows only"):
        lb.submit(paper, tmp_path / "lb.csv")
    with pytest.raises(lb.LeaderboardError, match="outside 0-100"):
        lb.submit(measured_row(lrs_fair=140.0), tmp_path / "lb.csv")
    assert not (tmp_path / "lb.csv").exists()


def _submit_many(csv_path: str, rows: list[dict]) -> None:
    for row in rows:
        lb.submit(row, csv_path)


def test_two_processes_submitting_at_once_keep_every_row(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.seed(path)
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    rows = {p: [measured_row(model=f"{p}{i}", avg=10.0 + i) for i in range(6)] for p in ("alpha", "beta")}
    procs = [ctx.Process(target=_submit_many, args=(str(path), rows[p])) for p in ("alpha", "beta")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert lb.validate_file(path) == []
    models = {r["model"] for r in lb.read_rows(path) if r["source"] == "measured"}
    assert models == {f"{p}{i}" for p in ("alpha", "beta") for i in range(6)}
    assert not list(tmp_path.glob(".lb.csv.*.tmp"))


def test_crash_during_write_leaves_previous_file_intact(tmp_path, monkeypatch, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(model="first"), path)
    before = path.read_bytes()

    def crash(src, dst):
        assert Path(src).read_text().count("\n") == 3  # the new content was fully written to the temp file
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        lb.submit(measured_row(model="second"), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert lb.validate_file(path) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ---------------------------------------------------------------- sort, paper rows, seed


def test_sort_is_deterministic_with_tie_breakers(measured_row):
    rows = [
        measured_row(model="b", avg=30.0),
        measured_row(model="a", avg=30.0, setting="z"),
        measured_row(model="a", avg=30.0, setting="y"),
        measured_row(model="A", avg=30.0, setting="y"),
        measured_row(model="c", avg=40.0),
        measured_row(model="d", avg=None, mme_rw_rs=None),
        measured_row(model="0", avg=None, mme_rw_rs=None),
    ]
    expected = [("c", ""), ("A", "y"), ("a", "y"), ("a", "z"), ("b", ""), ("0", ""), ("d", "")]
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        got = [(r["model"], r["setting"] if r["model"] in "Aa" else "") for r in sort_rows(shuffled)]
        assert got == expected


def test_paper_rows_match_the_reference_tables():
    rows = lb.paper_rows()
    assert rows and all(r["source"] == "paper" and r["scoring"] == "paper" for r in rows)
    assert len({row_key(r) for r in rows}) == len(rows)
    if REFERENCE.is_dir():
        assert rows == paper_rows_from_reference(REFERENCE)
    by = {(r["model"], r["method"], r["setting"]): r for r in rows}
    llava = by[("LLaVA-1.5", "none", "max 336x336")]
    assert llava["lrs_fair.count"] == 10.5 and llava["lrs_bridge.object_color"] == 38.79  # "LLaVA1.5" matched
    assert by[("LLaVA-1.5*", "none", "max 336x336")]["lrs_fair.count"] is None  # the re-trained model is not
    p25 = by[("LLaVA-Next*", "none", "anyres-p25")]  # Table 2 "LLaVA-Next-p25*" + efficiency "anyres-p25"
    assert (p25["mme_rw_rs"], p25["mme_rw_rs.color"], p25["fps"], p25["hardware"]) == (39.65, 41.56, 0.188, "A100")
    assert by[("LLaVA-Next*", "prumerge", "anyres-p144")]["tflops"] == 43.75
    assert by[("LLaVA-Next*", "c2f", "dynamic")]["avg_acc"] == 32.16
    assert normalize_name("SLiME") == normalize_name("SliME") and normalize_name("LLaVA-1.5*") != "llava15"
    # The published numbers are kept; only one Table 2 average differs from the mean of its four columns.
    off = [
        r["model"]
        for r in rows
        if r["avg_acc"] is not None
        and abs(r["avg_acc"] - sum(r[c] for c in ("mme_rw_rs", "lrs_fair", "lrs_bridge", "lrs_star")) / 4) > 0.015
    ]
    assert off == ["LLaVA-1.5*"]


def test_repository_leaderboard_is_valid_and_holds_the_paper_rows():
    path = REPO_ROOT / "leaderboard.csv"
    assert lb.validate_file(path) == []
    rows = lb.read_rows(path)
    assert [r for r in rows if r["source"] == "paper"] == lb.paper_rows()


def test_seed_keeps_measured_rows(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(model="mine"), path)
    count = lb.seed(path)
    rows = lb.read_rows(path)
    assert count == len(rows) == len(lb.paper_rows()) + 1
    assert [r["model"] for r in rows if r["source"] == "measured"] == ["mine"]
    assert lb.seed(path) == count


# ---------------------------------------------------------------- render


def test_render_writes_between_markers_and_a_png(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.seed(path)
    lb.submit(measured_row(model="cheap", avg=30.0, tflops=2.0, setting="fast"), path)
    lb.submit(measured_row(model="dear", avg=35.0, tflops=200.0, setting="slow"), path)
    lb.submit(measured_row(model="bad", avg=25.0, tflops=300.0, setting="slow"), path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n\n{MARKER_START}\nold table\n{MARKER_END}\n\nfooter\n")
    report = lb.render(path, readme=readme, plot=tmp_path / "docs" / "lb.png")
    text = readme.read_text()
    assert report.readme_updated is True and "old table" not in text
    assert text.startswith("# Title\n\nintro\n\n" + MARKER_START + "\n| Model |") and text.endswith("\n\nfooter\n")
    table = text.split(MARKER_START)[1].split(MARKER_END)[0]
    assert "| cheap | c2f | fast | 30.00 |" in table and "| Qwen2-VL | none | max 3333x3333 | 34.88 |" in table
    assert len(table.strip().splitlines()) == len(lb.read_rows(path)) + 2
    assert (report.plot_metric, report.plot_points) == ("avg_acc", 3)
    png = (tmp_path / "docs" / "lb.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # Rendering again with the same rows gives the same README.
    lb.render(path, readme=readme)
    assert readme.read_text() == text


def test_render_reports_missing_markers_and_leaves_readme_alone(tmp_path, capsys):
    path = tmp_path / "lb.csv"
    lb.seed(path)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    report = lb.render(path, readme=readme, plot=tmp_path / "p.png")
    assert report.readme_updated is False and readme.read_text() == "# no markers\n"
    assert report.plot_points == 0  # the paper gives TFLOPs and accuracy for different settings
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
    assert lb.main(["leaderboard", "render", "--csv", str(path), "--readme", str(readme)]) == 1
    assert "has no <!-- leaderboard:start -->" in capsys.readouterr().err


def test_pareto_front():
    points = [(1.0, 10.0), (2.0, 20.0), (3.0, 15.0), (2.0, 20.0), (0.5, 5.0), (4.0, 30.0)]
    assert pareto_front(points) == [4, 0, 1, 3, 5]


def test_csv_text_is_stable():
    rows = lb.paper_rows()
    text = lb._to_csv(rows)
    again = list(csv.DictReader(io.StringIO(text)))
    assert lb._to_csv([parse_row(r)[0] for r in again]) == text


@pytest.mark.parametrize(
    ("model_args", "setting"),
    [
        ("pretrained=/c/m,reducer=fastv,max_tiles=144", "anyres-p144"),
        ("pretrained=/c/m,reducer=fastv,max_tiles=144,device=cuda:0", "anyres-p144,device=cuda:0"),
        ("pretrained=/c/m,reducer=none,resume_dir=/s,image_cache=2,trust_remote_code=True", "trust_remote_code=true"),
        (
            "pretrained=/c/m,reducer=visionzip,max_tiles=25,dominant=54,contextual=10",
            "anyres-p25,contextual=10,dominant=54",
        ),
        ("pretrained=/c/m,reducer=anyres,max_tiles=2,pinpoints=checkpoint", "max_tiles=2,pinpoints=checkpoint"),
        ("pretrained=/c/m,reducer=none", "default"),
        ("pretrained=/c/m,reducer=blind", "default"),  # the language-prior floor: method "blind"
    ],
)
def test_default_setting_names_anyres_limits_as_the_paper(tmp_path, model_args, setting):
    results = write_results(tmp_path / "run", model_args=model_args)
    row = lb.build_row(results, hardware="1x H200")
    assert row["setting"] == setting
    reducer = dict(a.split("=") for a in model_args.split(","))["reducer"]
    assert row["method"] == ("none" if reducer == "anyres" else reducer)  # anyres-pN alone is the paper's none row
