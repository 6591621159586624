"""LRS-VQA data: volume checks, safe extraction, every fetch state, the question reader and the generator.

The Hub is never touched: ``lrs_plugin.data._hub`` is replaced by :class:`FakeHub`, which serves generated volumes.
"""

from __future__ import annotations

import filecmp
import fnmatch
import io
import json
import os
import re
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path

import py7zr
import pytest
from PIL import Image

import lrs_plugin.data._hub
from lrs_plugin.data import archive, lrs_vqa
from lrs_plugin.data._hub import RemoteFile
from lrs_plugin.data.synthetic.lrs_vqa import (
    BOMB_SIDE,
    COUNT_SUFFIX,
    NONCOUNT_SUFFIX,
    write_lrs_vqa,
    write_lrs_vqa_archive,
)
from lrs_plugin.errors import (
    ArchiveCorruptError,
    ArchivePartError,
    ConfigError,
    DatasetIntegrityError,
    DatasetNotFoundError,
    DatasetSchemaError,
    UnsafeArchiveError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
HAS_7Z = any(shutil.which(name) for name in archive.BINARY_NAMES)
EXTRACTORS = [
    "py7zr",
    pytest.param("7z", marks=pytest.mark.skipif(not HAS_7Z, reason="no 7zz/7z/7za on PATH")),
]


# ------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="session")
def volumes(lrs_vqa_tree, tmp_path_factory) -> list[Path]:
    return write_lrs_vqa_archive(lrs_vqa_tree, tmp_path_factory.mktemp("volumes"), num_parts=3)


@pytest.fixture(scope="session")
def remote_files(volumes) -> list[RemoteFile]:
    listing = [RemoteFile(v.name, v.stat().st_size, archive.sha256_file(v)) for v in volumes]
    return [RemoteFile(".gitattributes", 3120, None), RemoteFile("README.md", 1200, None), *listing]


class FakeHub:
    """Stands in for ``lrs_plugin.data._hub``: lists ``files`` and copies them from ``source``."""

    def __init__(self, source: Path, files: list[RemoteFile], skip: tuple[str, ...] = ()) -> None:
        self.source, self.files, self.skip = source, files, skip
        self.listed: list[str] = []
        self.downloads: list[dict] = []

    def list_remote_files(self, repo_id, *, revision, repo_type="dataset"):
        assert repo_id == lrs_vqa.REPO_ID
        self.listed.append(revision)
        return SHA, list(self.files)

    def snapshot_download(self, repo_id, *, revision, local_dir, allow_patterns=None, repo_type="dataset"):
        self.downloads.append({"revision": revision, "local_dir": Path(local_dir), "allow_patterns": allow_patterns})
        local_dir = Path(local_dir)
        cache = local_dir / ".cache" / "huggingface" / "download"
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "LRS_VQA.7z.002.incomplete").write_bytes(b"half a volume")  # what hf leaves mid-download
        for path in sorted(self.source.iterdir()):
            if path.name in self.skip or not any(fnmatch.fnmatch(path.name, p) for p in allow_patterns or ["*"]):
                continue
            shutil.copy2(path, local_dir / path.name)
        return local_dir


@pytest.fixture
def fake_hub(monkeypatch, volumes, remote_files) -> FakeHub:
    hub = FakeHub(volumes[0].parent, remote_files)
    monkeypatch.setattr(lrs_plugin.data._hub, "list_remote_files", hub.list_remote_files)
    monkeypatch.setattr(lrs_plugin.data._hub, "snapshot_download", hub.snapshot_download)
    return hub


