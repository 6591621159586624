"""Offline WordNet for the official LRS-VQA synonym rule.

The official scorer counts an answer as correct when some WordNet synset of the ground truth and some synset of the
answer have ``path_similarity > 0.8`` (``Script/evaluation_LRSVQA.py``). That needs nltk's ``wordnet`` corpus, which
offline machines usually lack. :func:`load_wordnet` finds a WordNet database, in this order:

1. nltk's own ``wordnet`` corpus, when ``nltk.data.find`` locates it (folder or zip), read by nltk as usual;
2. WordNet 3.0 dictionary files in ``$LRS_PLUGIN_WORDNET_DIR``, else in ``/usr/share/wordnet`` (Debian/Ubuntu
   packages ``wordnet-base`` + ``wordnet-sense-index``). They are copied once into
   ``<build_dir>/corpora/wordnet/`` (default ``build_dir``: ``<plugin cache>/nltk_data``) together with the
   ``lexnames`` table nltk requires, which Debian ships only as the man page ``lexnames.5WN``. The copy is atomic
   (temporary folder, then rename), recorded by a marker file, and redone only when the source files change. The
   result is a regular nltk data folder: ``NLTK_DATA=<build_dir>`` makes it nltk's own corpus too.
3. Otherwise :class:`~lrs_plugin.errors.WordNetUnavailableError`, whose message gives the fixes.

nltk >= 3.9 (``nltk.pathsec``) refuses to read corpora outside the folders registered on the process-wide
``nltk.data.path``. Rather than registering our folder there (process-wide state), the reader of case 2 is a small
subclass of nltk's ``WordNetCorpusReader`` whose ``open`` reads only nltk's fixed WordNet file names, as plain files
(links refused), inside the one folder this module built. It also skips nltk's WordNet-3.0-to-loaded-version offset
map, which exists for the multilingual (OMW) data this reader does not load and which nltk builds by loading its own
``wordnet`` corpus, the very thing missing here.

The reader is cached per process and per (build folder, source folder). Nothing here changes global state.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import IO, NamedTuple

import nltk.data
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from lrs_plugin.data._paths import cache_home
from lrs_plugin.errors import WordNetUnavailableError

__all__ = [
    "WORDNET_DIR_ENV",
    "DEBIAN_WORDNET_DIR",
    "LEXNAMES",
    "REQUIRED_FILES",
    "OPTIONAL_FILES",
    "lexnames_text",
    "build_corpus",
    "load_wordnet",
    "wordnet_available",
    "describe_wordnet",
    "clear_cache",
]

#: Environment variable naming a folder of WordNet 3.0 dictionary files to use instead of ``/usr/share/wordnet``.
WORDNET_DIR_ENV = "LRS_PLUGIN_WORDNET_DIR"
#: Where Debian's ``wordnet-base`` (+ ``wordnet-sense-index``) install the WordNet 3.0 database.
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

#: The 45 WordNet 3.0 lexicographer files, in file-number order (``lexnames(5WN)``); the syntactic category
#: number (1 noun, 2 verb, 3 adjective, 4 adverb) follows from the prefix.
LEXNAMES: tuple[str, ...] = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

_POS_SUFFIXES = ("adj", "adv", "noun", "verb")
#: Dictionary files without which nltk cannot look up synsets.
REQUIRED_FILES: tuple[str, ...] = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in _POS_SUFFIXES) + tuple(
    f"{pos}.exc" for pos in _POS_SUFFIXES
)
#: Copied when present (sense keys and lemma counts; the synonym rule needs neither).
OPTIONAL_FILES: tuple[str, ...] = ("index.sense", "cntlist.rev", "lexnames")

_MARKER = "lrs_plugin_source.json"
#: The ways to get WordNet, quoted by every :class:`WordNetUnavailableError`.
_FIXES = (
    "Get WordNet 3.0 in one of these ways: `python -m nltk.downloader wordnet` (needs network); "
    "`apt-get install wordnet-base wordnet-sense-index` (Debian/Ubuntu, installs /usr/share/wordnet); "
    f"or set {WORDNET_DIR_ENV} to a folder holding the WordNet 3.0 dictionary files "
    "(data.*, index.*, *.exc). Scoring without the rule (synonyms='exact') is not the paper's protocol."
)
_NLTK_RESOURCES = ("corpora/wordnet", "corpora/wordnet.zip/wordnet/")


def lexnames_text() -> str:
    """The WordNet 3.0 ``lexnames`` file: ``NN<TAB>name<TAB>category`` per line, 45 lines."""
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


# ---------------------------------------------------------------------------------------------------------------
# Building <build_dir>/corpora/wordnet from dictionary files
# ---------------------------------------------------------------------------------------------------------------


def _missing_files(source: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (source / name).is_file()]


def _manifest(source: Path) -> dict:
    """What a build copies, with sizes and modification times: a build is reused only while this is unchanged."""
    files = {}
    for name in REQUIRED_FILES + OPTIONAL_FILES:
        path = source / name
        if path.is_file():
            stat = path.stat()
            files[name] = [stat.st_size, stat.st_mtime_ns]
    return {"source": str(source.resolve()), "files": files}


def _is_complete(target: Path, manifest: dict) -> bool:
    try:
        recorded = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return recorded == manifest and not _missing_files(target) and (target / "lexnames").is_file()


def build_corpus(source: Path, build_dir: Path) -> Path:
    """Lay out WordNet dictionary files as an nltk corpus folder ``<build_dir>/corpora/wordnet``.

    Copies :data:`REQUIRED_FILES` and whichever :data:`OPTIONAL_FILES` exist, and writes :func:`lexnames_text` when
    ``source`` has no ``lexnames`` of its own. Atomic (built in a temporary sibling folder, then renamed) and
    idempotent (a complete build of the same, unchanged source files is reused as is).

    Args:
        source: Folder with WordNet 3.0 dictionary files (``data.noun``, ``index.noun``, ``noun.exc``, ...).
        build_dir: Root of the nltk data folder to create or reuse.

    Returns:
        The corpus folder ``<build_dir>/corpora/wordnet``.

    Raises:
        WordNetUnavailableError: ``source`` lacks a required file, or the folder cannot be written.
    """
    source = Path(source)
    target = Path(build_dir) / "corpora" / "wordnet"
    missing = _missing_files(source)
    if missing:
        raise WordNetUnavailableError(
            f"{source} is not a WordNet dictionary folder: missing {', '.join(missing)}. {_FIXES}"
        )
    manifest = _manifest(source)
    if _is_complete(target, manifest):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".wordnet-building-", dir=target.parent))
    except OSError as exc:
        raise WordNetUnavailableError(
            f"cannot create the WordNet corpus folder {target}: {exc}. Set LRS_PLUGIN_HOME to a writable folder."
        ) from exc
    try:
        for name in manifest["files"]:
            shutil.copyfile(source / name, tmp / name)
        if "lexnames" not in manifest["files"]:
            (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
        (tmp / _MARKER).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        tmp.chmod(0o755)
        _move_into_place(tmp, target, manifest)
    except OSError as exc:
        raise WordNetUnavailableError(f"cannot build the WordNet corpus folder {target}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(tmp: Path, target: Path, manifest: dict) -> None:
    """Rename ``tmp`` to ``target``; a stale ``target`` is moved aside first, a concurrent complete one is kept."""
    try:
        os.rename(tmp, target)
        return
    except OSError:
        if _is_complete(target, manifest):  # another process finished the same build first
            return
    stale = target.with_name(f".wordnet-stale-{uuid.uuid4().hex}")
    os.rename(target, stale)
    os.rename(tmp, target)
    shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Reading a folder we built, without registering it on nltk.data.path
# ---------------------------------------------------------------------------------------------------------------


class _FolderPointer(nltk.data.PathPointer):
    """An nltk path pointer to a folder we built, or to one plain file in it (no sub-paths, no links)."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)

    @property
    def path(self) -> str:
        return str(self._path)

    def join(self, fileid: str) -> _FolderPointer:
        if fileid in ("", ".", "..") or "/" in fileid or os.sep in fileid:
            raise ValueError(f"not a plain WordNet file name: {fileid!r}")
        return _FolderPointer(self._path / fileid)

    def open(self, encoding: str | None = None) -> IO:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        stream = os.fdopen(os.open(self._path, flags), "rb")
        return nltk.data.SeekableUnicodeStreamReader(stream, encoding) if encoding else stream

    def file_size(self) -> int:
        return self._path.stat().st_size

    def __repr__(self) -> str:
        return f"_FolderPointer({str(self._path)!r})"


