"""Contract over EVERY registered reducer on tiny backbones: an answer, never zero tokens, budget, keep-all == none.

Every reducer's record round-trips through its JSON object and writes only keys that are fields of the record.
Pre-LLM reducers must send their vision tokens through :meth:`Backbone.generate`; its ``inputs_embeds`` are captured
and a keep-all run must hand the LLM exactly what ``none`` does. A reducer that sends no vision token (``blind``)
is exempt from the token and budget rules: it must send zero, encode nothing, record no focus recall and give the
LLM exactly the text-only prompt. A reducer whose ``archs`` exclude a variant's
architecture must be refused by :func:`build_reducer` with a :class:`ConfigError` naming that architecture.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.record import SampleRecord
from lrs_plugin.reducers.base import ReducerOutput
from lrs_plugin.reducers.registry import available_reducers, build_reducer, reducer_spec

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]
BUDGET = 20

Stats = SampleRecord


@dataclass(frozen=True)
class Case:
    """How the contract runs one reducer.

    Attributes:
        keep_all: Options that keep everything (must equal ``none``: text, tokens to the LLM, ``inputs_embeds``), or
            ``None`` when the method cannot equal ``none`` by design (then it has its own reference tests).
        budgeted: Options of a reduced run. A ``"budget"`` / ``"token_budget"`` entry is checked generically.
        check: Extra assertions on the budgeted run, ``check(stats, none_stats)``.
        vision: ``False`` for a reducer that sends no vision token (``blind``, the language-prior floor).
    """

    keep_all: dict[str, Any] | None
    budgeted: dict[str, Any]
    check: Callable[[Stats, Stats], None] | None = None
    vision: bool = True


def _anyres_check(stats: Stats, ref: Stats) -> None:
    assert stats.tiles_encoded == 2  # base image + one grid tile
    assert stats.vision_tokens_to_llm < ref.vision_tokens_to_llm


def _visionzip_check(stats: Stats, ref: Stats) -> None:
    assert stats.vision_tokens_to_llm == stats.tiles_encoded * (4 + 2)


def _prumerge_check(stats: Stats, ref: Stats) -> None:
    # 16 patches per tile at reduction_ratio=0.25: 4 top + 4 uniform samples + the pruned-summary token.
    assert stats.vision_tokens_to_llm == stats.tiles_encoded * 9 <= stats.vision_tokens_encoded


TABLE: dict[str, Case] = {
    "none": Case({}, {}),
    "random": Case({}, {"budget": BUDGET, "seed": 0}),
    "downsample": Case({}, {"max_pixels": 56 * 56}),
    "fastv": Case({"r": 0.0}, {"budget": BUDGET}),
    "pdrop": Case({"lam": 1.0}, {"budget": BUDGET}),
    # C2F encodes its own pyramid tiles, never the stock layout.
    "c2f": Case(None, {"token_budget": 200, "focus_options": {"layer": 1}}),
    # LLaVA-NeXT only; max_tiles=None is the stock anyres grid.
    "anyres": Case({}, {"max_tiles": 1}, _anyres_check),
    # Adds the CLIP [CLS] state and drops unpadding / newlines, so it never equals ``none``.
    "visionzip": Case(None, {"dominant": 4, "contextual": 2}, _visionzip_check),
    # Merged tokens plus a pruned-summary token per tile, no newlines: it never equals ``none``.
    "prumerge": Case(None, {"adaptive": False, "reduction_ratio": 0.25}, _prumerge_check),
    # The question without its image: no vision token, no budget, no recall; cannot equal ``none``.
    "blind": Case(None, {}, vision=False),
}


@pytest.fixture(scope="module")
def backbones(tiny_backbones) -> dict[tuple[str, str], Backbone]:
    return {v: tiny_backbones[v] for v in VARIANTS}


@pytest.fixture(scope="module")
def image_path(make_image_file) -> str:
    return str(make_image_file(150, 230, high=255))


class _Spy:
    """Records the ``inputs_embeds`` of every :meth:`Backbone.generate` call on one backbone instance."""

    def __init__(self, bb: Backbone, mp: pytest.MonkeyPatch) -> None:
        self.calls: list[torch.Tensor] = []
        original = bb.generate

        def generate(inputs_embeds: torch.Tensor, **kwargs: Any):
            self.calls.append(inputs_embeds.detach().clone())
            return original(inputs_embeds, **kwargs)

        mp.setattr(bb, "generate", generate)

    def ask(self, name: str, bb: Backbone, options: dict[str, Any], image_path: str) -> tuple[ReducerOutput, Any]:
        """``(answer, inputs_embeds handed to generate or None)`` of one question."""
        self.calls.clear()
        reducer = build_reducer(name, bb, dict(options))
        try:
            out = reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=4)
        finally:
            reducer.close()
        assert len(self.calls) <= 1, f"{name}: generate called {len(self.calls)} times for one answer"
        return out, (self.calls[0] if self.calls else None)


@pytest.fixture(scope="module")
def refs(backbones, image_path) -> Iterator[dict[tuple[str, str], tuple[ReducerOutput, torch.Tensor]]]:
    """``none``'s answer and ``inputs_embeds`` per variant, computed once."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for v, bb in backbones.items():
            answer, embeds = _Spy(bb, mp).ask("none", bb, {}, image_path)
            assert embeds is not None
            out[v] = (answer, embeds)
    yield out


