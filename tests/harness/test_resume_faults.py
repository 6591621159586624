"""Resume store under faults (issue 15): altered or unchecked lines, and a folder that cannot be written.

* every line carries a checksum of its content; a line altered after it was written (still valid JSON) or one
  without a checksum is not served: one warning per file gives the count, and the answer is generated again;
* a full or read-only disk, or a folder that cannot be created, does not end the run: one warning, nothing more is
  written, every answer generated from then on is marked ``resume_disabled``; ``resume_strict=true`` raises
  :class:`~lrs_plugin.harness.ResumeStoreError` instead.

Faults are injected without root tricks: a module-level ``open`` in :mod:`lrs_plugin.harness.resume` hands out files
whose ``write`` raises ``OSError(ENOSPC)``, or refuses to open with ``OSError(EROFS)``; a ``chmod`` read-only folder is
also tried where the tests do not run as root (root ignores the mode bits).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from loguru import logger

from lrs_plugin.errors import ConfigError, LrsPluginError
from lrs_plugin.harness import resume
from lrs_plugin.harness.record import SampleRecord
from lrs_plugin.harness.resume import RESUME_DISABLED_KEY, ResumeStore, ResumeStoreError, record_checksum
from lrs_plugin.harness.settings import parse_model_args

RANK_FILE = "answers.rank0-of-1.jsonl"


@contextlib.contextmanager
def _capture_warnings():
    """Collect every loguru WARNING (or higher) message logged inside the block."""
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING", format="{message}")
    try:
        yield messages
    finally:
        logger.remove(sink)


@pytest.fixture
def warnings_logged():
    """Every loguru WARNING (or higher) message logged during the test.

    lmms-eval's first import of ``lmms_eval.models`` drops every sink: the model tests use :func:`_capture_warnings`
    once that import is done.
    """
    with _capture_warnings() as messages:
        yield messages


def _disabled_warnings(messages: list[str]) -> list[str]:
    return [m for m in messages if "RESUME DISABLED" in m]


def _fill(folder: Path, n: int) -> Path:
    store = ResumeStore(folder, rank=0, world_size=1)
    for i in range(n):
        store.put(f"k{i}", f"answer {i}", SampleRecord(tflops=1.0 + i), meta={"doc_id": i})
    store.close()
    return folder / RANK_FILE


def _rewrite(path: Path, change) -> None:
    """Apply ``change(record, line_number)`` to each line's JSON object, keeping every line valid JSON."""
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        record = json.loads(line)
        change(record, number)
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")


class _FaultyFile:
    """A real file whose ``write`` raises ``OSError(code)`` once ``fail_after`` writes have succeeded."""

    def __init__(self, handle: Any, code: int, fail_after: int, attempts: list[int]) -> None:
        self._handle, self._code, self._fail_after, self._attempts = handle, code, fail_after, attempts

    def write(self, data: bytes) -> int:
        self._attempts.append(len(data))
        if len(self._attempts) > self._fail_after:
            raise OSError(self._code, os.strerror(self._code))
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.close()


def _inject(monkeypatch, *, open_error: int | None = None, write_error: int | None = None, fail_after: int = 0):
    """Make the store's appends fail; returns the list of write attempts (one entry per ``write`` call)."""
    attempts: list[int] = []

    def fake_open(path, mode="r", *args, **kwargs):
        if "a" in mode and open_error is not None:
            raise OSError(open_error, os.strerror(open_error), str(path))
        handle = open(path, mode, *args, **kwargs)
        if "a" in mode and write_error is not None:
            return _FaultyFile(handle, write_error, fail_after, attempts)
        return handle

    monkeypatch.setattr(resume, "open", fake_open, raising=False)  # found before the builtin by resume's functions
    return attempts


# ------------------------------------------------------------------------------------------------ checksums


def test_each_stored_line_carries_the_checksum_of_its_content(tmp_path):
    path = _fill(tmp_path, 2)
    for line in path.read_text().splitlines():
        record = json.loads(line)
        assert record["line_sha256"] == record_checksum(record) and len(record["line_sha256"]) == 16
        assert record_checksum(record) == record_checksum({k: v for k, v in record.items() if k != "line_sha256"})


