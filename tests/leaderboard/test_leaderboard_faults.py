"""leaderboard.csv under hostile or broken input (issue 15): oversized cells, CSV injection, control characters in
messages, a submit killed right before the atomic swap, and one-line CLI errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lrs_plugin.errors import LrsPluginError
from lrs_plugin.leaderboard import submit as lb
from lrs_plugin.leaderboard.schema import COLUMN_NAMES, shown

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
TEXT_COLUMNS = [c.name for c in lb.COLUMNS if c.kind == "text"]
TEN_MB = 10_000_000
CSV_FIELD_LIMIT = 131_072  # the csv module's default field_size_limit


def results_file(folder: Path) -> Path:
    """A complete lmms-eval results file of one LRS-VQA subset (no benchmark-size patching needed)."""
    from lrs_plugin.data.lrs_vqa import SUBSETS

    folder.mkdir(parents=True, exist_ok=True)
    cats = SUBSETS["FAIR"]
    metrics = {f"cat_{c.replace(' ', '_')},none": 20.0 for c in cats}
    data = {
        "results": {"lrs_vqa_fair": {"aa,none": 20.0, **metrics}},
        "versions": {"lrs_vqa_fair": 1.0},
        "n-samples": {"lrs_vqa_fair": {"original": 4, "effective": 4}},
        "configs": {"lrs_vqa_fair": {"metadata": {"scoring": "exact match or WordNet path_similarity"}}},
        "config": {"model": "c2f_llava", "model_args": "pretrained=/ckpts/tiny,reducer=c2f", "limit": None},
        "lmms_eval_version": "0.7.3",
        "date": "20260102_030405",
    }
    path = folder / "20260102_030405_results.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``lrs-plugin ...`` (the console script's entry point, which catches only LrsPluginError)."""
    cmd = [sys.executable, "-c", "import sys; from lrs_plugin.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def assert_safe_message(text: str, max_len: int = 600) -> None:
    """No raw control character (ANSI escape, CR, LF, ...) and a bounded length."""
    assert len(text) <= max_len, len(text)
    assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in text), repr(text)


# ---------------------------------------------------------------- 1. cell length


def test_submit_refuses_a_10_mb_cell_and_the_file_stays_usable(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(model="first"), path)
    before = path.read_bytes()
    with pytest.raises(lb.LeaderboardError) as info:
        lb.submit(measured_row(model="second", reference="x" * TEN_MB), path)
    message = str(info.value)
    assert "reference is 10000000 characters long, the limit is 1000" in message
    assert_safe_message(message)
    assert path.read_bytes() == before
    # Everyone else can still validate and submit.
    assert lb.validate_file(path) == []
    lb.submit(measured_row(model="third"), path)
    assert [r["model"] for r in lb.read_rows(path)] == ["first", "third"]


@pytest.mark.parametrize("column", TEXT_COLUMNS)
def test_every_text_column_has_a_documented_limit(column, measured_row):
    limit = lb.MAX_LINK_CHARS if column == "results_link" else lb.MAX_CELL_CHARS
    errors = lb.validate_rows([measured_row(**{column: "a" * (limit + 1)})])
    assert any(f"{column} is {limit + 1} characters long, the limit is {limit}" in e for e in errors), errors


def test_cells_at_the_limit_are_accepted(tmp_path, measured_row):
    row = measured_row(
        model="m" * lb.MAX_CELL_CHARS,
        reference="r" * lb.MAX_CELL_CHARS,
        results_link="https://example.org/" + "p" * (lb.MAX_LINK_CHARS - 20),
    )
    assert len(row["results_link"]) == lb.MAX_LINK_CHARS
    assert lb.validate_rows([row]) == []
    lb.submit(row, tmp_path / "lb.csv")
    assert lb.read_rows(tmp_path / "lb.csv")[0]["results_link"] == row["results_link"]


def test_the_longest_paper_cell_is_far_under_the_limit():
    longest = max(len(lb.format_cell(c, r[c])) for r in lb.paper_rows() for c in COLUMN_NAMES)
    assert longest <= lb.MAX_CELL_CHARS // 5