@pytest.fixture
def no_hub(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Hub must not be called")

    monkeypatch.setattr(lrs_plugin.data._hub, "list_remote_files", refuse)
    monkeypatch.setattr(lrs_plugin.data._hub, "snapshot_download", refuse)


def copy_volumes(volumes: list[Path], dest: Path, skip: tuple[str, ...] = ()) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for v in volumes:
        if v.name not in skip:
            shutil.copy2(v, dest / v.name)
    return dest


def assert_same_tree(a: Path, b: Path) -> None:
    left = sorted(p.relative_to(a).as_posix() for p in a.rglob("*"))
    right = sorted(p.relative_to(b).as_posix() for p in b.rglob("*"))
    assert left == right
    files = [p for p in left if (a / p).is_file()]
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors


def assert_nothing_installed(root: Path) -> None:
    assert not (root / lrs_vqa.MARKER_NAME).exists()
    assert not list(root.glob(archive.PARTIAL_PREFIX + "*"))


def split(data: bytes, dest: Path, parts: int) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // parts)
    out = []
    for i in range(parts):
        path = dest / f"LRS_VQA.7z.{i + 1:03d}"
        path.write_bytes(data[i * size : (i + 1) * size])
        out.append(path)
    return out


def crafted_archive(dest: Path, stored_name: str) -> list[Path]:
    """A 2-volume 7z whose second member is named ``stored_name`` (py7zr refuses to write such names, so a
    same-length placeholder is written and patched in the uncompressed header, whose CRCs are then fixed)."""
    placeholder = "X" * len(stored_name)
    buffer = io.BytesIO()
    with py7zr.SevenZipFile(buffer, "w", filters=[{"id": py7zr.FILTER_COPY}]) as z:
        z.set_encoded_header_mode(False)
        z.writestr(b'{"question_id": "x"}\n', "LRS_VQA/LRS_VQA_merged.jsonl")
        z.writestr(b"evil", placeholder)
    data = bytearray(buffer.getvalue())
    old, new = placeholder.encode("utf-16-le"), stored_name.encode("utf-16-le")
    at = data.index(old)
    data[at : at + len(old)] = new
    offset, size = struct.unpack_from("<QQ", data, 12)
    struct.pack_into("<I", data, 28, zlib.crc32(data[32 + offset : 32 + offset + size]))
    struct.pack_into("<I", data, 8, zlib.crc32(bytes(data[12:32])))
    return split(bytes(data), dest, 2)


def symlink_archive(dest: Path, work: Path) -> list[Path]:
    (work / "LRS_VQA").mkdir(parents=True)
    (work / "LRS_VQA" / "LRS_VQA_merged.jsonl").write_text("{}\n")
    os.symlink("/etc/passwd", work / "LRS_VQA" / "link")
    buffer = io.BytesIO()
    with py7zr.SevenZipFile(buffer, "w", filters=[{"id": py7zr.FILTER_COPY}]) as z:
        z.write(work / "LRS_VQA" / "LRS_VQA_merged.jsonl", "LRS_VQA/LRS_VQA_merged.jsonl")
        z.write(work / "LRS_VQA" / "link", "LRS_VQA/link")
    return split(buffer.getvalue(), dest, 2)


def read_rows(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / lrs_vqa.QUESTION_FILE).read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------------------------------
# Volumes


def test_find_volumes_uses_an_explicit_numbered_list(volumes, tmp_path):
    folder = copy_volumes(volumes, tmp_path / "v")
    for stray in ("LRS_VQA.7z.001.incomplete", "LRS_VQA.7z.002.aria2", "LRS_VQA.7z.md5", "LRS_VQA.7z.0004"):
        (folder / stray).write_bytes(b"junk")
    assert [p.name for p in archive.find_volumes(folder)] == ["LRS_VQA.7z.001", "LRS_VQA.7z.002", "LRS_VQA.7z.003"]
    assert len(archive.find_volumes(folder, expected_count=3)) == 3


def test_find_volumes_names_missing_and_unexpected_volumes(volumes, tmp_path):
    gap = copy_volumes(volumes, tmp_path / "gap", skip=("LRS_VQA.7z.002",))
    with pytest.raises(ArchivePartError, match=r"missing volume\(s\) LRS_VQA\.7z\.002"):
        archive.find_volumes(gap)
    full = copy_volumes(volumes, tmp_path / "full")
    with pytest.raises(ArchivePartError, match=r"LRS_VQA\.7z\.004, LRS_VQA\.7z\.005"):
        archive.find_volumes(full, expected_count=5)
    with pytest.raises(ArchivePartError, match=r"3 volumes .* 2 are expected; unexpected: LRS_VQA\.7z\.003"):
        archive.find_volumes(full, expected_count=2)
    with pytest.raises(ArchivePartError, match="no volume LRS_VQA.7z.001"):
        archive.find_volumes(tmp_path)
    with pytest.raises(ArchivePartError, match="does not exist"):
        archive.find_volumes(tmp_path / "nowhere")


def test_verify_volumes_checks_sizes_and_hashes(volumes, remote_files, tmp_path):
    expected = {f.path: (f.size, f.sha256) for f in remote_files if f.path.startswith("LRS_VQA.7z.")}
    archive.verify_volumes(volumes, expected)
    archive.verify_volumes(volumes, None)
    folder = copy_volumes(volumes, tmp_path / "v")
    middle = folder / "LRS_VQA.7z.002"
    middle.write_bytes(middle.read_bytes()[:-10])
    with pytest.raises(ArchivePartError, match=r"LRS_VQA\.7z\.002 has \d+ bytes, expected \d+"):
        archive.verify_volumes(archive.find_volumes(folder), expected)
    with pytest.raises(ArchivePartError, match=r"LRS_VQA\.7z\.002 has \d+ bytes but every volume before the last"):
        archive.verify_volumes(archive.find_volumes(folder), None)
    shutil.copy2(volumes[1], middle)
    last = folder / "LRS_VQA.7z.003"
    last.write_bytes(last.read_bytes() + b"x" * (volumes[0].stat().st_size))
    with pytest.raises(ArchivePartError, match=r"last volume LRS_VQA\.7z\.003 .* more than"):
        archive.verify_volumes(archive.find_volumes(folder), None)
    with pytest.raises(ArchivePartError, match=r"missing volume\(s\) LRS_VQA\.7z\.004"):
        archive.verify_volumes(volumes, {**expected, "LRS_VQA.7z.004": (None, None)})


def test_concatenated_reader_is_one_seekable_stream(tmp_path):
    chunks = [b"abcdefg", b"hijklmn", b"opq"]
    paths = []
    for i, chunk in enumerate(chunks):
        paths.append(tmp_path / f"x.{i}")
        paths[-1].write_bytes(chunk)
    whole = b"".join(chunks)
    with archive.ConcatenatedReader(paths) as reader:
        assert reader.readable() and reader.seekable() and not reader.writable()
        assert reader.read() == whole
        assert reader.tell() == len(whole) and reader.read(5) == b""
        assert reader.seek(5) == 5 and reader.read(6) == whole[5:11]
        assert reader.current_volume == paths[1]
        assert reader.seek(-4, io.SEEK_END) == len(whole) - 4 and reader.read(100) == whole[-4:]
        reader.seek(2)
        assert reader.seek(3, io.SEEK_CUR) == 5
        buf = bytearray(9)
        assert reader.readinto(buf) == 9 and bytes(buf) == whole[5:14]
        with pytest.raises(ValueError, match="negative"):
            reader.seek(-1)
    assert reader.closed
    buffered = io.BufferedReader(archive.ConcatenatedReader(paths), 4)
    assert buffered.read(3) == b"abc" and buffered.read() == whole[3:]


def test_resolve_extractor(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown extractor 'zip'; valid: auto, 7z, py7zr"):
        archive.resolve_extractor("zip")
    assert archive.resolve_extractor("py7zr") == ("py7zr", None)
    monkeypatch.setattr(archive.shutil, "which", lambda name: None)
    assert archive.resolve_extractor("auto") == ("py7zr", None)
    with pytest.raises(ConfigError, match="7zz, 7z, 7za"):
        archive.resolve_extractor("7z")
    monkeypatch.setattr(archive.shutil, "which", lambda name: f"/opt/bin/{name}" if name == "7za" else None)
    assert archive.resolve_extractor("auto") == ("7z", "/opt/bin/7za")


@pytest.mark.skipif(not HAS_7Z, reason="no 7zz/7z/7za on PATH")
def test_binary_and_py7zr_list_the_same_members(volumes):
    assert archive.list_members(volumes, "7z") == archive.list_members(volumes, "py7zr")


@pytest.mark.parametrize(
    "name",
    ["/etc/evil.txt", "../evil.txt", "LRS_VQA/../../evil.txt", "C:/evil.txt", "C:evil.txt", "..\\evil.txt", ""],
)
def test_check_members_refuses_escaping_names(name, tmp_path):
    with pytest.raises(UnsafeArchiveError, match="archive member"):
        archive.check_members([archive.ArchiveMember(name, "file")], tmp_path)


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "other"])
def test_check_members_refuses_links(kind, tmp_path):
    with pytest.raises(UnsafeArchiveError, match=rf"'LRS_VQA/x' is a {kind}"):
        archive.check_members([archive.ArchiveMember("LRS_VQA/x", kind)], tmp_path)


