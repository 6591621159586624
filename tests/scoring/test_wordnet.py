"""Offline WordNet: nltk's corpus, a corpus built from Debian's dictionary files, or a clear error."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import zipfile
from pathlib import Path

import nltk.data
import pytest

from lrs_plugin.errors import WordNetUnavailableError
from lrs_plugin.scoring import wordnet

MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")


def _nltk_corpus_dir() -> Path | None:
    try:
        pointer = nltk.data.find("corpora/wordnet")
    except LookupError:
        return None
    return Path(pointer.path)


def _no_nltk_corpus(resource, paths=None):
    raise LookupError(f"Resource {resource!r} not found (test)")


@pytest.fixture(scope="session")
def dictionary_dir(tmp_path_factory) -> Path:
    """WordNet 3.0 dictionary files without ``lexnames``: Debian's folder, else a copy of nltk's corpus files."""
    if (wordnet.DEBIAN_WORDNET_DIR / "data.noun").is_file():
        return wordnet.DEBIAN_WORDNET_DIR
    nltk_dir = _nltk_corpus_dir()
    if nltk_dir is None:
        pytest.skip("no WordNet here: apt-get install wordnet-base wordnet-sense-index (CI does)")
    copy = tmp_path_factory.mktemp("dict")
    for name in wordnet.REQUIRED_FILES:
        shutil.copyfile(nltk_dir / name, copy / name)
    return copy


@pytest.fixture
def debian_only(monkeypatch, dictionary_dir):
    """nltk's own corpus hidden, the dictionary files named by the environment variable, a fresh reader cache."""
    monkeypatch.setattr(nltk.data, "find", _no_nltk_corpus)
    monkeypatch.setenv(wordnet.WORDNET_DIR_ENV, str(dictionary_dir))
    wordnet.clear_cache()
    yield dictionary_dir
    wordnet.clear_cache()


def test_lexnames_table_is_the_wordnet_3_0_table():
    lines = wordnet.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    assert lines[2] == "02\tadv.all\t4" and lines[29] == "29\tverb.body\t2"
    for number, line in enumerate(lines):
        index, name, category = line.split("\t")
        assert int(index) == number
        assert int(category) == {"noun": 1, "verb": 2, "adj": 3, "adv": 4}[name.split(".")[0]]
    if MAN_PAGE.is_file():  # Debian's wordnet-base ships the table only as this man page
        text = gzip.decompress(MAN_PAGE.read_bytes()).decode()
        from_man = re.findall(r"^(\d\d)\t(\S+)", text, flags=re.MULTILINE)
        assert [f"{i}\t{name}" for i, name in from_man] == [line.rsplit("\t", 1)[0] for line in lines]


def test_builds_an_nltk_corpus_from_dictionary_files(debian_only, tmp_path):
    reader = wordnet.load_wordnet(build_dir=tmp_path / "nltk_data")
    corpus = tmp_path / "nltk_data" / "corpora" / "wordnet"
    assert (corpus / "lexnames").read_text() == wordnet.lexnames_text()
    for name in wordnet.REQUIRED_FILES:
        assert (corpus / name).is_file() and not (corpus / name).is_symlink()
    assert [p.name for p in corpus.parent.iterdir()] == ["wordnet"]  # no temporary folder left behind
    assert reader.get_version() == "3.0"
    assert set(reader.synsets("grey")) & set(reader.synsets("gray"))
    assert wordnet.load_wordnet(build_dir=tmp_path / "nltk_data") is reader  # cached per process
    description = wordnet.describe_wordnet(build_dir=tmp_path / "nltk_data")
    assert str(debian_only) in description and str(corpus) in description and "WordNet 3.0" in description
    assert wordnet.wordnet_available(build_dir=tmp_path / "nltk_data")


