"""Stop strings: lmms-eval's ``until`` read once, the decoded-text criterion, and the one cut of the text."""

from __future__ import annotations

import pytest
import torch

from lrs_plugin.backbone.stops import cut_at_stop, stop_criterion, stop_strings_of, stopping_criteria
from lrs_plugin.errors import ConfigError


@pytest.mark.parametrize(
    ("until", "stops"),
    [
        (None, ()),
        ("\n\n", ("\n\n",)),
        (["\n\n", "", "."], ("\n\n", ".")),
        (("a", "a", "b"), ("a", "b")),
        ([], ()),
    ],
)
def test_stop_strings_of_reads_lmms_evals_until(until, stops):
    assert stop_strings_of(until) == stops


@pytest.mark.parametrize("until", [5, [5], ["a", None], {"a"}, b"\n"])
def test_a_malformed_until_is_a_config_error_naming_it(until):
    with pytest.raises(ConfigError, match=r"until=.* must be a string or a list of strings"):
        stop_strings_of(until)


def _cut_afterwards(raw: str, stops: list[str]) -> str:
    """What c2f_llava did before stop strings ended generation: strip the answer, split at each stop, strip."""
    text = raw.strip()
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


@pytest.mark.parametrize(
    ("raw", "stops", "want"),
    [
        ("red car", [], "red car"),
        ("  red car \n", None, "red car"),
        ("red\n\nblue", ["\n\n"], "red"),
        ("\n\nred\n\nblue", ["\n\n"], "red"),  # a stop inside the leading whitespace does not cut
        ("red. blue\n\nx", ["\n\n", "."], "red"),
        ("red car", ["car", "red"], ""),
        ("a b", ["", "b"], "a"),
    ],
)
def test_cut_at_stop_is_the_old_cut(raw, stops, want):
    assert cut_at_stop(raw, stops) == want == _cut_afterwards(raw, stops or [])


def test_criterion_fires_at_the_token_that_first_shows_a_stop_string(tiny_backbones):
    tokenizer = tiny_backbones[("llava_next", "qwen2")].tokenizer
    assert stop_criterion(tokenizer, None) is None and stop_criterion(tokenizer, ["", ""]) is None
    ids = tokenizer.encode("\n\nred car. blue\n\nx", add_special_tokens=False)
    texts = [tokenizer.decode(ids[:t]) for t in range(1, len(ids) + 1)]
    for stops in (["\n\n"], ["."], ["blue", "car"]):
        stopped = stop_criterion(tokenizer, stops)
        fired = [t for t in range(1, len(ids) + 1) if stopped(ids[:t])]
        first = next(t for t, text in enumerate(texts, start=1) if any(s in text.lstrip() for s in stops))
        assert fired and fired[0] == first
        # generating to ``first`` tokens and cutting gives what generating everything and cutting gives
        assert cut_at_stop(texts[first - 1], stops) == cut_at_stop(texts[-1], stops)
    assert texts[1] == "\n\n" and not stop_criterion(tokenizer, ["\n\n"])(ids[:2])  # leading blank line: go on


def test_stopping_criteria_for_generate_answers_per_row(tiny_backbones):
    tokenizer = tiny_backbones[("llava", "llama")].tokenizer
    assert stopping_criteria(tokenizer, []) is None
    (criterion,) = stopping_criteria(tokenizer, ["."])
    rows = [tokenizer.encode(text, add_special_tokens=False) for text in ("red car.", "red car ")]
    width = min(len(r) for r in rows)
    batch = torch.tensor([r[-width:] for r in rows])
    assert criterion(batch, None).tolist() == [True, False]
