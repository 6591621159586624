"""Crash-safe resume of ``c2f_llava`` (:mod:`lrs_plugin.harness.resume`).

Unit tests of the store (keys, what the settings hash covers, torn lines, several rank files), then the real thing:
``lmms-eval`` on generated LRS-VQA data with a tiny random checkpoint is SIGKILLed part-way, rerun with the same
settings, and must regenerate only what was not saved and end with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from loguru import logger

from lrs_plugin.errors import ConfigError
from lrs_plugin.flops.accounting import MEASURED_KEYS
from lrs_plugin.harness.record import SampleRecord
from lrs_plugin.harness.resume import (
    ResumeStore,
    answer_key,
    checkpoint_fingerprint,
    record_checksum,
    settings_fingerprint,
)
from lrs_plugin.harness.run import EvalRun, offline_env, run_lmms_eval, tasks_dir
from lrs_plugin.harness.settings import parse_model_args

SIZES = {"FAIR": 6, "GLH-Bridge": 4, "STAR": 7}  # 17 questions: odd, so 2 ranks get uneven shards
N_DOCS = sum(SIZES.values())
METHOD = "reducer=c2f,focus=llm_attention,focus_layer=1"
GENERATED = re.compile(r"c2f_llava: generated (\S+) \((\S+)\) on rank (\d+)")


# --------------------------------------------------------------------------------------------------- unit tests


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llava"}')
    return folder


def _settings(ckpt_dir: Path, **extra):
    return parse_model_args({"pretrained": str(ckpt_dir), "resume_dir": "/tmp/x", **extra})


def test_model_args_resume_knobs(ckpt_dir):
    assert _settings(ckpt_dir).resume_dir == "/tmp/x" and _settings(ckpt_dir).resume is True
    assert _settings(ckpt_dir, resume=False).resume is False
    assert parse_model_args({"pretrained": "x"}).resume_dir is None
    assert parse_model_args({"pretrained": "x", "resume_dir": "None"}).resume_dir is None
    assert "resume_dir" not in _settings(ckpt_dir).reducer_options
    with pytest.raises(ConfigError, match="resume must be true or false; got 'maybe'"):
        _settings(ckpt_dir, resume="maybe")


@pytest.mark.parametrize(
    "change",
    [
        {"reducer": "none"},
        {"keep_ratio": 0.5},
        {"focus": "uniform"},
        {"focus_layer": 2},
        {"dtype": "bfloat16"},
        {"vision_dtype": "float32"},
        {"attn_implementation": "eager"},
        {"max_new_tokens": 4},
        {"trust_remote_code": True},
        {"device": "cuda:1"},
        {"device_map": "auto"},
        {"tile_batch_size": 4},
    ],
)
def test_settings_hash_changes_with_every_answer_setting(ckpt_dir, change):
    base = settings_fingerprint(_settings(ckpt_dir), plugin_version="1.0")
    assert settings_fingerprint(_settings(ckpt_dir, **change), plugin_version="1.0") != base


def test_settings_hash_follows_checkpoint_and_version(ckpt_dir, tmp_path):
    settings = _settings(ckpt_dir)
    base = settings_fingerprint(settings, plugin_version="1.0")
    assert settings_fingerprint(settings, plugin_version="1.1") != base
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "llava"}')
    assert settings_fingerprint(replace(settings, pretrained=str(other)), plugin_version="1.0") != base
    (ckpt_dir / "config.json").write_text('{"model_type": "llava", "vocab_size": 7}')
    assert settings_fingerprint(settings, plugin_version="1.0") != base
    assert checkpoint_fingerprint("org/model") == {"path": "org/model", "config_sha256": None}


@pytest.mark.parametrize(
    "change",
    [{"image_cache": 4}, {"reuse": False}, {"resume_dir": "/elsewhere"}, {"resume": False}, {"resume_strict": True}],
)
def test_settings_hash_ignores_what_cannot_change_answers(ckpt_dir, change):
    base = settings_fingerprint(_settings(ckpt_dir), plugin_version="1.0")
    assert settings_fingerprint(_settings(ckpt_dir, **change), plugin_version="1.0") == base


KEY_ARGS = {
    "settings_hash": "s",
    "task": "lrs_vqa_fair",
    "split": "test",
    "doc_id": 3,
    "doc": {"question_id": "FAIR_3", "image": "a.tif"},
    "context": "How many ships?",
    "gen_kwargs": {"max_new_tokens": 8, "until": ["\n\n"]},
}


@pytest.mark.parametrize(
    "change",
    [
        {"settings_hash": "t"},
        {"task": "lrs_vqa_star"},
        {"split": "val"},
        {"doc_id": 4},
        {"doc": {"question_id": "FAIR_4", "image": "a.tif"}},
        {"doc": {"question_id": "FAIR_3", "image": "b.tif"}},
        {"context": "How many planes?"},
        {"gen_kwargs": {"max_new_tokens": 9, "until": ["\n\n"]}},
    ],
)
def test_answer_key_changes_with_each_input(change):
    assert answer_key(**{**KEY_ARGS, **change}) != answer_key(**KEY_ARGS)


def test_answer_key_ignores_until():
    # The store keeps the text before the stop strings; they are applied when serving.
    assert answer_key(**{**KEY_ARGS, "gen_kwargs": {"max_new_tokens": 8, "until": ["."]}}) == answer_key(**KEY_ARGS)


def test_store_round_trip_and_per_rank_files(tmp_path):
    first = ResumeStore(tmp_path, rank=0, world_size=2)
    first.put("k0", "raw 0", SampleRecord(tflops=1.5, extra={"note": [{"a": (1, 2)}]}), meta={"doc_id": 0})
    first.close()
    second = ResumeStore(tmp_path, rank=1, world_size=2)
    second.put("k1", "raw 1", SampleRecord(tflops=2.0))
    second.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.rank0-of-2.jsonl", "answers.rank1-of-2.jsonl"]
    # A run with another world size reads both ranks' answers but writes only its own file.
    single = ResumeStore(tmp_path, rank=0, world_size=1)
    assert single.loaded == 2
    assert single.get("k0").raw_text == "raw 0"
    assert single.get("k0").record.to_dict() == {"tflops": 1.5, "note": [{"a": [1, 2]}]}
    assert single.get("k1").record == SampleRecord(tflops=2.0)
    assert single.get("missing") is None
    single.get("k0").record.tflops = 9.0  # callers get copies
    single.get("k0").record.extra["note"][0]["a"] = None
    assert single.get("k0").record.tflops == 1.5 and single.get("k0").record.extra["note"] == [{"a": [1, 2]}]
    single.put("k2", "raw 2", SampleRecord())
    single.close()
    assert (tmp_path / "answers.rank0-of-1.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "answers.rank0-of-2.jsonl").read_text().count("\n") == 1


def test_torn_last_line_is_skipped_then_cut_before_appending(tmp_path):
    store = ResumeStore(tmp_path, rank=0, world_size=1)
    store.put("k0", "a", SampleRecord(new_tokens=1))
    store.close()
    path = tmp_path / "answers.rank0-of-1.jsonl"
    with open(path, "ab") as handle:
        handle.write(b'{"key": "k1", "raw_text": "b", "sta')  # killed mid-write
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        reopened = ResumeStore(tmp_path, rank=0, world_size=1)
        assert reopened.loaded == 1 and reopened.skipped_lines == 1 and reopened.get("k1") is None
        reopened.put("k1", "b", SampleRecord(new_tokens=2))
        reopened.close()
    finally:
        logger.remove(sink)
    assert any("torn last line" in m and "line 2" in m for m in messages), messages
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["k0", "k1"]
    assert ResumeStore(tmp_path, rank=0, world_size=1).skipped_lines == 0


def test_malformed_middle_line_is_skipped(tmp_path):
    path = tmp_path / "answers.rank3-of-4.jsonl"
    records = [{"key": k, "raw_text": "t", "stats": {}} for k in ("k1", "k2")]
    good = [json.dumps({**r, "line_sha256": record_checksum(r)}) for r in records]
    path.write_text(f'{good[0]}\nnot json\n{{"key": 1, "raw_text": "t", "stats": {{}}}}\n{good[1]}\n')
    store = ResumeStore(tmp_path, rank=0, world_size=1)
    assert store.loaded == 2 and store.skipped_lines == 2


def test_a_checksummed_line_whose_stats_do_not_fit_the_record_is_skipped(tmp_path):
    path = tmp_path / "answers.rank0-of-1.jsonl"
    lines = [
        {"key": "k1", "raw_text": "t", "stats": {"tiles_encoded": "five"}},  # a value of the wrong type
        {"key": "k2", "raw_text": "t", "stats": {"tflops": 1.0, "newer_key": 1}, "stop_strings": ["\n\n"]},
        {"key": "k3", "raw_text": "t", "stats": {}, "stop_strings": "\n\n"},  # not a list
    ]
    path.write_text("".join(json.dumps({**r, "line_sha256": record_checksum(r)}) + "\n" for r in lines))
    store = ResumeStore(tmp_path, rank=0, world_size=1)
    assert store.loaded == 1 and store.skipped_lines == 2 and store.get("k1") is None and store.get("k3") is None
    kept = store.get("k2")
    assert kept.record == SampleRecord(tflops=1.0, extra={"newer_key": 1}) and kept.stop_strings == ("\n\n",)


# ------------------------------------------------------------------------------------------- end to end (SIGKILL)


@pytest.fixture(scope="module")
def tree(make_lrs_vqa_tree) -> Path:
    return make_lrs_vqa_tree(seed=3, questions_per_subset=SIZES, bomb_image=False)


@pytest.fixture(scope="module")
def checkpoint(make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint("llava_next", "qwen2")


def eval_env(tree: Path, tmp: Path) -> dict[str, str]:
    return offline_env(
        {
            "LRS_VQA_ROOT": str(tree),
            "LRS_PLUGIN_HOME": str(tmp / "lrs_plugin_home"),
            "PYTHONUNBUFFERED": "1",
            "ACCELERATE_USE_CPU": "true",
            "OMP_NUM_THREADS": "1",
        }
    )


def evaluate(tree, checkpoint, out: Path, model_args: str, *, launcher=None, tasks=("lrs_vqa",)) -> EvalRun:
    """One complete lmms-eval run (``--verbosity DEBUG``: the model logs each generation, errors give rc 1).

    ``launcher``: the ``accelerate_launch`` prefix (``None``: one process).
    """
    return run_lmms_eval(
        model="c2f_llava",
        model_args=f"pretrained={checkpoint},{model_args}",
        tasks=list(tasks),
        output_path=out,
        env=eval_env(tree, out),
        launcher=launcher,
        extra_args=["--verbosity", "DEBUG"],
        timeout=600,
    )


def store_lines(resume_dir: Path) -> dict[str, int]:
    """Complete (newline-terminated) lines per rank file."""
    return {p.name: p.read_bytes().count(b"\n") for p in sorted(resume_dir.glob("answers.*.jsonl"))}


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process below it (torch elastic starts each rank in a session of its own)."""
    import psutil

    try:
        victims = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    proc.wait()


