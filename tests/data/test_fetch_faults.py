"""``lrs-plugin fetch lrs_vqa`` under faults (issue 15): stray or missing volumes, a killed fetch, two fetches at once.

* ``--parts-dir`` has no Hub listing, so the volume count and sizes come from the start header of
  ``LRS_VQA.7z.001``: a stray ``LRS_VQA.7z.014`` next to a 13-volume archive is named as the stray (it used to fail
  the size check of the good ``.013``), a missing last volume is named as missing, a short one with its expected size;
* the 7-Zip child dies with a ``SIGKILL``-ed fetch (``PR_SET_PDEATHSIG``), is killed with its process group on
  Ctrl-C, and inherits the fetch lock; the rerun removes the stale ``.extract-partial-*`` folder and extracts;
* a second fetch of the same root waits for the lock (saying so) and creates nothing beside the first.

The killed fetches run the real CLI in a subprocess with a fake ``7zz`` first on ``PATH``: a small Python script that
records its pid and appends a byte every 0.05 s to a file in its output folder, until it is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lrs_plugin.data import archive, lrs_vqa
from lrs_plugin.data._child import child_options
from lrs_plugin.data._lock import exclusive_lock
from lrs_plugin.data.synthetic.lrs_vqa import write_lrs_vqa_archive
from lrs_plugin.errors import ArchivePartError

HAS_7Z = any(shutil.which(name) for name in archive.BINARY_NAMES)
LINUX = sys.platform.startswith("linux")

FAKE_7ZZ = """#!{python} -S
import os, sys, time
if sys.argv[1] != "x":  # "l": an empty listing
    sys.exit(0)
out = next(arg[2:] for arg in sys.argv if arg.startswith("-o"))
os.makedirs(os.path.join(out, "LRS_VQA"), exist_ok=True)
with open(os.environ["FAKE_7ZZ_PID"] + ".tmp", "w") as handle:
    handle.write(str(os.getpid()))
os.replace(os.environ["FAKE_7ZZ_PID"] + ".tmp", os.environ["FAKE_7ZZ_PID"])
deadline = time.monotonic() + 60
with open(os.path.join(out, "LRS_VQA", "slow.bin"), "ab", buffering=0) as handle:
    while time.monotonic() < deadline:
        handle.write(b"x")
        time.sleep(0.05)
"""


# ------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def parts13(lrs_vqa_tree, tmp_path_factory) -> Path:
    """The fixture archive split like the release: 13 volumes."""
    return write_lrs_vqa_archive(lrs_vqa_tree, tmp_path_factory.mktemp("parts13"), num_parts=13)[0].parent


@pytest.fixture(scope="module")
def parts3(lrs_vqa_tree, tmp_path_factory) -> Path:
    return write_lrs_vqa_archive(lrs_vqa_tree, tmp_path_factory.mktemp("parts3"), num_parts=3)[0].parent


def copy_parts(parts: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    dest.mkdir(parents=True)
    for volume in sorted(parts.iterdir()):
        if volume.name not in skip:
            shutil.copy2(volume, dest / volume.name)
    return dest


def partials(root: Path) -> list[Path]:
    return sorted(root.glob(archive.PARTIAL_PREFIX + "*"))


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def fake_env(tmp_path: Path) -> dict[str, str]:
    """Environment whose PATH finds the fake ``7zz`` first; the fake writes its pid to ``tmp_path/7zz.pid``."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "7zz"
    fake.write_text(FAKE_7ZZ.format(python=sys.executable))
    fake.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_7ZZ_PID": str(tmp_path / "7zz.pid"),
        "HF_HUB_OFFLINE": "1",
    }