def test_build_is_idempotent_and_redone_when_stale(dictionary_dir, tmp_path):
    corpus = wordnet.build_corpus(dictionary_dir, tmp_path)
    data_noun = corpus / "data.noun"
    first = data_noun.stat().st_mtime_ns
    assert wordnet.build_corpus(dictionary_dir, tmp_path) == corpus
    assert data_noun.stat().st_mtime_ns == first  # reused, not copied again
    (corpus / "lrs_plugin_source.json").unlink()  # e.g. a folder from an interrupted or older build
    (corpus / "data.adv").write_text("garbage")
    wordnet.build_corpus(dictionary_dir, tmp_path)
    assert (corpus / "data.adv").read_bytes() == (dictionary_dir / "data.adv").read_bytes()
    assert sorted(p.name for p in corpus.parent.iterdir()) == ["wordnet"]


def test_build_refuses_an_incomplete_source(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.noun").write_text("x")
    with pytest.raises(WordNetUnavailableError, match=r"missing data\.adj, data\.adv, data\.verb, index\.adj"):
        wordnet.build_corpus(tmp_path / "src", tmp_path / "build")
    assert not (tmp_path / "build").exists()


@pytest.mark.parametrize("layout", ["folder", "zip"])
def test_prefers_nltks_own_corpus(dictionary_dir, tmp_path, monkeypatch, layout):
    nltk_root = tmp_path / "nltk_data"
    corpus = wordnet.build_corpus(dictionary_dir, nltk_root)  # a regular nltk data folder: nltk reads it itself
    if layout == "zip":  # what `nltk.downloader` may leave: corpora/wordnet.zip holding wordnet/<files>
        with zipfile.ZipFile(corpus.parent / "wordnet.zip", "w", zipfile.ZIP_STORED) as archive:
            for path in sorted(corpus.iterdir()):
                archive.write(path, f"wordnet/{path.name}")
        shutil.rmtree(corpus)
    monkeypatch.setattr(nltk.data, "path", [str(nltk_root)])
    monkeypatch.setenv(wordnet.WORDNET_DIR_ENV, str(tmp_path / "empty"))
    wordnet.clear_cache()
    try:
        reader = wordnet.load_wordnet(build_dir=tmp_path / "unused")
        description = wordnet.describe_wordnet(build_dir=tmp_path / "unused")
        assert description.startswith(f"nltk corpus {corpus}") and description.endswith("(WordNet 3.0)")
        assert type(reader).__name__ == "WordNetCorpusReader"
        assert set(reader.synsets("2")) & set(reader.synsets("two"))
        assert not (tmp_path / "unused").exists()
    finally:
        wordnet.clear_cache()


def test_unavailable_says_how_to_get_wordnet(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(wordnet.WORDNET_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(nltk.data, "find", _no_nltk_corpus)
    wordnet.clear_cache()
    with pytest.raises(WordNetUnavailableError) as info:
        wordnet.load_wordnet(build_dir=tmp_path / "build")
    message = str(info.value)
    assert "python -m nltk.downloader wordnet" in message
    assert "apt-get install wordnet-base wordnet-sense-index" in message
    assert f"{wordnet.WORDNET_DIR_ENV}={tmp_path / 'empty'}" in message and "data.noun" in message
    assert not wordnet.wordnet_available(build_dir=tmp_path / "build")
    with pytest.raises(WordNetUnavailableError):
        wordnet.describe_wordnet(build_dir=tmp_path / "build")
    assert not (tmp_path / "build").exists()


def test_reader_opens_only_plain_wordnet_files(debian_only, tmp_path):
    reader = wordnet.load_wordnet(build_dir=tmp_path)
    with pytest.raises(ValueError, match="not a WordNet corpus file"):
        reader.open("../secret")
    corpus = tmp_path / "corpora" / "wordnet"
    os.symlink(corpus / "data.noun", corpus / "link")
    pointer = wordnet._FolderPointer(corpus)
    with pytest.raises(OSError):
        pointer.join("link").open()
    with pytest.raises(ValueError, match="plain WordNet file name"):
        pointer.join("../data.noun")