def test_every_registered_reducer_has_a_table_entry() -> None:
    missing = sorted(set(available_reducers()) - set(TABLE))
    assert not missing, f"add {missing} to TABLE in tests/reducers/test_reducer_contract.py"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "_".join(v))
@pytest.mark.parametrize("name", available_reducers())
def test_contract(backbones, image_path, refs, monkeypatch, variant, name) -> None:
    assert name in TABLE, f"reducer {name!r} has no entry in TABLE"
    case = TABLE[name]
    bb = backbones[variant]
    spec = reducer_spec(name)
    if bb.arch not in spec.archs:  # refused, not skipped: the rest of the contract does not apply here
        for options in (case.budgeted, case.keep_all or {}):
            with pytest.raises(ConfigError, match=rf"\b{re.escape(bb.arch)}\b"):
                build_reducer(name, bb, dict(options))
        return
    ref, ref_embeds = refs[variant]
    spy = _Spy(bb, monkeypatch)
    out, embeds = spy.ask(name, bb, case.budgeted, image_path)
    assert isinstance(out.text, str)
    for key in ("tiles_encoded", "vision_tokens_encoded", "llm_input_len", "new_tokens", "focus_passes"):
        assert key in out.record.to_dict()
    if not case.vision:  # the exemptions: nothing encoded or sent, the text-only prompt, no recall
        record = out.record
        assert record.vision_tokens_to_llm == record.vision_tokens_encoded == record.tiles_encoded == 0
        assert embeds is not None and torch.equal(embeds[0], bb.embed_ids(bb.text_prompt_ids("What is it?")))
        assert record.llm_input_len == embeds.shape[1] and record.focus_recall is None
        return
    assert out.record.vision_tokens_to_llm >= 1
    if spec.stage == "pre_llm":  # the LLM sees exactly the recorded sequence: the prompt text + the vision tokens
        assert embeds is not None, f"pre-LLM reducer {name!r} did not call Backbone.generate"
        assert embeds.shape[1] == out.record.llm_input_len
        text_len = ref.record.llm_input_len - ref.record.vision_tokens_to_llm
        assert out.record.llm_input_len - out.record.vision_tokens_to_llm == text_len
    if spec.stage in ("pre_llm", "pyramid"):  # budget = vision tokens sent to the LLM, newline tokens included
        if "budget" in case.budgeted:
            assert out.record.vision_tokens_to_llm <= case.budgeted["budget"]
        if "token_budget" in case.budgeted:
            assert out.record.vision_tokens_to_llm <= case.budgeted["token_budget"]
    else:  # in_llm: budget = vision tokens averaged over the LLM layers
        assert out.record.in_llm.equivalent_vision_tokens <= case.budgeted["budget"] or not out.record.budget_met
        assert min(out.record.in_llm.vision_tokens_per_layer) >= 1
    if case.check is not None:
        case.check(out.record, ref.record)
    if case.keep_all is not None:
        same, same_embeds = spy.ask(name, bb, case.keep_all, image_path)
        assert same.text == ref.text
        assert same.record.vision_tokens_to_llm == ref.record.vision_tokens_to_llm
        if spec.stage == "pre_llm":
            assert same_embeds is not None, f"pre-LLM reducer {name!r} did not call Backbone.generate"
        if same_embeds is not None:  # in-LLM reducers may run their own prefill instead
            assert same_embeds.shape == ref_embeds.shape
            assert torch.equal(same_embeds, ref_embeds), (same_embeds - ref_embeds).abs().max()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "_".join(v))
@pytest.mark.parametrize("name", available_reducers())
def test_record_round_trips_and_every_key_is_a_field(backbones, image_path, variant, name) -> None:
    bb = backbones[variant]
    if bb.arch not in reducer_spec(name).archs:
        return
    case = TABLE[name]
    for options in [case.budgeted] + ([case.keep_all] if case.keep_all is not None else []):
        for doc in ({}, {"hbox": [20, 10, 90, 60]}):  # without and with a target box (focus recall)
            reducer = build_reducer(name, bb, dict(options))
            try:
                out = reducer.answer(image_path, "What is it?", doc=doc, max_new_tokens=3)
            finally:
                reducer.close()
            record = out.record
            assert isinstance(record, SampleRecord) and record.extra == {}
            data = record.to_dict()
            unknown = set(data) - set(SampleRecord.json_keys())
            assert not unknown, f"{name} writes keys that are no field of SampleRecord: {sorted(unknown)}"
            assert SampleRecord.from_dict(data) == record
            assert SampleRecord.from_dict(json.loads(json.dumps(data))) == record  # as a resume file reads it back
