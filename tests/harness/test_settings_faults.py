"""``pretrained`` values that name a missing local folder fail with a typed error, not in the Hub resolver.

A Hub id (``name`` / ``org/name``) still goes to transformers unchanged: the download function is replaced, so no
test touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.checkpoint_source import is_hub_id, resolve_pretrained
from lrs_plugin.errors import CheckpointNotFoundError, LrsPluginError

HUB_ID = "lmms-lab/llava-onevision-qwen2-7b-ov"
EXPECTED = (
    "expected a folder holding config.json (a transformers checkpoint, e.g. written by save_pretrained or "
    "`lrs-plugin convert`) or a Hub id 'org/name' (letters, digits, '.', '_', '-'; "
    "e.g. 'lmms-lab/llava-onevision-qwen2-7b-ov')"
)


class _Downloaded(Exception):
    """Raised by the fake download function: the value reached the Hub resolver."""


@pytest.fixture
def hub_calls(monkeypatch, tmp_path) -> list[tuple[str, str]]:
    """Replace transformers' Hub download with a recorder that raises :class:`_Downloaded` (empty Hub cache)."""
    import huggingface_hub.constants
    import transformers.utils.hub

    calls: list[tuple[str, str]] = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        raise _Downloaded(repo_id)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", fake_download)
    return calls


# ------------------------------------------------------------------------------------------------ the Hub id rule
@pytest.mark.parametrize("value", [HUB_ID, "gpt2", "org/name.v1_2", "llava-hf/llava-1.5-7b-hf", "_x/y_"])
def test_is_hub_id_accepts_name_and_org_name(value):
    assert is_hub_id(value)


@pytest.mark.parametrize(
    "value",
    ["/nonexistent", "./ckpt", "../ckpt", "~/ckpt", "a/b/c", "org/", "/org/name", "org\\name", "my model", "a--b"],
)
def test_is_hub_id_refuses_values_that_are_paths(value):
    assert not is_hub_id(value)


# ---------------------------------------------------------------------------------------------- missing folders
def test_pretrained_nonexistent_absolute_path_is_checkpoint_not_found_naming_the_path():
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_pretrained("/nonexistent")
    assert isinstance(info.value, LrsPluginError) and isinstance(info.value, FileNotFoundError)
    assert str(info.value) == f"pretrained='/nonexistent': checkpoint folder '/nonexistent' not found; {EXPECTED}"


@pytest.mark.parametrize("value", ["./missing_ckpt", "../missing_ckpt", "~/missing_ckpt", "runs/a/missing", "x y"])
def test_pretrained_missing_path_of_any_form_is_checkpoint_not_found_without_the_hub(
    value, hub_calls, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(CheckpointNotFoundError) as info:
        Backbone.from_pretrained(value)
    shown = str(Path(value).expanduser().absolute())
    assert str(info.value) == f"pretrained={value!r}: checkpoint folder {shown!r} not found; {EXPECTED}"
    assert hub_calls == []


def test_pretrained_path_object_that_is_missing_is_checkpoint_not_found(tmp_path, hub_calls):
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint folder '.*/gone' not found; expected a folder"):
        Backbone.from_pretrained(tmp_path / "gone")
    assert hub_calls == []


def test_pretrained_folder_without_config_json_is_checkpoint_not_found(tmp_path, hub_calls):
    folder = tmp_path / "weights_only"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointNotFoundError) as info:
        Backbone.from_pretrained(str(folder))
    shown = repr(str(folder))
    assert (
        str(info.value)
        == f"pretrained={shown}: folder {shown} holds no config.json, so it is not a checkpoint; {EXPECTED}"
    )
    assert hub_calls == []


def test_pretrained_naming_a_file_is_checkpoint_not_found(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("{}")
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_pretrained(str(config))
    shown = repr(str(config))
    assert str(info.value) == f"pretrained={shown}: {shown} is a file, not a checkpoint folder; {EXPECTED}"


def test_pretrained_with_tilde_resolves_to_the_expanded_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert resolve_pretrained("~/ckpt") == tmp_path / "ckpt"


# -------------------------------------------------------------------------------------------------------- Hub ids
@pytest.mark.parametrize("value", [HUB_ID, "llava-tiny"])
def test_pretrained_hub_id_reaches_the_hub_download_unchanged(value, hub_calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    assert resolve_pretrained(value) == value
    with pytest.raises(OSError) as info:
        Backbone.from_pretrained(value)
    assert not isinstance(info.value, CheckpointNotFoundError)
    assert hub_calls == [(value, "config.json")]


# ------------------------------------------------------------------------------------------- model constructor
def test_c2f_llava_with_pretrained_nonexistent_raises_checkpoint_not_found(hub_calls):
    from lrs_plugin.models.c2f_llava import C2FLlava

    with pytest.raises(CheckpointNotFoundError) as info:
        C2FLlava(pretrained="/nonexistent", device="cpu", reducer="none")
    assert str(info.value) == f"pretrained='/nonexistent': checkpoint folder '/nonexistent' not found; {EXPECTED}"
    assert hub_calls == []