def test_check_members_accepts_plain_names(tmp_path):
    members = [archive.ArchiveMember("LRS_VQA", "dir"), archive.ArchiveMember("LRS_VQA/a..b/x.png", "file")]
    archive.check_members(members, tmp_path)


# ------------------------------------------------------------------------------------------------------------------
# Extraction


@pytest.mark.parametrize("extractor", EXTRACTORS)
@pytest.mark.parametrize("stored_name", ["../evil.txt", "/tmp/evil.txt"])
def test_member_escaping_the_target_is_refused_before_writing(extractor, stored_name, tmp_path):
    parts = crafted_archive(tmp_path / "parts", stored_name)
    target = tmp_path / "deep" / "target"
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(stored_name))):
        archive.extract(parts, target, extractor=extractor, progress=False)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "deep" / "evil.txt").exists()


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_symlink_member_is_refused(extractor, tmp_path):
    parts = symlink_archive(tmp_path / "parts", tmp_path / "work")
    with pytest.raises(UnsafeArchiveError, match="'LRS_VQA/link' is a symlink"):
        archive.extract(parts, tmp_path / "target", extractor=extractor, progress=False)
    assert list((tmp_path / "target").iterdir()) == []


def test_fetch_refuses_an_escaping_member(no_hub, tmp_path):
    parts = crafted_archive(tmp_path / "parts", "../evil.txt")
    root = tmp_path / "root"
    with pytest.raises(UnsafeArchiveError, match="'../evil.txt'"):
        lrs_vqa.fetch(root, parts_dir=parts[0].parent, extractor="py7zr", progress=False)
    assert_nothing_installed(root)
    assert not (tmp_path / "evil.txt").exists() and not (root / "LRS_VQA").exists()


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_extract_reports_progress_on_stderr(extractor, volumes, tmp_path, capsys):
    out = archive.extract(volumes, tmp_path, extractor=extractor, progress=True)
    assert out.parent == tmp_path and out.name.startswith(archive.PARTIAL_PREFIX)
    captured = capsys.readouterr()
    assert captured.out == "" and "extracting with" in captured.err
    assert (out / lrs_vqa.QUESTION_FILE).is_file()


