"""One definition of "what changes an answer": the ``ModelSettings`` field metadata, read through ``answer_settings``
by both the resume fingerprint and the leaderboard's ``config_hash``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from lmms_eval.utils import simple_parse_args_string

from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.resume import settings_fingerprint
from lrs_plugin.harness.settings import ModelSettings, answer_settings, changes_answer, parse_model_args
from lrs_plugin.leaderboard.model_args import answer_args, config_hash, model_kwargs
from lrs_plugin.leaderboard.results import _model_name

FIELDS = {f.name: f for f in fields(ModelSettings)}

# One other valid value per field, as a --model_args tail; a new field fails test_every_field_has_an_alternate
# until it is listed here (and its metadata decided).
ALTERNATES = {
    "pretrained": "pretrained=/elsewhere/other-ckpt",
    "reducer": "reducer=none",
    "dtype": "dtype=bfloat16",
    "vision_dtype": "vision_dtype=float32",
    "device": "device=cpu",
    "device_map": "device_map=auto",
    "attn_implementation": "attn_implementation=eager",
    "trust_remote_code": "trust_remote_code=true",
    "tile_batch_size": "tile_batch_size=4",
    "max_new_tokens": "max_new_tokens=8",
    "image_cache": "image_cache=3",
    "reuse": "reuse=false",
    "reducer_options": "keep_ratio=0.5",
    "resume_dir": "resume_dir=/elsewhere/store",
    "resume": "resume=false",
    "resume_strict": "resume_strict=true",
}
SCORER_OPTIONS = ["focus=uniform", "focus_layer=2", "focus_llm_layer_list=[2,3]", "pinpoints=checkpoint"]


@pytest.fixture
def base(tmp_path: Path) -> str:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llava"}')
    return f"pretrained={ckpt},reducer=c2f,keep_ratio=0.25,resume_dir={tmp_path / 'store'}"


def _resume_hash(model_args: str) -> str:
    """The model's path: lmms-eval parses the string, the harness builds the settings, the store hashes them."""
    return settings_fingerprint(parse_model_args(simple_parse_args_string(model_args)), plugin_version="1.0")


def _leaderboard_hash(model_args: str) -> str:
    """The leaderboard's path: the results file's config, read as lmms-eval and then the harness read it."""
    answers = answer_args("c2f_llava", model_kwargs({"model_args": model_args}))
    return config_hash("c2f_llava", _model_name(answers["pretrained"]), answers, {"lrs_vqa_fair": 1.0})


def test_every_field_carries_the_metadata():
    for f in FIELDS.values():
        assert isinstance(f.metadata.get("changes_answer"), bool), f.name
        assert isinstance(f.metadata.get("why"), str) and f.metadata["why"].strip(), f.name


def test_every_field_has_an_alternate():
    assert set(ALTERNATES) == set(FIELDS)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_resume_fingerprint_and_leaderboard_hash_agree_on_each_field(base, name):
    changed = f"{base},{ALTERNATES[name]}"
    expected = FIELDS[name].metadata["changes_answer"]
    assert parse_model_args(simple_parse_args_string(changed)) != parse_model_args(simple_parse_args_string(base))
    assert (_resume_hash(changed) != _resume_hash(base)) is expected
    assert (_leaderboard_hash(changed) != _leaderboard_hash(base)) is expected


@pytest.mark.parametrize("option", SCORER_OPTIONS)
def test_reducer_and_scorer_options_change_both_hashes(base, option):
    changed = f"{base},{option}"
    assert _resume_hash(changed) != _resume_hash(base)
    assert _leaderboard_hash(changed) != _leaderboard_hash(base)


@pytest.mark.parametrize("default", ["dtype=auto", "tile_batch_size=16", "focus=auto", "device=None", "batch_size=1"])
def test_a_default_spelled_out_changes_neither_hash(base, default):
    changed = f"{base},{default}"
    assert _resume_hash(changed) == _resume_hash(base)
    assert _leaderboard_hash(changed) == _leaderboard_hash(base)


def test_answer_settings_uses_the_model_args_names():
    settings = parse_model_args(simple_parse_args_string("pretrained=x,keep_ratio=0.25,focus_layer=2,image_cache=2"))
    answers = answer_settings(settings)
    assert answers["keep_ratio"] == 0.25 and answers["focus_layer"] == 2 and answers["focus"] == "auto"
    assert not {"image_cache", "reuse", "resume_dir", "resume", "resume_strict", "reducer_options"} & set(answers)
    assert set(answers) - set(settings.reducer_options) - {"focus_layer"} == {
        name for name, f in FIELDS.items() if f.metadata["changes_answer"] and name != "reducer_options"
    }


def test_changes_answer_by_name():
    assert not changes_answer("image_cache") and not changes_answer("resume_dir") and not changes_answer("reuse")
    assert changes_answer("attn_implementation") and changes_answer("keep_ratio") and changes_answer("batch_size")


def test_a_reducer_option_named_like_a_setting_is_refused():
    settings = ModelSettings(pretrained="x", reducer="fastv", reducer_options={"dtype": "float16"})
    with pytest.raises(ConfigError, match=r"reducer options \['dtype'\] have the names of settings"):
        answer_settings(settings)


def test_reuse_is_on_by_default_and_false_turns_it_off():
    assert parse_model_args(simple_parse_args_string("pretrained=x")).reuse is True
    assert parse_model_args(simple_parse_args_string("pretrained=x,reuse=false")).reuse is False
    assert (
        "reuse"
        not in parse_model_args(simple_parse_args_string("pretrained=x,reducer=none,reuse=true")).reducer_options
    )


@pytest.mark.parametrize(("value", "shown"), [("maybe", "'maybe'"), ("yes", "'yes'"), ("1", "1")])
def test_a_bad_reuse_value_is_refused_naming_it(value, shown):
    with pytest.raises(ConfigError, match=rf"reuse must be true or false; got {shown}$"):
        parse_model_args(simple_parse_args_string(f"pretrained=x,reuse={value}"))