def kill_part_way(tree, checkpoint, out: Path, model_args: str, resume_dir: Path, *, launcher, at: int):
    """Start lmms-eval, SIGKILL all its processes once ``at`` answers are stored; return (log, lines)."""
    launch = launcher or [sys.executable]
    cmd = [*launch, "-m", "lmms_eval", "--model", "c2f_llava", "--tasks", "lrs_vqa"]
    cmd += ["--model_args", f"pretrained={checkpoint},{model_args}", "--include_path", str(tasks_dir())]
    cmd += ["--output_path", str(out), "--log_samples", "--verbosity", "DEBUG"]
    log_path = out.with_suffix(".log")
    out.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=eval_env(tree, out), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        try:
            while sum(store_lines(resume_dir).values()) < at:
                assert proc.poll() is None, f"lmms-eval ended before the kill:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no answers stored in time"
                time.sleep(0.02)
        finally:
            kill_tree(proc)
    return log_path.read_text(errors="replace"), store_lines(resume_dir)


def generated_per_rank(log: str) -> Counter:
    return Counter(int(m.group(3)) for m in GENERATED.finditer(log))


def metric_values(run: EvalRun) -> dict[str, float]:
    """Every metric of ``results`` and ``groups`` except the measured times and memory (never reproducible)."""
    out = {}
    for section in ("results", "groups"):
        for task, metrics in run.results[section].items():
            for name, value in metrics.items():
                if name != "alias" and not any(key in name for key in MEASURED_KEYS):
                    out[f"{section}/{task}/{name}"] = value
    return out


