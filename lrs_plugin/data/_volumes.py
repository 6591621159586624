"""Volumes of a split 7z archive: list them explicitly, derive their layout, check them, read them as one stream.

Plumbing of :mod:`lrs_plugin.data.archive` (which re-exports every public name here). A 7z multi-volume archive
(``NAME.7z.001``, ``.002``, ...) is one archive split byte-wise: only ``.001`` carries the signature and the end
header sits in the last volume. The volumes are listed with :func:`find_volumes` (no glob), their count and sizes
derived from the start header of the first one when there is no listing (:func:`read_layout`), checked by
:func:`verify_volumes`, and read by py7zr through :class:`ConcatenatedReader`.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import math
import os
import re
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lrs_plugin.errors import ArchivePartError

__all__ = [
    "CHUNK",
    "SIGNATURE",
    "ConcatenatedReader",
    "VolumeLayout",
    "find_local_volumes",
    "find_volumes",
    "read_layout",
    "sha256_file",
    "verify_volumes",
]

SIGNATURE = b"7z\xbc\xaf\x27\x1c"
"""First 6 bytes of a 7z archive (of its first volume)."""

CHUNK = 8 * 1024 * 1024
"""Bytes per read when hashing a volume or buffering the concatenated stream."""

_START_HEADER = 32


def find_volumes(
    folder: str | Path,
    base: str = "LRS_VQA.7z",
    *,
    expected_count: int | None = None,
    source: str | None = None,
) -> list[Path]:
    r"""List the volumes ``<base>.001 .. <base>.NNN`` of ``folder`` explicitly (no glob).

    Only names matching ``^<base>\.(\d{3})$`` count, so ``.001.incomplete``, ``.002.aria2`` or ``.md5`` files next
    to the volumes are ignored.

    Args:
        folder: Folder holding the volumes.
        base: Archive name without the volume number.
        expected_count: Number of volumes there must be, when known (from the Hub listing or :func:`read_layout`).
        source: Where ``expected_count`` comes from, for the messages (e.g. :meth:`VolumeLayout.describe`).

    Returns:
        The volumes in order, ``001`` first.

    Raises:
        ArchivePartError: The folder is missing, holds no volume, the numbers have gaps, or (with
            ``expected_count``) a volume up to it is missing or one beyond it exists; the message names the missing
            and the unexpected volumes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArchivePartError(f"volume folder {folder} does not exist (expected {base}.001 ... inside it)")
    pattern = re.compile(rf"^{re.escape(base)}\.(\d{{3}})$")
    numbered = {}
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_file():
            numbered[int(match.group(1))] = entry
    if not numbered:
        raise ArchivePartError(f"no volume {base}.001 (or any {base}.NNN) in {folder}")
    last = max(numbered) if expected_count is None else expected_count
    missing = [f"{base}.{n:03d}" for n in range(1, last + 1) if n not in numbered]
    extra = [numbered[n].name for n in sorted(numbered) if n > last]
    why = f" ({source})" if source else ""
    if extra:
        it = "it" if len(extra) == 1 else "them"
        gap = f"; missing volume(s) {', '.join(missing)}" if missing else ""
        raise ArchivePartError(
            f"{folder} holds {len(numbered)} volumes of {base} but {expected_count} are expected; unexpected: "
            f"{', '.join(extra)}, found beyond the {expected_count} volumes of {base}{why}: remove {it}{gap}"
        )
    if missing:
        count = f"; {base} has {expected_count} volumes{why}" if expected_count is not None else ""
        raise ArchivePartError(f"missing volume(s) {', '.join(missing)} in {folder} (found {_names(numbered)}{count})")
    return [numbered[n] for n in sorted(numbered)]


@dataclass(frozen=True)
class VolumeLayout:
    """Number and sizes of the volumes of a split 7z archive, as its start header says.

    Attributes:
        total_size: Bytes of the whole archive: the 32-byte start header, the packed streams and the end header.
        volume_size: Bytes of every volume but the last (the size of the first volume).
        count: Number of volumes, ``ceil(total_size / volume_size)``.
    """

    total_size: int
    volume_size: int
    count: int

    def expected(self, base: str) -> dict[str, tuple[int | None, str | None]]:
        """``{volume name: (size, None)}`` for :func:`verify_volumes` (no hash is known)."""
        sizes = [self.volume_size] * (self.count - 1) + [self.total_size - (self.count - 1) * self.volume_size]
        return {f"{base}.{i:03d}": (size, None) for i, size in enumerate(sizes, start=1)}

    def describe(self, base: str) -> str:
        """Where the count comes from, in words (for error messages)."""
        return (
            f"the start header of {base}.001 gives an archive of {self.total_size} bytes, i.e. {self.count} "
            f"volume(s) of {self.volume_size} bytes"
        )