class _FolderWordNetReader(WordNetCorpusReader):
    """nltk's WordNet reader over a :class:`_FolderPointer`, reading only nltk's own WordNet file names."""

    def open(self, file: str) -> IO:
        if file not in self._FILES:
            raise ValueError(f"not a WordNet corpus file: {file!r}; valid: {', '.join(self._FILES)}")
        return self._root.join(file).open(encoding=self.encoding(file))

    def map_wn(self, version: str = "wordnet") -> None:
        """No offset map: it serves only multilingual (OMW) lookups, which this reader does not load."""
        return None


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


class _Loaded(NamedTuple):
    reader: WordNetCorpusReader
    description: str


def _new_reader(cls: type[WordNetCorpusReader], root: object) -> WordNetCorpusReader:
    with warnings.catch_warnings():  # "multilingual functions are not available": we pass no OMW reader on purpose
        warnings.simplefilter("ignore", UserWarning)
        return cls(root, None)


def _find_nltk_corpus() -> object | None:
    """Nltk's own ``wordnet`` corpus (folder or zip) on ``nltk.data.path``, or ``None``."""
    for resource in _NLTK_RESOURCES:
        try:
            return nltk.data.find(resource)
        except LookupError:
            continue
    return None


@functools.lru_cache(maxsize=8)
def _load(build_dir: Path, source: Path, source_from_env: bool) -> _Loaded:
    pointer = _find_nltk_corpus()
    if pointer is not None:
        reader = _new_reader(WordNetCorpusReader, pointer)
        return _Loaded(reader, f"nltk corpus {pointer} (WordNet {reader.get_version()})")
    missing = _missing_files(source)
    if missing:
        where = f"{WORDNET_DIR_ENV}={source}" if source_from_env else str(source)
        raise WordNetUnavailableError(
            "WordNet is needed for the LRS-VQA synonym rule (synonyms='wordnet') but none was found: nltk's "
            f"'wordnet' corpus is not on nltk.data.path and {where} lacks {', '.join(missing)}. {_FIXES}"
        )
    corpus = build_corpus(source, build_dir)
    reader = _new_reader(_FolderWordNetReader, _FolderPointer(corpus))
    return _Loaded(reader, f"WordNet {reader.get_version()} dictionary files from {source} (as {corpus})")