def test_an_oversized_numeric_string_is_refused_before_parsing(measured_row):
    errors = lb.validate_rows([measured_row(tflops="1" * 5000)])
    assert any("tflops is 5000 characters long, the limit is 1000" in e for e in errors), errors


def _oversize_by_hand(path: Path, line: int, length: int) -> None:
    """Edit the file as a person would: replace one row's results_link with ``length`` characters."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace("https://example.org/results.json", "h" * length)
    path.write_text("".join(lines), encoding="utf-8")


def test_a_hand_edited_field_over_the_csv_limit_is_a_typed_error_naming_file_and_line(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(model="a", avg=40.0), path)
    lb.submit(measured_row(model="b", avg=30.0), path)
    _oversize_by_hand(path, line=3, length=CSV_FIELD_LIMIT + 10)
    (error,) = lb.validate_file(path)
    assert error.startswith(f"{path}:3: not readable as CSV (field larger than field limit")
    assert_safe_message(error)
    with pytest.raises(lb.LeaderboardError, match=r"lb\.csv:3: not readable as CSV") as info:
        lb.submit(measured_row(model="c"), path)
    assert isinstance(info.value, LrsPluginError)
    with pytest.raises(lb.LeaderboardError, match=r":3: not readable as CSV"):
        lb.read_rows(path)
    assert csv.field_size_limit() == CSV_FIELD_LIMIT  # not raised globally to read the file


def test_a_hand_edited_field_under_the_csv_limit_is_a_length_problem(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(), path)
    _oversize_by_hand(path, line=2, length=5000)
    (error,) = lb.validate_file(path)
    assert "results_link is 5000 characters long, the limit is 2048" in error
    assert_safe_message(error)


def test_any_csv_error_while_reading_is_typed(tmp_path, monkeypatch, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(), path)
    path.write_text(path.read_text() + '"a"b,c\n')
    strict = csv.reader
    monkeypatch.setattr(lb.csv, "reader", lambda f: strict(f, strict=True))
    (error,) = lb.validate_file(path)
    assert error.startswith(f"{path}:3: not readable as CSV (") and "expected after" in error


def test_unreadable_bytes_and_a_spreadsheet_bom(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(), path)
    good = path.read_bytes()
    path.write_bytes(good.replace(b"measured", b"measur\xffd", 1))
    (error,) = lb.validate_file(path)
    assert error.startswith(f"leaderboard file {path} is not UTF-8 text")
    path.write_bytes(b"\xef\xbb\xbf" + good)  # "CSV UTF-8" as a spreadsheet saves it
    assert lb.validate_file(path) == []
    lb.submit(measured_row(model="n"), path)
    assert not path.read_bytes().startswith(b"\xef\xbb\xbf")


# ---------------------------------------------------------------- 2. CSV injection


@pytest.mark.parametrize(
    ("value", "first"),
    [
        ("\t=1+1", "\t"),
        ("\r=1+1", "\r"),
        ("\tplain", "\t"),
        (" =1+1", "="),
        ("   @SUM(A1)", "@"),
        ("\u00a0+cmd", "+"),
        (" \t-2+3", "-"),
    ],
)
def test_owasp_formula_prefixes_are_refused_in_text_cells(value, first, measured_row):
    for column in ("model", "hardware", "reference"):
        errors = lb.validate_rows([measured_row(**{column: value})])
        assert any(f"{column}=" in e and "formula" in e and f"starts with {first!r}" in e for e in errors), errors


@pytest.mark.parametrize("value", ["LLaVA-Next*", "a-b", "model+x", "x=1", "user@host", " leading space", "1x H200"])
def test_ordinary_text_is_accepted(value, measured_row):
    assert lb.validate_rows([measured_row(model=value)]) == []


def test_numeric_columns_are_numbers_not_formulas(tmp_path, measured_row):
    # A numeric cell is parsed as a finite number: "=1+1" is not one, and no column takes negatives.
    assert any("mme_rw_rs='=1+1' is not a number" in e for e in lb.validate_rows([measured_row(mme_rw_rs="=1+1")]))
    assert any("tflops=-1.0 is negative" in e for e in lb.validate_rows([measured_row(tflops=-1.0)]))
    # -0.0 is zero: accepted, and written without a leading "-".
    row = measured_row(tflops=-0.0, **{"lrs_fair.count": -0.0})
    assert lb.validate_rows([row]) == []
    lb.submit(row, tmp_path / "lb.csv")
    record = next(csv.DictReader((tmp_path / "lb.csv").open(encoding="utf-8", newline="")))
    assert (record["tflops"], record["lrs_fair.count"]) == ("0", "0.00")
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in record.values())


@pytest.mark.parametrize("value", ["a\x1b[31mb", "a\tb", "a\x00b", "a\x7fb", "a\x85b", "a\u202eb", "a\u2028b"])
def test_control_characters_are_refused_in_text_cells(value, measured_row):
    errors = lb.validate_rows([measured_row(model=value)])
    assert any("contains a control character" in e or "contains a line break" in e for e in errors), errors


# ---------------------------------------------------------------- 3. messages quote user values escaped


HOSTILE = [
    "evil\nrow 2: forged message",
    "evil\r\x1b[2K",
    "\x1b[31mred\x1b[0m",
    "bell\x07",
    "nul\x00",
    "bidi\u202eoverride",
    "y" * TEN_MB,
]


@pytest.mark.parametrize("value", HOSTILE, ids=["LF", "CR", "ANSI", "BEL", "NUL", "bidi", "10MB"])
def test_every_message_quoting_a_user_value_is_escaped_and_short(value, tmp_path, measured_row):
    rows = [
        measured_row(model=value),
        measured_row(model="m2", method=value),
        measured_row(model="m3", source=value),
        measured_row(model="m4", scoring=value),
        measured_row(model="m5", date=value),
        measured_row(model="m6", config_hash=value),
        measured_row(model="m7", tflops=value),
        measured_row(model="m8", **{value: 1.0}),
        measured_row(model=value),  # duplicate key
    ]
    errors = lb.validate_rows(rows)
    assert len(errors) >= len(rows)
    for error in errors:
        assert_safe_message(error, max_len=1500)
    assert any(repr(value[:20])[1:-1] in e for e in errors)
    with pytest.raises(lb.LeaderboardError) as info:
        lb.submit(measured_row(model=value), tmp_path / "lb.csv")
    assert_safe_message(str(info.value))


def test_results_file_values_are_escaped_too(tmp_path):
    path = results_file(tmp_path / "run")
    data = json.loads(path.read_text())
    data["date"] = "2026\n\x1b[2J" + "z" * 10_000
    path.write_text(json.dumps(data))
    with pytest.raises(lb.LeaderboardError, match=r"date '2026\\n\\x1b\[2J") as info:
        lb.build_row(path)
    assert_safe_message(str(info.value))


def test_shown_escapes_and_truncates():
    assert shown("a\nb\x1b") == "'a\\nb\\x1b'"
    assert shown("x" * 100) == repr("x" * 80) + "... (100 characters)"
    assert shown(3) == "3" and shown(None) == "None"
    assert shown(list(range(1000))).endswith("...") and len(shown(list(range(1000)))) == 83


def test_the_header_of_a_hand_edited_file_is_escaped(tmp_path):
    path = tmp_path / "lb.csv"
    path.write_text('model,"\x1b[2Jbad\nname"\nx,y\n')
    (error,) = lb.validate_file(path)
    assert "header is not the schema's columns" in error and "\\x1b[2Jbad\\nname" in error
    assert_safe_message(error, max_len=3000)


# ---------------------------------------------------------------- 4. killed between temp file and replace


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from lrs_plugin.leaderboard import submit as lb

    csv_path, point, row = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    real_replace = os.replace

    def replace(src, dst):
        if point == "replace" and os.path.abspath(dst) == os.path.abspath(csv_path):
            os.kill(os.getpid(), signal.SIGKILL)  # right before the swap
        return real_replace(src, dst)

    def fsync(fd):
        if point == "fsync":
            os.kill(os.getpid(), signal.SIGKILL)  # temp file written but not yet durable
        raise AssertionError("unreachable")

    os.replace = replace
    if point == "fsync":
        os.fsync = fsync
    lb.submit(row, csv_path)
    print("survived")
    """
)