def assert_same_metrics(a: EvalRun, b: EvalRun) -> None:
    left, right = metric_values(a), metric_values(b)
    assert left.keys() == right.keys()
    for key, value in left.items():
        other = right[key]
        if isinstance(value, float) and isinstance(other, float):
            assert math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-15), (key, value, other)  # summation order
        else:
            assert value == other, (key, value, other)


def samples_by_doc(run: EvalRun) -> dict[tuple[str, int], dict]:
    out = {}
    for task, path in run.samples.items():
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            out[(task, sample["doc_id"])] = sample
    return out


def assert_same_samples(a: EvalRun, b: EvalRun) -> None:
    left, right = samples_by_doc(a), samples_by_doc(b)
    assert left.keys() == right.keys() and len(left) == N_DOCS
    for key, sample in left.items():
        other = right[key]
        assert sample["filtered_resps"] == other["filtered_resps"], key
        assert sample["token_counts"] == other["token_counts"], key
        for name in ("eff_vision_tokens_encoded", "eff_vision_tokens_to_llm", "eff_tflops"):
            assert sample[name] == other[name] and sample[name] > 0, (key, name)


@pytest.fixture(scope="module")
def uninterrupted(tree, checkpoint, tmp_path_factory) -> EvalRun:
    """The reference run; ``resume=false`` must leave its ``resume_dir`` alone (neither read nor created)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    run = evaluate(tree, checkpoint, out, f"{METHOD},resume_dir={out / 'unused'},resume=false")
    assert not (out / "unused").exists() and "resume store" not in run.log
    assert sum(generated_per_rank(run.log).values()) == N_DOCS
    return run


def kill_and_resume(tree, checkpoint, tmp: Path, uninterrupted: EvalRun, num_processes: int, launch) -> dict:
    """``launch``: the ``accelerate_launch`` factory (a fresh port for each run)."""
    resume_dir = tmp / "answers"
    model_args = f"{METHOD},resume_dir={resume_dir}"
    started = time.monotonic()
    killed_log, lines = kill_part_way(
        tree, checkpoint, tmp / "killed", model_args, resume_dir, launcher=launch(num_processes), at=5
    )
    killed_s = time.monotonic() - started
    generated_before = generated_per_rank(killed_log)
    stored_before = sum(lines.values())
    assert 5 <= stored_before < N_DOCS
    # Lost work: answers generated before the kill but not in the store (the one in flight at most), per rank.
    for rank in range(num_processes):
        in_file = lines.get(f"answers.rank{rank}-of-{num_processes}.jsonl", 0)
        assert 0 <= generated_before[rank] - in_file <= 1, (rank, generated_before, lines)
    # A kill in the middle of a write leaves a torn line: simulate one on rank 0's file.
    rank0 = resume_dir / f"answers.rank0-of-{num_processes}.jsonl"
    with open(rank0, "ab") as handle:
        handle.write(b'{"task": "lrs_vqa_fair", "key": "0f3a')

    resumed = evaluate(tree, checkpoint, tmp / "resumed", model_args, launcher=launch(num_processes))
    regenerated = generated_per_rank(resumed.log)
    assert sum(regenerated.values()) == N_DOCS - stored_before, (regenerated, lines)
    assert "torn last line" in resumed.log
    assert f"{stored_before} answers loaded (1 unreadable lines skipped)" in resumed.log
    assert sum(store_lines(resume_dir).values()) == N_DOCS  # torn tail cut, every answer stored once
    assert_same_metrics(resumed, uninterrupted)
    assert_same_samples(resumed, uninterrupted)

    # A third run with the same settings generates nothing, also with another world size (1 process reads every
    # rank's file).
    again = evaluate(tree, checkpoint, tmp / "again", model_args)
    assert f"{N_DOCS} answers loaded" in again.log
    assert sum(generated_per_rank(again.log).values()) == 0
    assert_same_metrics(again, uninterrupted)
    return {
        "stored_at_kill": lines,
        "generated_before_kill": dict(generated_before),
        "regenerated": dict(regenerated),
        "killed_s": round(killed_s, 1),
        "resumed_s": round(resumed.wall_s, 1),
        "again_s": round(again.wall_s, 1),
    }


def test_sigkill_then_resume_matches_uninterrupted_run(tree, checkpoint, tmp_path, uninterrupted, accelerate_launch):
    numbers = kill_and_resume(tree, checkpoint, tmp_path, uninterrupted, 1, accelerate_launch)
    print("kill-and-resume, 1 process:", numbers)


@pytest.mark.slow
def test_sigkill_then_resume_under_two_processes(tree, checkpoint, tmp_path, uninterrupted, accelerate_launch):
    numbers = kill_and_resume(tree, checkpoint, tmp_path, uninterrupted, 2, accelerate_launch)
    print("kill-and-resume, 2 processes:", numbers)


def test_changed_setting_reuses_nothing(tree, checkpoint, tmp_path):
    resume_dir = tmp_path / "answers"
    first = evaluate(tree, checkpoint, tmp_path / "a", f"{METHOD},resume_dir={resume_dir}", tasks=["lrs_vqa_fair"])
    assert sum(generated_per_rank(first.log).values()) == SIZES["FAIR"]
    changed = evaluate(
        tree, checkpoint, tmp_path / "b", f"{METHOD},keep_ratio=0.5,resume_dir={resume_dir}", tasks=["lrs_vqa_fair"]
    )
    assert sum(generated_per_rank(changed.log).values()) == SIZES["FAIR"]
    assert f"{SIZES['FAIR']} answers loaded" in changed.log
    assert f"{SIZES['FAIR']} requests, 0 from the resume store" in changed.log
    assert sum(store_lines(resume_dir).values()) == 2 * SIZES["FAIR"]