# ------------------------------------------------------------------------------------------------------------------
# Fetch states


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_fetch_complete_from_hub_then_noop(extractor, fake_hub, lrs_vqa_tree, volumes, tmp_path):
    root = tmp_path / "root"
    assert lrs_vqa.fetch(root, extractor=extractor, progress=False) == root
    assert fake_hub.listed == ["main"]
    assert fake_hub.downloads == [{"revision": SHA, "local_dir": root / "parts", "allow_patterns": ["LRS_VQA.7z.*"]}]
    assert_same_tree(lrs_vqa_tree / "LRS_VQA", root / "LRS_VQA")
    marker_path = root / lrs_vqa.MARKER_NAME
    marker = json.loads(marker_path.read_text())
    assert marker["repo"] == "ll-13/LRS-VQA" and marker["revision"] == "main" and marker["sha"] == SHA
    assert marker["extractor"] == extractor
    assert [(p["name"], p["size"], p["sha256"]) for p in marker["parts"]] == [
        (v.name, v.stat().st_size, archive.sha256_file(v)) for v in volumes
    ]
    assert {"completed_utc", "plugin_version"} <= set(marker)
    before = marker_path.read_bytes()
    assert lrs_vqa.fetch(root, extractor=extractor, progress=False) == root
    assert len(fake_hub.listed) == 1 and len(fake_hub.downloads) == 1
    assert marker_path.read_bytes() == before
    assert not list(root.glob(archive.PARTIAL_PREFIX + "*"))


def test_fetch_other_revision_or_force_fetches_again(fake_hub, tmp_path):
    root = tmp_path / "root"
    lrs_vqa.fetch(root, extractor="py7zr", progress=False)
    lrs_vqa.fetch(root, revision="v2", extractor="py7zr", progress=False)
    assert fake_hub.listed == ["main", "v2"]
    assert json.loads((root / lrs_vqa.MARKER_NAME).read_text())["revision"] == "v2"
    lrs_vqa.fetch(root, revision="v2", extractor="py7zr", progress=False, force=True)
    assert fake_hub.listed == ["main", "v2", "v2"]


def test_fetch_parts_only_from_parts_dir(no_hub, lrs_vqa_tree, volumes, tmp_path, capsys):
    root = tmp_path / "root"
    assert lrs_vqa.fetch(root, parts_dir=volumes[0].parent, extractor="py7zr", progress=True) == root
    assert_same_tree(lrs_vqa_tree / "LRS_VQA", root / "LRS_VQA")
    marker = json.loads((root / lrs_vqa.MARKER_NAME).read_text())
    assert marker["revision"] == "local" and marker["sha"] is None
    assert [p["sha256"] for p in marker["parts"]] == [None, None, None]
    captured = capsys.readouterr()
    assert captured.out == "" and "extracting 3 volumes" in captured.err
    lrs_vqa.fetch(root, parts_dir=volumes[0].parent, progress=False)  # no-op: same "local" revision