def test_altered_but_valid_json_lines_are_not_served_and_one_warning_names_file_and_count(tmp_path, warnings_logged):
    path = _fill(tmp_path, 4)

    def alter(record: dict, number: int) -> None:
        if number == 2:
            record["raw_text"] = "a different answer"
        if number == 4:
            record["stats"]["tflops"] = 0.001

    _rewrite(path, alter)
    store = ResumeStore(tmp_path, rank=0, world_size=1)
    assert store.loaded == 2 and store.skipped_lines == 2
    assert store.get("k1") is None and store.get("k3") is None  # generated again by the model
    assert store.get("k0").raw_text == "answer 0" and store.get("k2").record == SampleRecord(tflops=3.0)
    checksum_warnings = [m for m in warnings_logged if "checksum" in m]
    assert len(checksum_warnings) == 1, warnings_logged
    assert str(path) in checksum_warnings[0] and "2 lines skipped" in checksum_warnings[0]
    assert "does not match their checksum" in checksum_warnings[0]


def test_lines_without_checksum_from_an_older_store_are_untrusted_with_one_warning_giving_the_count(
    tmp_path, warnings_logged
):
    path = _fill(tmp_path, 3)
    _rewrite(path, lambda record, number: record.pop("line_sha256"))  # the layout before checksums
    store = ResumeStore(tmp_path, rank=0, world_size=1)
    assert store.loaded == 0 and store.skipped_lines == 3 and store.get("k0") is None
    unchecked = [m for m in warnings_logged if "carry no checksum" in m]
    assert len(unchecked) == 1 and str(path) in unchecked[0] and "3 lines skipped" in unchecked[0], warnings_logged


def test_an_answer_skipped_for_its_checksum_is_served_again_once_regenerated(tmp_path):
    path = _fill(tmp_path, 2)
    _rewrite(path, lambda record, number: record.update(raw_text="forged") if number == 1 else None)
    store = ResumeStore(tmp_path, rank=0, world_size=1)
    assert store.get("k0") is None
    assert store.put("k0", "answer 0", SampleRecord(tflops=1.0)) is True  # what the model does for a missing answer
    store.close()
    again = ResumeStore(tmp_path, rank=0, world_size=1)
    assert again.get("k0").raw_text == "answer 0" and again.skipped_lines == 1  # the forged line stays, unused


def test_numpy_stats_and_non_ascii_text_round_trip_through_the_checksum(tmp_path):
    store = ResumeStore(tmp_path, rank=0, world_size=1)
    tflops = np.float32(0.1) + np.float32(0.2)
    record = SampleRecord(tflops=tflops, new_tokens=np.int64(7), llm_tokens_per_layer=(1, 2), latency_s=0.1 + 0.2)
    assert store.put("k", "Hafen – 港口 ✓", record) is True
    store.close()
    again = ResumeStore(tmp_path, rank=0, world_size=1)
    assert again.skipped_lines == 0 and again.get("k").raw_text == "Hafen – 港口 ✓"
    assert again.get("k").record == SampleRecord(
        tflops=float(tflops), new_tokens=7, llm_tokens_per_layer=[1, 2], latency_s=0.1 + 0.2
    )


