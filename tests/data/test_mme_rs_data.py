"""MME-RealWorld-RS data: fetch (local shards, faked Hub), filtering, image cache, errors, docs and prompts."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lrs_plugin.data import _hub, _mme_prepare
from lrs_plugin.data import mme_realworld_rs as mme
from lrs_plugin.data.synthetic.mme_realworld_rs import DEFAULT_ROWS_PER_CATEGORY, write_mme_parquet
from lrs_plugin.errors import ConfigError, DatasetIntegrityError, DatasetNotFoundError, DatasetSchemaError

DOC_KEYS = {"question_id", "index", "question", "options", "answer", "category", "image", "image_path", "image_error"}


# ------------------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def shards(tmp_path) -> Path:
    """A fresh copy of the generated shards (``<dir>/data/train-*.parquet``), safe to edit."""
    write_mme_parquet(tmp_path / "src", seed=0)
    return tmp_path / "src"


def _all_rows(source: Path) -> list[dict]:
    return [r for p in sorted(source.rglob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _rs_rows(source: Path) -> list[dict]:
    return [r for r in _all_rows(source) if r["category"] == mme.RS_CATEGORY]


def _edit_shard(path: Path, edit) -> None:
    """Rewrite one shard after ``edit(rows)`` changed its rows in place (schema and row groups kept)."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path, row_group_size=3)


def _annotations(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / mme.ANNOTATIONS_NAME).read_text().splitlines()]


def _marker(root: Path) -> dict:
    return json.loads((root / mme.MARKER_NAME).read_text())


class _FakeDownload:
    """Stands in for ``_hub.snapshot_download``: copies the generated shards into ``local_dir``."""

    def __init__(self, source: Path | None, sha: str | None = None) -> None:
        self.source, self.sha, self.calls = source, sha, []

    def __call__(self, repo_id, *, revision, local_dir, allow_patterns=None, repo_type="dataset"):
        self.calls.append(
            {"repo_id": repo_id, "revision": revision, "local_dir": Path(local_dir), "allow": allow_patterns}
        )
        local_dir = Path(local_dir)
        (local_dir / "data").mkdir(parents=True, exist_ok=True)
        for shard in sorted((self.source / "data").glob("*.parquet")) if self.source else []:
            shutil.copy(shard, local_dir / "data" / shard.name)
            if self.sha:  # what huggingface_hub records next to a local_dir download
                meta = local_dir / ".cache" / "huggingface" / "download" / "data" / f"{shard.name}.metadata"
                meta.parent.mkdir(parents=True, exist_ok=True)
                meta.write_text(f"{self.sha}\netag\n1700000000.0\n")
        return local_dir


# -------------------------------------------------------------------------------------------------------- fetch
def test_fetch_from_source_dir_keeps_only_rs_rows(shards, tmp_path):
    root = mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)
    rows = _annotations(root)
    expected = _rs_rows(shards)
    assert len(_all_rows(shards)) > len(expected)  # the fixture has rows to drop
    assert [r["index"] for r in rows] == [r["index"] for r in expected]
    assert all(r["question_id"] == str(r["index"]) for r in rows)
    counts = {c: sum(r["category"] == c for r in rows) for c in mme.L2_CATEGORIES}
    assert counts == DEFAULT_ROWS_PER_CATEGORY
    marker = _marker(root)
    assert marker["rows"] == sum(DEFAULT_ROWS_PER_CATEGORY.values())
    assert marker["rows_per_category"] == DEFAULT_ROWS_PER_CATEGORY
    assert marker["shards"] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert marker["repo_id"] == mme.REPO_ID and marker["revision"] == mme.MME_REVISION
    assert marker["resolved_sha"] is None and marker["source"].startswith("local:")
    assert not (root / ".prepare.tmp").exists()
    by_index = {r["index"]: r for r in expected}
    for row in rows:
        source = by_index[row["index"]]
        assert row["options"] == source["multi-choice options"]
        assert (row["question"], row["answer"], row["category"]) == (
            source["question"],
            source["answer"],
            source["l2-category"],
        )