def test_fetch_default_root_and_resolve_root(no_hub, volumes, tmp_path, monkeypatch):
    monkeypatch.setenv("LRS_PLUGIN_HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFoundError, match="lrs-plugin fetch lrs_vqa"):
        lrs_vqa.resolve_root()
    root = lrs_vqa.fetch(parts_dir=volumes[0].parent, extractor="py7zr", progress=False)
    assert root == tmp_path / "home" / "lrs_vqa"
    assert lrs_vqa.resolve_root() == root.resolve()


def test_missing_part_is_named(fake_hub, volumes, tmp_path):
    fake_hub.skip = ("LRS_VQA.7z.002",)
    root = tmp_path / "root"
    with pytest.raises(ArchivePartError, match=r"LRS_VQA\.7z\.002"):
        lrs_vqa.fetch(root, progress=False)
    assert_nothing_installed(root)
    parts = copy_volumes(volumes, tmp_path / "parts", skip=("LRS_VQA.7z.002",))
    with pytest.raises(ArchivePartError, match=r"missing volume\(s\) LRS_VQA\.7z\.002"):
        lrs_vqa.fetch(tmp_path / "root2", parts_dir=parts, progress=False)


def test_missing_last_part_with_hub_listing_is_named(fake_hub, tmp_path):
    fake_hub.skip = ("LRS_VQA.7z.003",)
    with pytest.raises(ArchivePartError, match=r"LRS_VQA\.7z\.003"):
        lrs_vqa.fetch(tmp_path / "root", progress=False)


def test_corrupted_part_with_hub_hash_is_named(fake_hub, remote_files, tmp_path):
    fake_hub.files = [RemoteFile(f.path, f.size, "f" * 64) if f.path == "LRS_VQA.7z.002" else f for f in remote_files]
    root = tmp_path / "root"
    with pytest.raises(ArchivePartError, match=r"LRS_VQA\.7z\.002 has sha256 [0-9a-f]{64}, expected f{64}"):
        lrs_vqa.fetch(root, progress=False)
    assert_nothing_installed(root)
    assert not (root / "LRS_VQA").exists()


def test_truncated_part_with_hub_size_is_named(fake_hub, remote_files, tmp_path):
    fake_hub.files = [RemoteFile(f.path, (f.size or 0) + 1, f.sha256) for f in remote_files]
    with pytest.raises(ArchivePartError, match=r"LRS_VQA\.7z\.001 has \d+ bytes, expected \d+"):
        lrs_vqa.fetch(tmp_path / "root", progress=False)


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_flipped_byte_without_known_hashes_is_archive_corrupt(extractor, no_hub, volumes, tmp_path):
    parts = copy_volumes(volumes, tmp_path / "parts")
    data = bytearray(b"".join(v.read_bytes() for v in volumes))
    needle = b'{"question_id": "FAIR_1"'
    at = data.index(needle) + 5
    size = volumes[0].stat().st_size
    volume = parts / volumes[at // size].name
    raw = bytearray(volume.read_bytes())
    raw[at % size] ^= 0xFF
    volume.write_bytes(raw)
    root = tmp_path / "root"
    with pytest.raises(ArchiveCorruptError, match="LRS_VQA_merged.jsonl"):
        lrs_vqa.fetch(root, parts_dir=parts, extractor=extractor, progress=False)
    assert_nothing_installed(root)
    assert not (root / "LRS_VQA").exists()


@pytest.mark.parametrize("extractor", EXTRACTORS)
def test_stray_incomplete_files_are_ignored(extractor, no_hub, lrs_vqa_tree, volumes, tmp_path):
    parts = copy_volumes(volumes, tmp_path / "parts")
    (parts / "LRS_VQA.7z.001.incomplete").write_bytes(b"\x00" * 100)
    (parts / "LRS_VQA.7z.002.aria2").write_bytes(b"aria2 control file")
    (parts / "LRS_VQA.7z.md5").write_text("d41d8cd98f00b204e9800998ecf8427e  LRS_VQA.7z.001\n")
    root = lrs_vqa.fetch(tmp_path / "root", parts_dir=parts, extractor=extractor, progress=False)
    assert_same_tree(lrs_vqa_tree / "LRS_VQA", root / "LRS_VQA")


def test_interrupted_extraction_leftovers_are_recovered(no_hub, lrs_vqa_tree, volumes, tmp_path):
    root = tmp_path / "root"
    partial = root / (archive.PARTIAL_PREFIX + "x")
    (partial / "LRS_VQA").mkdir(parents=True)
    (partial / "LRS_VQA" / "junk.bin").write_bytes(b"half-written")
    (root / "LRS_VQA" / "image").mkdir(parents=True)
    (root / "LRS_VQA" / "image" / "stale.png").write_bytes(b"old")
    lrs_vqa.fetch(root, parts_dir=volumes[0].parent, extractor="py7zr", progress=False)
    assert not partial.exists()
    assert_same_tree(lrs_vqa_tree / "LRS_VQA", root / "LRS_VQA")
    assert (root / lrs_vqa.MARKER_NAME).is_file()


def test_crash_before_the_rename_is_recovered_by_the_next_fetch(no_hub, lrs_vqa_tree, volumes, tmp_path, monkeypatch):
    real_replace = os.replace
    crashes = []

    def crash_once(src, dst):
        if Path(dst).name == "LRS_VQA" and not crashes:
            crashes.append(dst)
            raise OSError("simulated crash while installing")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_once)
    monkeypatch.setenv("LRS_PLUGIN_HOME", str(tmp_path / "home"))
    root = tmp_path / "home" / "lrs_vqa"
    with pytest.raises(OSError, match="simulated crash"):
        lrs_vqa.fetch(root, parts_dir=volumes[0].parent, extractor="py7zr", progress=False)
    assert not (root / lrs_vqa.MARKER_NAME).exists()
    with pytest.raises(DatasetNotFoundError):
        lrs_vqa.resolve_root()
    lrs_vqa.fetch(root, parts_dir=volumes[0].parent, extractor="py7zr", progress=False)
    assert crashes and (root / lrs_vqa.MARKER_NAME).is_file()
    assert lrs_vqa.resolve_root() == root.resolve()
    assert_same_tree(lrs_vqa_tree / "LRS_VQA", root / "LRS_VQA")
    assert not list(root.glob(archive.PARTIAL_PREFIX + "*"))


def test_missing_image_after_extraction_is_named(no_hub, lrs_vqa_tree, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(lrs_vqa_tree, source)
    gone = read_rows(source)[0]["image"]
    (source / gone).unlink()
    parts = write_lrs_vqa_archive(source, tmp_path / "parts", num_parts=2)
    root = tmp_path / "root"
    with pytest.raises(DatasetIntegrityError, match=re.escape(gone)):
        lrs_vqa.fetch(root, parts_dir=parts[0].parent, extractor="py7zr", progress=False)
    assert not (root / lrs_vqa.MARKER_NAME).exists()
    assert lrs_vqa.check_images(root) == [gone]
    assert (root / lrs_vqa.QUESTION_FILE).is_file()  # kept, so LRS_VQA_ROOT can still point at it


def test_archive_without_question_file_is_refused(no_hub, tmp_path):
    (tmp_path / "src" / "LRS_VQA" / "image").mkdir(parents=True)
    (tmp_path / "src" / "LRS_VQA" / "image" / "1.tif").write_bytes(b"II*\x00")
    parts = write_lrs_vqa_archive(tmp_path / "src", tmp_path / "parts", num_parts=2)
    root = tmp_path / "root"
    with pytest.raises(DatasetIntegrityError, match="holds no LRS_VQA/LRS_VQA_merged.jsonl"):
        lrs_vqa.fetch(root, parts_dir=parts[0].parent, extractor="py7zr", progress=False)
    assert not (root / "LRS_VQA").exists()
    assert_nothing_installed(root)


# ------------------------------------------------------------------------------------------------------------------
# Reading


def test_resolve_root_accepts_both_folder_forms_and_the_env_var(lrs_vqa_tree, tmp_path, monkeypatch):
    parent = lrs_vqa_tree.resolve()
    assert lrs_vqa.resolve_root(lrs_vqa_tree) == parent
    assert lrs_vqa.resolve_root(str(lrs_vqa_tree / "LRS_VQA")) == parent
    monkeypatch.setenv("LRS_VQA_ROOT", str(lrs_vqa_tree / "LRS_VQA"))
    assert lrs_vqa.resolve_root() == parent
    monkeypatch.setenv("LRS_VQA_ROOT", str(lrs_vqa_tree))
    assert lrs_vqa.resolve_root() == parent
    monkeypatch.setenv("LRS_VQA_ROOT", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=r"\$LRS_VQA_ROOT .* set LRS_VQA_ROOT to the folder containing"):
        lrs_vqa.resolve_root()
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "elsewhere"))):
        lrs_vqa.resolve_root(tmp_path / "elsewhere")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {
    "question_id": "FAIR_1",
    "image": "LRS_VQA/image/1.tif",
    "category": "count",
    "text": "How many ships are there in the image? \nAnswer the question using a single word or phrase.",
    "ground_truth": "3",
    "image_size": [300, 200],
}