def test_torn_tail_after_checksummed_lines_is_still_skipped_and_cut(tmp_path, warnings_logged):
    path = _fill(tmp_path, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"key": "k2", "raw_text": "b", "line_sha2')
    store = ResumeStore(tmp_path, rank=0, world_size=1)  # opens its file for appending: the tail is cut now
    assert store.loaded == 2 and store.skipped_lines == 1
    assert any("torn last line" in m for m in warnings_logged) and path.read_bytes().endswith(b"}\n")
    store.close()


# ------------------------------------------------------------------------------------- a store that cannot write


def test_full_disk_on_a_write_disables_the_store_with_one_warning_and_no_further_attempts(
    tmp_path, monkeypatch, warnings_logged
):
    attempts = _inject(monkeypatch, write_error=errno.ENOSPC, fail_after=1)
    store = ResumeStore(tmp_path, rank=0, world_size=1)
    assert store.put("k0", "a0", SampleRecord()) is True and not store.disabled
    assert store.put("k1", "a1", SampleRecord()) is False and store.disabled
    assert store.put("k2", "a2", SampleRecord()) is False and store.put("k3", "a3", SampleRecord()) is False
    store.close()
    assert len(attempts) == 2  # nothing is tried once the store is disabled
    disabled = _disabled_warnings(warnings_logged)
    assert len(disabled) == 1, warnings_logged
    assert str(tmp_path) in disabled[0] and "No space left on device" in disabled[0]
    assert "CONTINUES WITHOUT SAVING" in disabled[0] and "resume_strict=true" in disabled[0]
    assert store.disabled_reason == f"OSError: [Errno {errno.ENOSPC}] No space left on device"
    monkeypatch.undo()
    again = ResumeStore(tmp_path, rank=0, world_size=1)
    assert again.loaded == 1 and again.get("k0").raw_text == "a0" and again.get("k1") is None


def test_read_only_file_system_at_start_warns_once_runs_without_saving_and_still_serves(
    tmp_path, monkeypatch, warnings_logged
):
    _fill(tmp_path, 2)
    _inject(monkeypatch, open_error=errno.EROFS)
    store = ResumeStore(tmp_path, rank=0, world_size=1)  # no exception: the run goes on
    assert store.disabled and store.loaded == 2 and store.get("k1").raw_text == "answer 1"
    assert store.put("k9", "new", SampleRecord()) is False and store.put("k10", "new", SampleRecord()) is False
    store.close()
    disabled = _disabled_warnings(warnings_logged)
    assert len(disabled) == 1 and "Read-only file system" in disabled[0] and str(tmp_path) in disabled[0]


def test_resume_dir_that_cannot_be_created_warns_once_and_runs_without_resume(tmp_path, warnings_logged):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    store = ResumeStore(blocker / "store", rank=0, world_size=1)
    assert store.disabled and store.loaded == 0 and len(store) == 0 and store.get("k") is None
    assert store.put("k", "a", SampleRecord()) is False
    store.close()
    disabled = _disabled_warnings(warnings_logged)
    assert len(disabled) == 1 and "cannot create resume_dir" in disabled[0] and str(blocker / "store") in disabled[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder; covered by the EROFS test")
def test_chmod_read_only_resume_dir_warns_once_and_runs_without_saving(tmp_path, warnings_logged):
    folder = tmp_path / "store"
    _fill(folder, 1)
    (folder / RANK_FILE).unlink()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        store = ResumeStore(folder, rank=0, world_size=1)
        assert store.disabled and store.put("k", "a", SampleRecord()) is False
    finally:
        folder.chmod(stat.S_IRWXU)
    assert len(_disabled_warnings(warnings_logged)) == 1


def test_unreadable_store_file_is_skipped_with_a_warning_and_raises_when_strict(tmp_path, monkeypatch, warnings_logged):
    _fill(tmp_path, 1)
    other = tmp_path / "answers.rank1-of-2.jsonl"
    other.write_text("")
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == other.name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    store = ResumeStore(tmp_path, rank=0, world_size=1)
    assert store.loaded == 1 and not store.disabled
    store.close()
    assert any("cannot read resume file" in m and other.name in m for m in warnings_logged), warnings_logged
    with pytest.raises(ResumeStoreError, match="cannot read resume file .*answers.rank1-of-2.jsonl.*Permission"):
        ResumeStore(tmp_path, rank=0, world_size=1, strict=True)


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ("uncreatable", r"resume_dir .*a_file/store: cannot create resume_dir"),
        ("read-only", r"resume_dir .*: cannot open resume file .*answers.rank0-of-1.jsonl .*Read-only file system"),
    ],
)
def test_strict_store_raises_a_typed_error_naming_the_folder_at_construction(tmp_path, monkeypatch, fault, match):
    folder = tmp_path / "a_file" / "store" if fault == "uncreatable" else tmp_path
    if fault == "uncreatable":
        (tmp_path / "a_file").write_text("")
    else:
        _inject(monkeypatch, open_error=errno.EROFS)
    with pytest.raises(ResumeStoreError, match=match) as caught:
        ResumeStore(folder, rank=0, world_size=1, strict=True)
    assert isinstance(caught.value, LrsPluginError) and isinstance(caught.value, OSError)
    assert "resume_strict=true stops the run" in str(caught.value)


def test_strict_store_raises_on_a_full_disk_write(tmp_path, monkeypatch):
    _inject(monkeypatch, write_error=errno.ENOSPC)
    store = ResumeStore(tmp_path, rank=0, world_size=1, strict=True)
    with pytest.raises(ResumeStoreError, match=r"cannot write resume file .*rank0-of-1.jsonl.*No space left"):
        store.put("k", "a", SampleRecord())
    assert not store.disabled


# ----------------------------------------------------------------------------------- settings and aggregation


