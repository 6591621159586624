"""The install rules both data modules share (lrs_plugin.data._install): marker, lock, where a root comes from."""

from __future__ import annotations

import threading

import pytest

from lrs_plugin.data import _install, lrs_vqa
from lrs_plugin.data import mme_realworld_rs as mme
from lrs_plugin.data._install import install_lock, marker_name, marker_revision, requested_root, write_marker
from lrs_plugin.data._lock import exclusive_lock


def test_marker_names_and_revision(tmp_path):
    assert lrs_vqa.MARKER_NAME == marker_name("lrs_vqa") == ".lrs_vqa_complete.json"
    assert mme.MARKER_NAME == marker_name("mmerealworld_rs") == ".mmerealworld_rs_complete.json"
    write_marker(tmp_path, "m.json", {"revision": "v1", "extra": 1})
    assert marker_revision(tmp_path, "m.json") == "v1" and not (tmp_path / "m.json.tmp").exists()
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "torn.json").write_text('{"revision": ')
    assert [marker_revision(tmp_path, n) for n in ("list.json", "torn.json", "absent.json")] == [None, None, None]


def test_requested_root_is_the_argument_then_the_variable(monkeypatch):
    monkeypatch.setenv("SOME_ROOT", "/from/env")
    assert requested_root("given", "SOME_ROOT") == ("given", "the given root")
    assert requested_root(None, "SOME_ROOT") == ("/from/env", "$SOME_ROOT")
    monkeypatch.setenv("SOME_ROOT", "")
    assert requested_root(None, "SOME_ROOT") == (None, "$SOME_ROOT")


def test_a_second_install_says_it_waits(tmp_path):
    heard: list[str] = []
    entered = threading.Event()

    def second() -> None:
        with install_lock(tmp_path / "root", "x.lock", say=heard.append):
            entered.set()

    (tmp_path / "root").mkdir()
    with exclusive_lock(tmp_path / "root" / "x.lock"):
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.5)
    thread.join(10)
    assert entered.is_set() and heard == [
        f"waiting for another fetch of {tmp_path / 'root'} to finish (lock {tmp_path / 'root' / 'x.lock'})"
    ]


@pytest.mark.parametrize(
    ("module", "fetch_kwargs"), [(lrs_vqa, {"parts_dir": "."}), (mme, {"source_dir": "."})], ids=["lrs_vqa", "mme"]
)
def test_both_fetches_hold_the_shared_lock(module, fetch_kwargs, tmp_path, monkeypatch):
    calls = []

    class Stop(Exception):
        pass

    def recording_lock(root, lock_name, say=None):
        calls.append((root, lock_name))
        raise Stop

    assert module.install_lock is _install.install_lock
    monkeypatch.setattr(module, "install_lock", recording_lock)
    with pytest.raises(Stop):
        module.fetch(tmp_path / "root", progress=False, **fetch_kwargs)
    assert calls == [(tmp_path / "root", module.LOCK_NAME)]