NO_ANSWER = {k: v for k, v in GOOD.items() if k != "ground_truth"} | {"question_id": "FAIR_2"}


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ('{"question_id": "FAIR_2", ', r"line 4: malformed JSON"),
        ({**GOOD, "question_id": "FAIR_2", "category": "object colour"}, r"line 4: unknown category 'object colour'"),
        (
            {k: v for k, v in GOOD.items() if k != "ground_truth"} | {"question_id": "FAIR_2"},
            r"line 4: .*'ground_truth'",
        ),
        ({**GOOD, "question_id": "DOTA_2"}, r"line 4: .*unknown prefix 'DOTA'; valid: FAIR, GLH-Bridge, STAR"),
        ({**GOOD, "question_id": "FAIR_2", "category": "object color"}, r"line 4: .*not occur in FAIR"),
        ({**GOOD, "question_id": "FAIR_2", "image_size": [300]}, r"line 4: image_size must be \[W, H\]"),
        ({**GOOD, "question_id": "FAIR_2", "hbox": [1, 2, 3]}, r"line 4: hbox must be a list of 4 numbers"),
        ({**GOOD}, r"line 4: question_id 'FAIR_1' repeats line 1"),
        ("[1, 2]", r"line 4: expected a JSON object"),
    ],
)
def test_load_questions_errors_name_the_line(bad, pattern, tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD, "", "   ", bad])
    with pytest.raises(DatasetSchemaError, match=pattern) as info:
        lrs_vqa.load_questions(path)
    assert str(path) in str(info.value)


def test_unknown_category_lists_the_valid_ones(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{**GOOD, "category": "weather"}])
    with pytest.raises(DatasetSchemaError) as info:
        lrs_vqa.load_questions(path)
    assert "'weather'" in str(info.value) and "line 1" in str(info.value)
    assert all(c in str(info.value) for c in lrs_vqa.CATEGORIES)


def test_load_questions_missing_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nope.jsonl"):
        lrs_vqa.load_questions(tmp_path / "nope.jsonl")


def test_build_docs_keys_types_and_order(lrs_vqa_tree):
    rows = read_rows(lrs_vqa_tree)
    docs = lrs_vqa.build_docs(lrs_vqa_tree)
    assert [d["question_id"] for d in docs] == [r["question_id"] for r in rows]
    for doc in docs:
        assert tuple(doc) == lrs_vqa.DOC_KEYS
        for key in ("question_id", "subset", "image", "image_path", "category", "text", "ground_truth"):
            assert isinstance(doc[key], str)
        assert Path(doc["image_path"]).is_absolute() and Path(doc["image_path"]).is_file()
        assert doc["image_path"].endswith(doc["image"])
        assert len(doc["image_size"]) == 2 and all(type(v) is int for v in doc["image_size"])
        if doc["category"] == "count":
            assert doc["hbox"] is doc["rbox"] is doc["size_bin"] is doc["abs_size"] is None
        else:
            assert len(doc["hbox"]) == 4 and all(type(v) is int for v in doc["hbox"])
            assert len(doc["rbox"]) == 8 and all(type(v) is float for v in doc["rbox"])
            assert isinstance(doc["size_bin"], str) and isinstance(doc["abs_size"], str)
    for subset in lrs_vqa.SUBSETS:
        sub = lrs_vqa.build_docs(lrs_vqa_tree / "LRS_VQA", subset)
        assert sub == [d for d in docs if d["subset"] == subset]
        assert {d["category"] for d in sub} == set(lrs_vqa.SUBSETS[subset])
    with pytest.raises(ConfigError, match=r"unknown LRS-VQA subset 'Bridge'; valid: FAIR, GLH-Bridge, STAR"):
        lrs_vqa.build_docs(lrs_vqa_tree, "Bridge")