def read_layout(first: str | Path, second: str | Path | None = None) -> VolumeLayout | None:
    """Derive the volume layout from the 7z start header of the first volume.

    The start header (the first 32 bytes, guarded by a CRC) holds the offset and the size of the end header, hence
    the size of the whole archive; every volume but the last has the size of the first.

    Args:
        first: The first volume (``<base>.001``).
        second: The second volume, when there is one: if it is larger than ``first``, ``first`` is truncated and its
            size says nothing about the others.

    Returns:
        The layout, or ``None`` when it cannot be trusted: ``first`` is unreadable, not a 7z volume, its start
        header fails its CRC or has no end header (an unfinished archive), or ``second`` is larger.
    """
    try:
        with open(first, "rb") as handle:
            head = handle.read(_START_HEADER)
            first_size = os.fstat(handle.fileno()).st_size
        second_size = Path(second).stat().st_size if second is not None and Path(second).is_file() else None
    except OSError:
        return None
    if len(head) < _START_HEADER or head[: len(SIGNATURE)] != SIGNATURE:
        return None
    (crc,) = struct.unpack_from("<I", head, 8)
    if zlib.crc32(head[12:_START_HEADER]) != crc:
        return None
    offset, length = struct.unpack_from("<QQ", head, 12)
    if length == 0 or (second_size is not None and second_size > first_size):
        return None
    total = _START_HEADER + offset + length
    volume_size = min(first_size, total)
    return VolumeLayout(total, volume_size, math.ceil(total / volume_size))


def find_local_volumes(
    folder: str | Path, base: str = "LRS_VQA.7z"
) -> tuple[list[Path], dict[str, tuple[int | None, str | None]] | None]:
    """List the volumes of a local folder, checked against the layout their first volume announces.

    With no listing to compare against (no Hub), :func:`read_layout` supplies the expected count and sizes: a stray
    ``<base>.014`` next to a 13-volume archive is then named as unexpected, a missing last volume as missing.
    When the layout cannot be read, the volumes are only listed (numbering checked) as by :func:`find_volumes`.

    Args:
        folder: Folder holding the volumes.
        base: Archive name without the volume number.

    Returns:
        ``(volumes, expected)``: ``expected`` is ``{name: (size, None)}`` for :func:`verify_volumes`, or ``None``.

    Raises:
        ArchivePartError: As in :func:`find_volumes`.
    """
    folder = Path(folder)
    layout = read_layout(folder / f"{base}.001", folder / f"{base}.002")
    if layout is None:
        return find_volumes(folder, base), None
    volumes = find_volumes(folder, base, expected_count=layout.count, source=layout.describe(base))
    return volumes, layout.expected(base)


def _names(numbered: Mapping[int, Path]) -> str:
    return ", ".join(numbered[n].name for n in sorted(numbered))