@pytest.mark.parametrize("point", ["replace", "fsync"])
def test_submit_killed_before_the_swap_leaves_the_old_file_byte_for_byte(tmp_path, point, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(model="first"), path)
    before = path.read_bytes()
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(path), point, json.dumps(measured_row(model="killed"))],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout, killed.stderr)
    assert "survived" not in killed.stdout
    assert path.read_bytes() == before
    (stale,) = tmp_path.glob(".lb.csv.*.tmp")  # the killed writer's temporary file
    if point == "replace":
        assert "killed" in stale.read_text()  # it was complete: the kill came right before the swap
    # The leftover neither breaks validate (API and CLI) ...
    assert lb.validate_file(path) == []
    done = cli("leaderboard", "validate", str(path))
    assert done.returncode == 0 and done.stdout.strip() == f"{path}: valid", done
    # ... nor blocks the next submit (the lock died with the process), which removes it.
    lb.submit(measured_row(model="second", avg=20.0), path)
    assert [r["model"] for r in lb.read_rows(path)] == ["first", "second"]
    assert list(tmp_path.glob(".lb.csv.*.tmp")) == []


def test_stale_temp_cleanup_touches_only_this_files_temps(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(), path)
    mine = tmp_path / ".lb.csv.abcd1234.tmp"
    other = tmp_path / ".other.csv.abcd1234.tmp"
    notes = tmp_path / "lb.csv.notes.tmp"
    for f in (mine, other, notes):
        f.write_text("partial")
    lb.seed(path)
    assert not mine.exists() and other.exists() and notes.exists()


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permission bits")
def test_a_rewrite_keeps_the_files_permissions(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(model="a"), path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    path.chmod(0o664)
    lb.submit(measured_row(model="b"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


# ---------------------------------------------------------------- CLI: one typed line, no traceback


def _assert_one_error_line(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert_safe_message(lines[0])
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        ("x" * 5000, ("model is 5000 characters long, the limit is 1000",)),
        ("evil\x1b[2J\nname", ("contains a line break", "\\x1b[2J\\nname")),
        ("\t=cmd|' /C calc'!A0", ("starts with '\\t'", "formula")),
    ],
    ids=["long", "ansi-newline", "tab-formula"],
)
def test_cli_bad_submit_prints_one_typed_line(tmp_path, model, fragments):
    results = results_file(tmp_path / "run")
    path = tmp_path / "lb.csv"
    done = cli("leaderboard", "submit", str(results), "--csv", str(path), "--model", model)
    _assert_one_error_line(done, *fragments)
    assert not path.exists()
    ok = cli("leaderboard", "submit", str(results), "--csv", str(path), "--model", "fine")
    assert ok.returncode == 0, ok.stderr


def test_cli_on_a_file_with_a_huge_field(tmp_path, measured_row):
    path = tmp_path / "lb.csv"
    lb.submit(measured_row(), path)
    _oversize_by_hand(path, line=2, length=TEN_MB)
    results = results_file(tmp_path / "run")
    _assert_one_error_line(cli("leaderboard", "submit", str(results), "--csv", str(path)), f"{path}:2: not readable")
    done = cli("leaderboard", "validate", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"{path}:2: not readable as CSV (field larger than field limit")
    assert done.stdout.strip() == f"{path}: invalid, 1 problem(s)"


def test_cli_os_errors_are_one_line_too(tmp_path):
    results = results_file(tmp_path / "run")
    (tmp_path / "file").write_text("not a folder")
    done = cli("leaderboard", "submit", str(results), "--csv", str(tmp_path / "file" / "lb.csv"))
    _assert_one_error_line(done, "Error", "file")  # the lock file cannot be created under a file
    (tmp_path / "folder.csv").mkdir()
    done = cli("leaderboard", "submit", str(results), "--csv", str(tmp_path / "folder.csv"))
    _assert_one_error_line(done, "folder.csv is not readable")
    _assert_one_error_line(cli("leaderboard", "submit", str(tmp_path / "missing.json")), "does not exist")