def test_fetch_from_hub_then_noop_until_revision_or_force(shards, tmp_path, monkeypatch):
    fake = _FakeDownload(shards, sha="a" * 40)
    monkeypatch.setattr(_hub, "snapshot_download", fake)
    root = tmp_path / "root"
    assert mme.fetch(root, expected_rows=None, progress=False) == root
    assert fake.calls == [
        {"repo_id": mme.REPO_ID, "revision": "main", "local_dir": root / "shards", "allow": ["data/train-*.parquet"]}
    ]
    assert _marker(root)["resolved_sha"] == "a" * 40 and _marker(root)["source"] == "hub"
    before = (root / mme.MARKER_NAME).read_text()

    mme.fetch(root, expected_rows=None, progress=False)
    assert len(fake.calls) == 1 and (root / mme.MARKER_NAME).read_text() == before

    mme.fetch(root, expected_rows=None, progress=False, force=True)
    mme.fetch(root, revision="b" * 40, expected_rows=None, progress=False)
    assert [c["revision"] for c in fake.calls] == ["main", "main", "b" * 40]
    assert _marker(root)["revision"] == "b" * 40


def test_fetch_default_root(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("LRS_PLUGIN_HOME", str(tmp_path / "home"))
    root = mme.fetch(source_dir=shards, expected_rows=None, progress=False)
    assert root == tmp_path / "home" / "mmerealworld_rs"
    assert mme.resolve_root() == root


def test_progress_lines_go_to_stderr(shards, tmp_path, capsys):
    mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "shard 1/2 train-00000-of-00002.parquet" in err and "shard 2/2" in err


def test_images_decoded_once_and_deduplicated(shards, tmp_path, monkeypatch):
    calls = []
    real = _mme_prepare._store_image
    monkeypatch.setattr(_mme_prepare, "_store_image", lambda b64, staging: calls.append(b64) or real(b64, staging))
    root = mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)

    rs = _rs_rows(shards)
    assert len(calls) == len({r["bytes"] for r in rs}) < len(rs)  # one decode per distinct base64 text
    files = sorted((root / "images").iterdir())
    assert len(files) == 4  # 4 distinct RS pictures (non-RS pictures are not written)
    for path in files:
        assert path.stem == hashlib.sha1(path.read_bytes()).hexdigest()
        assert path.suffix in {".png", ".jpg"}
        assert path.read_bytes()[:4] in {b"\x89PNG", b"\xff\xd8\xff\xe0"}
    rows = _annotations(root)
    used = [r["image"] for r in rows if r["image"]]
    assert len(used) > len(set(used)) and {root / p for p in used} == set(files)
    for row in rows:
        if row["image"]:
            source = next(r for r in rs if r["index"] == row["index"])
            assert (root / row["image"]).read_bytes() == base64.b64decode(source["bytes"])
    assert _marker(root)["images"] == 4


def test_bytes_read_only_for_row_groups_with_rs_rows(shards, tmp_path, monkeypatch):
    rs_groups = set()
    for path in sorted((shards / "data").glob("*.parquet")):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            if mme.RS_CATEGORY in parquet.read_row_group(group, columns=["category"]).column(0).to_pylist():
                rs_groups.add((path.name, group))
    reads = []

    class SpyParquetFile(pq.ParquetFile):
        def __init__(self, source, *args, **kwargs):
            super().__init__(source, *args, **kwargs)
            self.spy_name = Path(source).name

        def read_row_group(self, i, columns=None, **kwargs):
            reads.append((self.spy_name, i, tuple(columns or ())))
            return super().read_row_group(i, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", SpyParquetFile)
    mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)

    assert reads and all(cols for _, _, cols in reads), "every read must project columns"
    with_bytes = {(name, i) for name, i, cols in reads if "bytes" in cols}
    all_groups = {(name, i) for name, i, _ in reads}
    assert with_bytes == rs_groups and with_bytes < all_groups  # some row group was never read in full


def test_broken_images_are_recorded_not_fatal(shards, tmp_path):
    data = sorted((shards / "data").glob("*.parquet"))

    def spoil(rows):  # invalid base64 text, junk bytes, no bytes at all
        rs = [r for r in rows if r["category"] == mme.RS_CATEGORY]
        rs[0]["bytes"] = "%%%not-base64%%"
        rs[1]["bytes"] = base64.b64encode(b"plain text, not a picture").decode()
        rs[2]["bytes"] = None

    _edit_shard(data[1], spoil)
    root = mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)
    broken = {r["index"]: r["image_error"] for r in _annotations(root) if r["image"] is None}
    assert len(broken) == 4  # the generator's truncated PNG + the three above
    errors = sorted(broken.values())
    assert any("undecodable image" in e for e in errors)
    assert any("invalid base64" in e for e in errors)
    assert any("unrecognised image format" in e for e in errors)
    assert any("null" in e for e in errors)
    assert _marker(root)["image_errors"] == 4
    docs = {d["index"]: d for d in mme.build_docs(root)}
    for index, error in broken.items():
        assert docs[index]["image_path"] is None and docs[index]["image_error"] == error
    assert sum(d["image_error"] is None for d in docs.values()) == len(docs) - 4