def test_check_images(lrs_vqa_tree, tmp_path):
    assert lrs_vqa.check_images(lrs_vqa_tree) == []
    root = tmp_path / "copy"
    shutil.copytree(lrs_vqa_tree, root)
    images = sorted({r["image"] for r in read_rows(root)})
    for image in images[:2]:
        (root / image).unlink()
    assert sorted(lrs_vqa.check_images(root)) == images[:2]


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ([10, 20, 30, 40], (10, 20, 30, 40)),
        ([282, 3418, 763, 4050], (282, 3418, 763, 4000)),  # FAIR_1 on a 4000 x 4000 image
        ([-1, 1845, 108, 1925], (0, 1845, 108, 1925)),  # FAIR_153
        ([-50, -50, 5000, 5000], (0, 0, 4000, 4000)),
        ([4000, 10, 4100, 20], None),
        ([-20, -20, -5, -5], None),
        ([10, 10, 10, 20], None),
        ([10.4, 20.6, 30.2, 39.9], (10, 20, 31, 40)),
    ],
)
def test_clip_box(box, expected):
    assert lrs_vqa.clip_box(box, [4000, 4000]) == expected


def test_clip_box_uses_width_then_height():
    assert lrs_vqa.clip_box([0, 0, 500, 500], [300, 200]) == (0, 0, 300, 200)
    with pytest.raises(DatasetSchemaError, match="x1, y1, x2, y2"):
        lrs_vqa.clip_box([1, 2, 3], [10, 10])


def _real_question_file() -> Path | None:
    env = os.environ.get("LRS_VQA_QUESTIONS")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "LRS_VQA_merged.jsonl"
    return path if path.is_file() else None


@pytest.mark.parametrize(
    ("qid", "subset"),
    [
        ("FAIR_1", "FAIR"),
        ("GLH-Bridge_1062", "GLH-Bridge"),
        ("STAR_3999", "STAR"),
        ("SYNTH_7", "SYNTH"),  # the testbed's ids
        ("FAIR", "FAIR"),
    ],
)
def test_subset_of_reads_every_id_form_and_scoring_uses_it(qid, subset):
    from lrs_plugin import scoring

    assert lrs_vqa.subset_of(qid) == subset
    if subset in scoring.LRS_SUBSETS:
        assert scoring.subset_of(qid) == subset
    assert scoring.LRS_SUBSETS == tuple(lrs_vqa.SUBSETS)


@pytest.mark.skipif(_real_question_file() is None, reason="real LRS_VQA_merged.jsonl not available")
def test_subset_of_on_every_real_question_id():
    from lrs_plugin import scoring

    ids = [json.loads(line)["question_id"] for line in _real_question_file().read_text().splitlines() if line]
    assert {re.sub(r"_\d+$", "_N", q) for q in ids} == {"FAIR_N", "GLH-Bridge_N", "STAR_N"}  # the id forms
    assert all(lrs_vqa.subset_of(q) == scoring.subset_of(q) == q.rsplit("_", 1)[0] for q in ids)


REAL_COUNTS = {  # datasets.md section 2.2
    "FAIR": {
        "count": 400,
        "object category": 387,
        "object shape": 285,
        "object status": 400,
        "reasoning": 400,
        "rural or urban": 400,
    },
    "GLH-Bridge": {"count": 400, "object background": 245, "object color": 165, "rural or urban": 252},
    "STAR": {
        "count": 399,
        "object category": 600,
        "object color": 600,
        "object shape": 600,
        "object status": 600,
        "reasoning": 600,
        "rural or urban": 600,
    },
}


@pytest.mark.skipif(_real_question_file() is None, reason="real LRS_VQA_merged.jsonl not available")
def test_real_question_file_loads():
    rows = lrs_vqa.load_questions(_real_question_file())
    assert len(rows) == 7333
    subsets = Counter(lrs_vqa.subset_of(r["question_id"]) for r in rows)
    assert subsets == {"FAIR": 2272, "GLH-Bridge": 1062, "STAR": 3999}
    for subset, counts in REAL_COUNTS.items():
        got = Counter(r["category"] for r in rows if lrs_vqa.subset_of(r["question_id"]) == subset)
        assert got == counts, subset
    assert all(("hbox" in r) == (r["category"] != "count") for r in rows)