def test_resume_strict_model_arg_is_a_validated_bool_that_changes_no_answer(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    base = {"pretrained": str(tmp_path), "resume_dir": str(tmp_path / "s")}
    assert parse_model_args(base).resume_strict is False
    strict = parse_model_args({**base, "resume_strict": True})
    assert strict.resume_strict is True and "resume_strict" not in strict.reducer_options
    with pytest.raises(ConfigError, match="resume_strict must be true or false; got 'yes'"):
        parse_model_args({**base, "resume_strict": "yes"})
    fingerprint = resume.settings_fingerprint
    assert fingerprint(strict, plugin_version="1") == fingerprint(parse_model_args(base), plugin_version="1")


def test_resume_strict_does_not_change_the_leaderboard_config_hash():
    from lrs_plugin.leaderboard.model_args import answer_args, config_hash

    args = {"pretrained": "/c/m", "reducer": "c2f", "keep_ratio": 0.25}
    strict = answer_args("c2f_llava", {**args, "resume_strict": True})
    assert config_hash("c2f_llava", "m", strict, {"t": 1}) == config_hash(
        "c2f_llava", "m", answer_args("c2f_llava", args), {"t": 1}
    )


def test_efficiency_tally_counts_unsaved_answers_only_when_there_are_some():
    from lrs_plugin.flops.accounting import EfficiencyTally

    clean = EfficiencyTally()
    clean.add("t", SampleRecord(tflops=1.0))
    assert not any("resume_disabled" in key for key in clean.metrics())
    tally = EfficiencyTally()
    tally.add("t", SampleRecord(tflops=1.0))
    tally.add("t", SampleRecord.from_dict({"tflops": 1.0, RESUME_DISABLED_KEY: True}))
    tally.add("u", SampleRecord.from_dict({"tflops": 1.0, RESUME_DISABLED_KEY: True}))
    figures = tally.metrics()
    assert figures["eff_resume_disabled"] == 2 and figures["eff_resume_disabled/t"] == 1
    assert figures["eff_resume_disabled/u"] == 1 and figures["eff_samples"] == 3


# ------------------------------------------------------------------------------ through the model class (tiny)


@pytest.fixture(scope="module")
def checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint("llava_next", "qwen2")


def _generate(model, n: int) -> tuple[list[str], list[dict]]:
    """``generate_until`` on ``n`` image requests built as lmms-eval builds them; texts and records as JSON."""
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from lrs_plugin.harness.record import STATS_METADATA_KEY, STORE

    rng = np.random.default_rng(0)
    docs = [{"image": Image.fromarray(rng.integers(0, 256, (340, 400, 3), dtype=np.uint8))} for _ in range(n)]
    model.task_dict = {"t": {"test": docs}}
    requests = [
        Instance(
            request_type="generate_until",
            arguments=("What is there?", {"until": ["\n\n"]}, lambda doc: [doc["image"]], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1, "split": "test", STATS_METADATA_KEY: True},
        )
        for i in range(n)
    ]
    STORE.clear()
    out = model.generate_until(requests)
    return [r.text for r in out], [STORE.pop(f"t/test/{i}").to_dict() for i in range(n)]


def _model(checkpoint: Path, resume_dir: Path, **extra: Any):
    import lmms_eval.models  # noqa: F401 - its first import removes every loguru sink: get it over with here

    from lrs_plugin.models.c2f_llava import C2FLlava

    return C2FLlava(
        pretrained=str(checkpoint),
        reducer="none",
        device="cpu",
        dtype="float32",
        max_new_tokens=2,
        resume_dir=str(resume_dir),
        **extra,
    )


def test_disk_full_during_generate_keeps_answering_and_marks_the_unsaved_samples(checkpoint, tmp_path, monkeypatch):
    model = _model(checkpoint, tmp_path / "store")
    attempts = _inject(monkeypatch, write_error=errno.ENOSPC, fail_after=1)
    with _capture_warnings() as warnings_logged:
        texts, stats = _generate(model, 3)
    assert all(isinstance(t, str) for t in texts) and all("error" not in s for s in stats)
    assert RESUME_DISABLED_KEY not in stats[0]  # saved before the disk filled up
    assert stats[1][RESUME_DISABLED_KEY] is True and stats[2][RESUME_DISABLED_KEY] is True
    assert len(attempts) == 2 and len(_disabled_warnings(warnings_logged)) == 1
    assert not any("resume write failed" in m for m in warnings_logged)  # no per-sample error spam
    monkeypatch.undo()
    texts_again, stats_again = _generate(model, 3)  # the rerun serves the saved answer, generates the rest
    assert texts_again == texts and not any(RESUME_DISABLED_KEY in s for s in stats_again)


def test_disk_full_during_generate_with_resume_strict_stops_the_run(checkpoint, tmp_path, monkeypatch):
    model = _model(checkpoint, tmp_path / "store", resume_strict=True)
    _inject(monkeypatch, write_error=errno.ENOSPC)
    with pytest.raises(ResumeStoreError, match="No space left on device"):
        _generate(model, 2)