def test_expected_rows_mismatch_names_observed_and_expected(shards, tmp_path):
    root = tmp_path / "root"
    with pytest.raises(DatasetIntegrityError) as info:
        mme.fetch(root, source_dir=shards, progress=False)
    message = str(info.value)
    assert "observed 15 Remote Sensing rows (color 5, count 4, position 6), expected 3738" in message
    assert "color 1255, count 1226, position 1257" in message and "expected_rows=None" in message
    assert not (root / mme.MARKER_NAME).exists() and not (root / mme.ANNOTATIONS_NAME).exists()
    assert not (root / ".prepare.tmp").exists()
    with pytest.raises(DatasetIntegrityError, match="observed 15 .*expected 14"):
        mme.fetch(root, source_dir=shards, expected_rows=14, progress=False)
    assert mme.fetch(root, source_dir=shards, expected_rows=15, progress=False) == root


def test_no_rs_rows_is_an_error(tmp_path):
    write_mme_parquet(tmp_path / "src", rows_per_category={}, broken_image=False)
    with pytest.raises(DatasetIntegrityError, match="no 'Perception/Remote Sensing' rows"):
        mme.fetch(tmp_path / "root", source_dir=tmp_path / "src", expected_rows=None, progress=False)


def test_missing_shards(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        mme.fetch(tmp_path / "root", source_dir=tmp_path / "nowhere", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"no \*\.parquet shard"):
        mme.fetch(tmp_path / "root", source_dir=tmp_path / "empty", progress=False)
    monkeypatch.setattr(_hub, "snapshot_download", _FakeDownload(None))
    with pytest.raises(DatasetNotFoundError, match=r"no shard matching 'data/train-\*\.parquet'.*revision 'main'"):
        mme.fetch(tmp_path / "root", progress=False)
    assert not (tmp_path / "root" / mme.MARKER_NAME).exists()


def test_duplicate_index_is_named(shards, tmp_path):
    data = sorted((shards / "data").glob("*.parquet"))
    first = next(r for r in pq.read_table(data[0]).to_pylist() if r["category"] == mme.RS_CATEGORY)

    def clash(rows):
        next(r for r in rows if r["category"] == mme.RS_CATEGORY)["index"] = first["index"]

    _edit_shard(data[1], clash)
    with pytest.raises(DatasetIntegrityError, match=f"duplicate MME-RealWorld RS index {first['index']} "):
        mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("answer", "F", "answer 'F' is not one of A, B, C, D, E"),
        ("l2-category", "shape", "unknown l2-category 'shape'; valid: color, count, position"),
    ],
)
def test_bad_rs_values_are_named(shards, tmp_path, field, value, message):
    def spoil(rows):
        next(r for r in rows if r["category"] == mme.RS_CATEGORY)[field] = value

    _edit_shard(sorted((shards / "data").glob("*.parquet"))[0], spoil)
    with pytest.raises(DatasetSchemaError, match=message):
        mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)


def test_missing_column_is_named(shards, tmp_path):
    path = sorted((shards / "data").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(path).drop_columns(["answer"]), path)
    with pytest.raises(DatasetSchemaError, match=r"lacks columns \['answer'\]"):
        mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)


def test_interrupted_preparation_leaves_nothing_marked(shards, tmp_path, monkeypatch):
    root = tmp_path / "root"

    def crash(b64, staging):
        raise KeyboardInterrupt

    monkeypatch.setattr(_mme_prepare, "_store_image", crash)
    with pytest.raises(KeyboardInterrupt):
        mme.fetch(root, source_dir=shards, expected_rows=None, progress=False)
    assert sorted(p.name for p in root.iterdir()) == [".mmerealworld_rs.lock"]
    monkeypatch.undo()
    assert len(mme.build_docs(mme.fetch(root, source_dir=shards, expected_rows=None, progress=False))) == 15