# ------------------------------------------------------------------------------------------------------------------
# Generator


def test_generator_is_format_true(lrs_vqa_tree):
    rows = read_rows(lrs_vqa_tree)
    by_subset = {s: [r for r in rows if r["question_id"].startswith(s + "_")] for s in lrs_vqa.SUBSETS}
    assert sum(map(len, by_subset.values())) == len(rows)
    assert {r["category"] for r in rows} == set(lrs_vqa.CATEGORIES) and len(lrs_vqa.CATEGORIES) == 8
    for subset, sub in by_subset.items():
        assert {r["category"] for r in sub} == set(lrs_vqa.SUBSETS[subset])
        assert [r["question_id"] for r in sub] == [f"{subset}_{i}" for i in range(1, len(sub) + 1)]
        assert max(Counter(r["image"] for r in sub).values()) >= 3
    patterns = {"FAIR": r"\d+\.tif", "GLH-Bridge": r"test-\d+\.png", "STAR": r"\d{4}\.png"}
    for subset, sub in by_subset.items():
        assert all(re.fullmatch(r"LRS_VQA/image/" + patterns[subset], r["image"]) for r in sub)
    count_keys = {"question_id", "image", "category", "text", "ground_truth", "image_size"}
    full_keys = count_keys | {"hbox", "rbox", "abs_size", "size_bin"}
    for r in rows:
        assert set(r) == (count_keys if r["category"] == "count" else full_keys)
        assert r["text"].endswith(COUNT_SUFFIX if r["category"] == "count" else "?" + NONCOUNT_SUFFIX)
        assert r["text"].count("\n") == 1 and r["ground_truth"] == r["ground_truth"].lower().strip()
        if r["category"] == "count":
            assert r["ground_truth"].isdigit()
    answers = {r["ground_truth"] for r in rows}
    assert {"gray", "grey"} <= answers
    fair_boxes = [(r["hbox"], r["image_size"]) for r in by_subset["FAIR"] if "hbox" in r]
    assert any(b[2] > w or b[3] > h for b, (w, h) in fair_boxes)
    assert any(min(b) < 0 for b, _ in fair_boxes)
    lrs_vqa.load_questions(lrs_vqa_tree / lrs_vqa.QUESTION_FILE)


def test_generator_image_sizes_match_headers_and_bomb(lrs_vqa_tree):
    limit = Image.MAX_IMAGE_PIXELS
    sizes = {r["image"]: tuple(r["image_size"]) for r in read_rows(lrs_vqa_tree)}
    bombs = []
    for image, size in sizes.items():
        path = lrs_vqa_tree / image
        if size[0] >= BOMB_SIDE:
            bombs.append(path)
            width, height = struct.unpack(">II", path.read_bytes()[16:24])
            assert (width, height) == size and width * height > 2 * limit
            assert path.stat().st_size < 200_000
            with pytest.raises(Image.DecompressionBombError):
                Image.open(path)
        else:
            with Image.open(path) as im:
                assert im.size == size and im.mode == "RGB"
                assert im.format == ("TIFF" if image.endswith(".tif") else "PNG")
    assert (
        len(bombs) == 1
        and bombs[0].name.endswith(".png")
        and "STAR"
        in {r["question_id"].split("_")[0] for r in read_rows(lrs_vqa_tree) if r["image"].endswith(bombs[0].name)}
    )
    assert Image.MAX_IMAGE_PIXELS == limit
    total = sum(p.stat().st_size for p in (lrs_vqa_tree / "LRS_VQA").rglob("*") if p.is_file())
    assert total < 5_000_000


def test_generator_is_deterministic_and_sized(tmp_path):
    small = {"FAIR": 6, "GLH-Bridge": 4, "STAR": 7}
    a = write_lrs_vqa(tmp_path / "a", seed=3, questions_per_subset=small, bomb_image=False)
    b = write_lrs_vqa(tmp_path / "b", seed=3, questions_per_subset=small, bomb_image=False)
    assert_same_tree(a / "LRS_VQA", b / "LRS_VQA")
    assert Counter(r["question_id"].split("_")[0] for r in read_rows(a)) == small
    va = write_lrs_vqa_archive(a, tmp_path / "va", num_parts=4)
    vb = write_lrs_vqa_archive(b, tmp_path / "vb", num_parts=4)
    assert [v.read_bytes() for v in va] == [v.read_bytes() for v in vb]
    sizes = [v.stat().st_size for v in va]
    assert [v.name for v in va] == [f"LRS_VQA.7z.{i:03d}" for i in range(1, 5)]
    assert len(set(sizes[:-1])) == 1 and 0 < sizes[-1] <= sizes[0]
    with pytest.raises(ConfigError, match="STAR needs at least 7"):
        write_lrs_vqa(tmp_path / "c", questions_per_subset={"STAR": 3})
    with pytest.raises(ConfigError, match="unknown LRS-VQA subset 'DOTA'"):
        write_lrs_vqa(tmp_path / "c", questions_per_subset={"DOTA": 3})