def sha256_file(path: str | Path, chunk_size: int = CHUNK) -> str:
    """Return the hex sha256 of a file, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def verify_volumes(
    volumes: Sequence[Path],
    expected: Mapping[str, tuple[int | None, str | None]] | None = None,
    *,
    progress: bool = False,
) -> None:
    """Check a volume list: names, sizes and (where known) sha256.

    Every volume but the last must have the same size and the last must not be larger; where ``expected`` knows a
    size or a hash it must match. Sizes are checked for all volumes before any hash is computed.

    Args:
        volumes: Volumes in order, as returned by :func:`find_volumes`.
        expected: ``{volume name: (size or None, sha256 or None)}``, e.g. from the Hub listing; ``None`` when
            nothing is known beyond the volumes themselves.
        progress: Print one line to stderr per hashed volume.

    Raises:
        ArchivePartError: Naming the bad volume with the expected and the actual value. Without ``expected``, a
            short volume that is not the last is named with the volumes after it (strays, if it is the real last
            one), and a first volume shorter than the others is named as truncated.
    """
    if not volumes:
        raise ArchivePartError("no volumes given")
    volumes = [Path(v) for v in volumes]
    names = [v.name for v in volumes]
    if expected is not None:
        absent = sorted(set(expected) - set(names))
        if absent:
            raise ArchivePartError(f"missing volume(s) {', '.join(absent)} (have {', '.join(names)})")
        extra = [n for n in names if n not in expected]
        if extra:
            raise ArchivePartError(f"unexpected volume(s) {', '.join(extra)} (expected {', '.join(sorted(expected))})")
    sizes = [v.stat().st_size for v in volumes]
    for volume, size in zip(volumes, sizes, strict=True):
        want = expected.get(volume.name, (None, None))[0] if expected else None
        if want is not None and size != want:
            raise ArchivePartError(f"{volume.name} has {size} bytes, expected {want}: re-download {volume}")
        if size == 0:
            raise ArchivePartError(f"{volume.name} is empty (0 bytes): re-download {volume}")
    first = sizes[0]
    if len(volumes) > 3 and sizes[1] > first and all(size == sizes[1] for size in sizes[2:-1]):
        raise ArchivePartError(
            f"{names[0]} has {first} bytes, fewer than the {sizes[1]} bytes of every other volume before the last "
            f"({', '.join(names[1:-1])}): truncated first volume, re-download {volumes[0]}"
        )
    for index in range(1, len(volumes) - 1):
        volume, size = volumes[index], sizes[index]
        if size == first:
            continue
        rule = (
            f"{volume.name} has {size} bytes but every volume before the last must have the size of "
            f"{names[0]} ({first} bytes)"
        )
        if size > first:
            raise ArchivePartError(f"{rule}: truncated or mismatched volume {volume}")
        later = names[index + 1 :]
        verb, it = ("does", "it") if len(later) == 1 else ("do", "them")
        raise ArchivePartError(
            f"{rule}: either {volume.name} is the last volume and {', '.join(later)} found beyond it {verb} not "
            f"belong to this archive (remove {it}), or {volume.name} is truncated (re-download {volume})"
        )
    if len(volumes) > 1 and sizes[-1] > first:
        raise ArchivePartError(
            f"last volume {names[-1]} has {sizes[-1]} bytes, more than the {first} bytes of the others: "
            f"mismatched volume {volumes[-1]}"
        )
    for volume in volumes:
        want_sha = expected.get(volume.name, (None, None))[1] if expected else None
        if want_sha is None:
            continue
        if progress:
            print(f"verifying sha256 of {volume.name} ...", file=sys.stderr, flush=True)
        actual = sha256_file(volume)
        if actual != want_sha.lower():
            raise ArchivePartError(f"{volume.name} has sha256 {actual}, expected {want_sha}: re-download {volume}")


class ConcatenatedReader(io.RawIOBase):
    """Read-only, seekable view of several files as one byte stream (the volumes of a split archive).

    Opens at most one volume at a time. Wrap it in :class:`io.BufferedReader` for many small reads.

    Args:
        paths: The volumes, in order.
    """

    def __init__(self, paths: Sequence[str | Path]) -> None:
        super().__init__()
        self._paths = [Path(p) for p in paths]
        if not self._paths:
            raise ValueError("ConcatenatedReader needs at least one file")
        self._starts: list[int] = []
        total = 0
        for path in self._paths:
            self._starts.append(total)
            total += path.stat().st_size
        self._size = total
        self._pos = 0
        self._index: int | None = None
        self._handle: io.BufferedReader | None = None

    @property
    def current_volume(self) -> Path | None:
        """The volume read last (``None`` before the first read): names the culprit of a decoding error."""
        return None if self._index is None else self._paths[self._index]

    def readable(self) -> bool:  # noqa: D102
        return True

    def seekable(self) -> bool:  # noqa: D102
        return True

    def tell(self) -> int:  # noqa: D102
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:  # noqa: D102
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}; valid: 0, 1, 2")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:  # noqa: D102
        self._check_open()
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index = bisect.bisect_right(self._starts, self._pos) - 1
            handle = self._open(index)
            local = self._pos - self._starts[index]
            end = self._starts[index + 1] if index + 1 < len(self._starts) else self._size
            want = min(len(view) - done, end - self._pos)
            handle.seek(local)
            got = handle.readinto(view[done : done + want])
            if not got:
                raise OSError(f"{self._paths[index]} is shorter than when it was listed (changed while reading?)")
            done += got
            self._pos += got
        return done

    def close(self) -> None:  # noqa: D102
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        super().close()

    def _open(self, index: int) -> io.BufferedReader:
        if self._index != index or self._handle is None:
            if self._handle is not None:
                self._handle.close()
            self._handle = open(self._paths[index], "rb")  # noqa: SIM115 - closed in close() / on switch
            self._index = index
        return self._handle

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed ConcatenatedReader")