def start_fetch(root: Path, parts: Path, env: dict[str, str], log: Path, extractor: str) -> subprocess.Popen:
    """``lrs-plugin fetch lrs_vqa --parts-dir`` in a subprocess; stdout and stderr go to ``log``."""
    cmd = [sys.executable, "-m", "lrs_plugin.cli", "fetch", "lrs_vqa", "--root", str(root), "--parts-dir", str(parts)]
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [*cmd, "--extractor", extractor],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_sigint_as_in_a_terminal if os.name == "posix" else None,
        )


def _sigint_as_in_a_terminal() -> None:
    """Give the fetch the default SIGINT action of a terminal job: a test run started in the background (``nohup
    ... &`` without job control) inherits SIGINT ignored, and Python then never raises ``KeyboardInterrupt``."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fetch_in_extraction(tmp_path: Path, parts: Path) -> tuple[subprocess.Popen, int, Path]:
    """Start a fetch with the fake ``7zz`` and return ``(fetch, pid of the fake, the file it grows)`` once it writes."""
    root = tmp_path / "root"
    proc = start_fetch(root, parts, fake_env(tmp_path), tmp_path / "first.log", "7z")
    pid_file = tmp_path / "7zz.pid"
    if not wait_for(pid_file.is_file, 20):
        proc.kill()
        pytest.fail(f"the fetch never started the fake 7zz: {(tmp_path / 'first.log').read_text()}")
    pid = int(pid_file.read_text())
    (partial,) = partials(root)
    slow = partial / "LRS_VQA" / "slow.bin"
    assert wait_for(lambda: slow.is_file() and slow.stat().st_size > 0, 5)
    return proc, pid, slow


def kill_fetch(proc: subprocess.Popen, pid: int) -> bool:
    """SIGKILL the fetch; return whether its 7-Zip child was gone within 2 s (it is killed in any case)."""
    proc.kill()
    proc.wait(timeout=10)
    gone = wait_for(lambda: not alive(pid), 2.0)
    if not gone:
        os.kill(pid, signal.SIGKILL)
    return gone


# ------------------------------------------------------------------------------------------------------------------
# Stray, missing and short volumes in --parts-dir


def test_parts_dir_with_a_stray_014_names_the_stray_not_the_good_013(parts13, tmp_path):
    parts = copy_parts(parts13, tmp_path / "parts")
    (parts / "LRS_VQA.7z.014").write_bytes(b"\x00" * 49479)
    root = tmp_path / "root"
    with pytest.raises(ArchivePartError) as caught:
        lrs_vqa.fetch(root, parts_dir=parts, extractor="py7zr", progress=False)
    message = str(caught.value)
    assert "unexpected: LRS_VQA.7z.014, found beyond the 13 volumes of LRS_VQA.7z" in message
    assert "the start header of LRS_VQA.7z.001 gives an archive of" in message and "remove it" in message
    assert "LRS_VQA.7z.013 has" not in message
    assert not (root / lrs_vqa.MARKER_NAME).exists() and not partials(root)


def test_cli_parts_dir_with_a_stray_014_exits_2_naming_it(parts13, tmp_path):
    parts = copy_parts(parts13, tmp_path / "parts")
    shutil.copy2(parts / "LRS_VQA.7z.001", parts / "LRS_VQA.7z.014")
    done = subprocess.run(
        [sys.executable, "-m", "lrs_plugin.cli", "fetch", "lrs_vqa", "--root", str(tmp_path / "root")]
        + ["--parts-dir", str(parts), "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {parts} holds 14 volumes of LRS_VQA.7z but 13 are expected; ")
    assert "unexpected: LRS_VQA.7z.014, found beyond the 13 volumes" in done.stderr


def test_parts_dir_stray_after_a_gap_is_named_as_stray_not_as_a_missing_volume(parts3, tmp_path):
    parts = copy_parts(parts3, tmp_path / "parts")
    (parts / "LRS_VQA.7z.005").write_bytes(b"stray")
    with pytest.raises(ArchivePartError, match=r"unexpected: LRS_VQA\.7z\.005, found beyond the 3 volumes") as caught:
        lrs_vqa.fetch(tmp_path / "root", parts_dir=parts, extractor="py7zr", progress=False)
    assert "missing" not in str(caught.value)


def test_parts_dir_missing_last_volume_is_named_missing(parts13, tmp_path):
    parts = copy_parts(parts13, tmp_path / "parts", skip=("LRS_VQA.7z.013",))
    with pytest.raises(ArchivePartError, match=r"missing volume\(s\) LRS_VQA\.7z\.013 in .*LRS_VQA\.7z has 13 volumes"):
        lrs_vqa.fetch(tmp_path / "root", parts_dir=parts, extractor="py7zr", progress=False)


def test_parts_dir_missing_and_stray_volumes_are_both_named(parts13, tmp_path):
    parts = copy_parts(parts13, tmp_path / "parts", skip=("LRS_VQA.7z.012",))
    (parts / "LRS_VQA.7z.014").write_bytes(b"stray")
    with pytest.raises(ArchivePartError, match=r"unexpected: LRS_VQA\.7z\.014.*missing volume\(s\) LRS_VQA\.7z\.012"):
        lrs_vqa.fetch(tmp_path / "root", parts_dir=parts, extractor="py7zr", progress=False)


def test_parts_dir_truncated_last_volume_is_named_with_its_expected_size(parts13, tmp_path):
    parts = copy_parts(parts13, tmp_path / "parts")
    last = parts / "LRS_VQA.7z.013"
    size = last.stat().st_size
    last.write_bytes(last.read_bytes()[:-10])
    with pytest.raises(ArchivePartError, match=rf"LRS_VQA\.7z\.013 has {size - 10} bytes, expected {size}"):
        lrs_vqa.fetch(tmp_path / "root", parts_dir=parts, extractor="py7zr", progress=False)


def test_unreadable_start_header_still_names_the_stray_in_the_size_check(parts13, tmp_path):
    parts = copy_parts(parts13, tmp_path / "parts")
    first = parts / "LRS_VQA.7z.001"
    data = bytearray(first.read_bytes())
    data[9] ^= 0xFF  # start header CRC: the layout can no longer be trusted
    first.write_bytes(bytes(data))
    (parts / "LRS_VQA.7z.014").write_bytes(b"\x00" * 49479)
    assert archive.read_layout(first) is None
    with pytest.raises(ArchivePartError) as caught:
        lrs_vqa.fetch(tmp_path / "root", parts_dir=parts, extractor="py7zr", progress=False)
    message = str(caught.value)
    assert "either LRS_VQA.7z.013 is the last volume and LRS_VQA.7z.014 found beyond it" in message
    assert "(remove it)" in message


def test_truncated_first_volume_is_blamed_not_the_second(parts13, tmp_path):
    parts = copy_parts(parts13, tmp_path / "parts")
    first = parts / "LRS_VQA.7z.001"
    first.write_bytes(first.read_bytes()[:-100])
    assert archive.read_layout(first, parts / "LRS_VQA.7z.002") is None
    with pytest.raises(ArchivePartError, match=r"LRS_VQA\.7z\.001 has \d+ bytes, fewer .* truncated first volume"):
        lrs_vqa.fetch(tmp_path / "root", parts_dir=parts, extractor="py7zr", progress=False)


@pytest.mark.parametrize("num_parts", [1, 2, 13])
def test_parts_dirs_of_any_volume_count_still_fetch(num_parts, lrs_vqa_tree, tmp_path):
    parts = write_lrs_vqa_archive(lrs_vqa_tree, tmp_path / "parts", num_parts=num_parts)
    volumes, expected = archive.find_local_volumes(tmp_path / "parts")
    assert volumes == parts and expected == {v.name: (v.stat().st_size, None) for v in parts}
    root = lrs_vqa.fetch(tmp_path / "root", parts_dir=tmp_path / "parts", extractor="py7zr", progress=False)
    assert tree(root / "LRS_VQA") == tree(lrs_vqa_tree / "LRS_VQA")


# ------------------------------------------------------------------------------------------------------------------
# A killed fetch, its 7-Zip child and the rerun


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
def test_sigkill_of_fetch_mid_extraction_takes_the_7z_child_with_it(parts3, tmp_path):
    proc, pid, slow = fetch_in_extraction(tmp_path, parts3)
    assert kill_fetch(proc, pid), f"7zz child {pid} still runs 2 s after its fetch was SIGKILLed"
    size = slow.stat().st_size
    time.sleep(0.2)
    assert slow.stat().st_size == size  # nobody writes into the partial folder any more
    root = tmp_path / "root"
    assert partials(root) == [slow.parent.parent] and not (root / lrs_vqa.MARKER_NAME).exists()


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
def test_rerun_after_a_killed_fetch_removes_the_stale_partial_and_extracts(parts3, lrs_vqa_tree, tmp_path):
    proc, pid, slow = fetch_in_extraction(tmp_path, parts3)
    assert kill_fetch(proc, pid)
    stale = slow.parent.parent
    root = lrs_vqa.fetch(tmp_path / "root", parts_dir=parts3, extractor="auto", progress=False)  # real PATH: no fake
    assert not stale.exists() and not partials(root)
    assert tree(root / "LRS_VQA") == tree(lrs_vqa_tree / "LRS_VQA")
    marker = (root / lrs_vqa.MARKER_NAME).read_text()
    assert f'"extractor": "{"7z" if HAS_7Z else "py7zr"}"' in marker


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a subprocess is POSIX-only")
def test_ctrl_c_mid_extraction_kills_the_7z_group_and_removes_the_partial(parts3, tmp_path):
    proc, pid, slow = fetch_in_extraction(tmp_path, parts3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) != 0
    gone = wait_for(lambda: not alive(pid), 2.0)
    if not gone:
        os.kill(pid, signal.SIGKILL)
    assert gone, "the fetch returned from Ctrl-C but left its 7zz child running"
    assert "KeyboardInterrupt" in (tmp_path / "first.log").read_text()
    assert not slow.parent.parent.exists() and not partials(tmp_path / "root")


# ------------------------------------------------------------------------------------------------------------------
# The lock


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
def test_second_fetch_waits_for_the_lock_and_extracts_nothing_beside_the_first(parts3, lrs_vqa_tree, tmp_path):
    proc, pid, slow = fetch_in_extraction(tmp_path, parts3)
    root = tmp_path / "root"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no fake 7zz: the second fetch extracts for real
    log = tmp_path / "second.log"
    second = start_fetch(root, parts3, env, log, "auto")
    try:
        assert wait_for(lambda: "waiting for another fetch of" in log.read_text(), 15), log.read_text()
        assert f"(lock {root / lrs_vqa.LOCK_NAME})" in log.read_text()
        time.sleep(0.3)
        assert second.poll() is None and partials(root) == [slow.parent.parent]  # nothing beside the first
        assert kill_fetch(proc, pid)
        assert second.wait(timeout=30) == 0, log.read_text()
    finally:
        if second.poll() is None:
            second.kill()
    assert "LRS-VQA ready in" in log.read_text()
    assert not partials(root) and (root / lrs_vqa.MARKER_NAME).is_file()
    assert tree(root / "LRS_VQA") == tree(lrs_vqa_tree / "LRS_VQA")


@pytest.mark.skipif(os.name != "posix", reason="flock descriptors are POSIX-only")
def test_a_child_given_the_lock_fd_keeps_the_lock_after_the_parent_lets_go(tmp_path):
    import fcntl

    path = tmp_path / "x.lock"
    with exclusive_lock(path) as fd:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], **child_options([fd]))
    probe = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the child still holds it
        child.kill()
        child.wait(timeout=10)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the child is gone
    finally:
        os.close(probe)
        if child.poll() is None:
            child.kill()