def _resolve(build_dir: Path | None) -> tuple[Path, Path, bool]:
    env = os.environ.get(WORDNET_DIR_ENV)
    source = Path(env).expanduser() if env else DEBIAN_WORDNET_DIR
    build = Path(build_dir) if build_dir is not None else cache_home() / "nltk_data"
    return build.expanduser().absolute(), source.absolute(), bool(env)


def load_wordnet(*, build_dir: Path | None = None) -> WordNetCorpusReader:
    """Return a WordNet reader: nltk's own corpus, else one built from WordNet dictionary files (module docstring).

    Args:
        build_dir: nltk data folder in which dictionary files are laid out (default ``<plugin cache>/nltk_data``).

    Returns:
        An nltk ``WordNetCorpusReader``, the same object for the same arguments and environment in one process.

    Raises:
        WordNetUnavailableError: No WordNet database was found; the message says how to get one.
    """
    return _load(*_resolve(build_dir)).reader


def wordnet_available(*, build_dir: Path | None = None) -> bool:
    """Whether :func:`load_wordnet` succeeds (loading, and building if needed, as a side effect)."""
    try:
        load_wordnet(build_dir=build_dir)
    except WordNetUnavailableError:
        return False
    return True


def describe_wordnet(*, build_dir: Path | None = None) -> str:
    """Which WordNet :func:`load_wordnet` uses, for the provenance of results (raises when there is none)."""
    return _load(*_resolve(build_dir)).description


def clear_cache() -> None:
    """Forget the readers loaded so far (e.g. after installing WordNet, or in tests)."""
    _load.cache_clear()