# ------------------------------------------------------------------------------------------------ resolve, docs
def test_resolve_root_explicit_env_and_missing(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("LRS_PLUGIN_HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFoundError) as info:
        mme.resolve_root()
    assert "lrs-plugin fetch mmerealworld_rs" in str(info.value) and "MME_RW_RS_ROOT" in str(info.value)

    root = mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)
    assert mme.resolve_root(root) == root
    monkeypatch.setenv("MME_RW_RS_ROOT", str(root))
    assert mme.resolve_root() == root
    monkeypatch.setenv("MME_RW_RS_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match=r"\$MME_RW_RS_ROOT .*elsewhere.* holds no annotations.jsonl"):
        mme.resolve_root()
    with pytest.raises(DatasetNotFoundError, match="holds no annotations.jsonl"):
        mme.resolve_root(tmp_path / "elsewhere")


def test_build_docs_keys_and_types(shards, tmp_path):
    root = mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)
    docs = mme.build_docs(root)
    assert len(docs) == 15
    for doc in docs:
        assert set(doc) == DOC_KEYS
        assert isinstance(doc["question_id"], str) and isinstance(doc["index"], int)
        assert isinstance(doc["options"], list) and all(isinstance(o, str) for o in doc["options"])
        assert doc["answer"] in "ABCDE" and doc["category"] in mme.L2_CATEGORIES
        if doc["image"] is not None:
            assert Path(doc["image_path"]).is_absolute() and Path(doc["image_path"]).is_file()
            assert doc["image_error"] is None


def test_build_docs_names_the_malformed_line(shards, tmp_path):
    root = mme.fetch(tmp_path / "root", source_dir=shards, expected_rows=None, progress=False)
    path = root / mme.ANNOTATIONS_NAME
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], "{not json", *lines[3:]]) + "\n")
    with pytest.raises(DatasetSchemaError, match=r"annotations\.jsonl:3: not a JSON object"):
        mme.build_docs(root)
    bad = json.loads(lines[0]) | {"category": "shape"}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DatasetSchemaError, match=r":1: unknown category 'shape'; valid: color, count, position"):
        mme.build_docs(root)
    path.write_text(json.dumps({k: v for k, v in json.loads(lines[0]).items() if k != "index"}) + "\n")
    with pytest.raises(DatasetSchemaError, match=r":1: field 'index' must be int, got None"):
        mme.build_docs(root)
    with pytest.raises(DatasetNotFoundError):
        mme.build_docs(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------------ prompts
_DOC = {"question": "What color is the roof?", "options": ["(A) Red", "(B) Gray", "(C) Blue", "(D) White", "(E) Black"]}
_OPTIONS = "(A) Red\n(B) Gray\n(C) Blue\n(D) White\n(E) Black"
_LETTERS = "Respond with only the letter (A, B, C, D, or E) of the correct option."


def test_paper_prompt_snapshot():
    # LRS-VQA-Code/llava/eval/model_vqa_mme_realworld.py: f"{q + ' The choices are listed below: \n'}\n{choices}"
    assert mme.build_prompt(_DOC) == (
        "What color is the roof? The choices are listed below: \n\n"
        + _OPTIONS
        + "\nSelect the best answer to the above multiple-choice question based on the image. "
        + _LETTERS
    )


def test_lmms_eval_prompt_snapshot_and_parity():
    expected = (
        "What color is the roof? The choices are listed below:\n"
        + _OPTIONS
        + "\nSelect the best answer to the above multiple-choice question based on the image. "
        + _LETTERS
        + "\nThe best answer is: "
    )
    assert mme.build_prompt(_DOC, style="lmms_eval") == expected
    # the installed lmms-eval's own function, loaded from its file (importing lmms_eval.tasks takes seconds)
    spec = importlib.util.find_spec("lmms_eval")
    path = Path(spec.origin).parent / "tasks" / "mme_realworld" / "utils.py"
    module_spec = importlib.util.spec_from_file_location("_lmms_mme_utils", path)
    utils = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(utils)
    lmms_doc = {"question": _DOC["question"], "multi-choice options": _DOC["options"]}
    assert utils.mme_realworld_doc_to_text(lmms_doc) == expected


def test_unknown_prompt_style():
    with pytest.raises(ConfigError, match="unknown MME-RealWorld-RS prompt style 'chat'; valid: paper, lmms_eval"):
        mme.build_prompt(_DOC, style="chat")
