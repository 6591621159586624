"""The typed per-sample record: its JSON object (the stats dict of sample logs and resume files) and the hand-off."""

from __future__ import annotations

import json

import pytest

from lrs_plugin.errors import SampleRecordError
from lrs_plugin.flops.accounting import EFFICIENCY_KEYS, efficiency_figures
from lrs_plugin.harness.record import (
    C2FDetails,
    C2FLevel,
    FastVKnobs,
    FocusPass,
    FocusRecall,
    InLLMDetails,
    PDropKnobs,
    SampleRecord,
    SampleRecordStore,
    StageSeconds,
)

# The stats dicts earlier versions wrote (keys and values as in resume files of lrs-plugin before the record).
OLD_FASTV = {
    "tiles_encoded": 5, "vision_tokens_encoded": 80, "vision_tokens_to_llm": 76, "llm_input_len": 96,
    "new_tokens": 6, "focus_passes": [], "llm_tokens_per_layer": [96, 96, 58, 58],
    "vision_tokens_per_layer": [76, 76, 38, 38], "equivalent_vision_tokens": 57.0, "position_ids": "original",
    "fastv_k": 2, "fastv_r": 0.5, "fastv_keep": 38, "budget": None, "focus_tile_recall": None,
    "focus_token_recall": None, "latency_s": 0.25, "tflops_by_stage": {"vision_tower": 1e-06, "total": 2e-06},
    "tflops": 2e-06, "reducer": "fastv",
}  # fmt: skip
OLD_PDROP = {
    "tiles_encoded": 1, "vision_tokens_encoded": 16, "vision_tokens_to_llm": 16, "llm_input_len": 30,
    "new_tokens": 2, "focus_passes": [], "llm_tokens_per_layer": [30, 22], "vision_tokens_per_layer": [16, 8],
    "equivalent_vision_tokens": 12.0, "position_ids": "renumber", "pdrop_layer_list": [1], "pdrop_lambda": 0.5,
    "pdrop_keeps": [8], "budget": 12, "budget_met": True, "focus_tile_recall": 1.0, "focus_token_recall": 0.5,
}  # fmt: skip
OLD_C2F = {
    "levels": [
        {"level": 0, "scale": 0.5, "tile_grid_hw": [1, 2], "tiles_encoded": 2, "tiles": [[0, 0], [0, 1]],
         "grid_shape_hw": [2, 5], "tokens_in_grid": 10, "tokens_valid": 10, "newline_tokens": 2, "tokens_picked": 4,
         "picked_indices": [0, 4, 5, 9], "scores": [0.1] * 10, "selected_tiles": [[0, 1]], "tile_votes": {"0,1": 2}},
        {"level": 1, "scale": 1.0, "tile_grid_hw": [2, 3], "tiles_encoded": 1, "tiles": [[0, 1]],
         "grid_shape_hw": [4, 7], "tokens_in_grid": 28, "tokens_valid": 4, "newline_tokens": 4, "tokens_picked": 5,
         "picked_indices": [2, 6, 13, 20, 27], "scores": [0.0] * 28, "tokens_kept": 5},
    ],
    "pyramid_levels": 2, "tiles_encoded": 4, "vision_tokens_encoded": 64, "vision_tokens_to_llm": 21,
    "llm_input_len": 40, "focus_passes": [{"level": 0, "seq_len": 30, "decoder_layers": 1}], "token_budget": None,
    "kept_topk": 1, "new_tokens": 3, "focus_tile_recall": 1.0, "focus_token_recall": 0.25, "focus": "rfm",
}  # fmt: skip
OLD_FAILURE = {"error": "ImageReadError: truncated", "error_step": "read", "latency_s": 0.01}
OLD_MISC = {
    "text_only": True, "tiles_encoded": 0, "vision_tokens_encoded": 0, "vision_tokens_to_llm": 0, "llm_input_len": 9,
    "new_tokens": 1, "focus_passes": [], "resume_disabled": True, "resume_error": "OSError: full", "max_tiles": 4,
    "projector_tokens": 12, "budget_met": False,
    "visionzip": {"dominant": 4, "contextual": 2, "max_tiles": None},
    "prumerge": {"variant": "plus", "adaptive": False, "reduction_ratio": 0.25, "max_tiles": 9,
                 "tokens_per_tile": {"min": 9, "mean": 9.0, "max": 9}},
}  # fmt: skip


@pytest.mark.parametrize("old", [OLD_FASTV, OLD_PDROP, OLD_C2F, OLD_FAILURE, OLD_MISC, {}])
def test_earlier_stats_dicts_read_and_write_back_unchanged(old):
    record = SampleRecord.from_dict(json.loads(json.dumps(old)))
    assert record.extra == {}  # every key earlier versions wrote is a field
    assert record.to_dict() == old
    assert SampleRecord.from_dict(record.to_dict()) == record


def test_fields_are_typed_parts():
    fastv = SampleRecord.from_dict(OLD_FASTV)
    assert fastv.fastv == FastVKnobs(k=2, r=0.5, keep=38, budget=None) and fastv.pdrop is None
    assert fastv.in_llm == InLLMDetails(
        vision_tokens_per_layer=[76, 76, 38, 38], equivalent_vision_tokens=57.0, position_ids="original"
    )
    assert fastv.focus_recall == FocusRecall(tile=None, token=None) and fastv.budget_met is None
    pdrop = SampleRecord.from_dict(OLD_PDROP)
    assert pdrop.pdrop == PDropKnobs(layer_list=[1], lam=0.5, keeps=[8], budget=12) and pdrop.fastv is None
    c2f = SampleRecord.from_dict(OLD_C2F)
    assert isinstance(c2f.c2f, C2FDetails) and all(isinstance(lvl, C2FLevel) for lvl in c2f.c2f.levels)
    assert c2f.c2f.levels[0].tile_votes == {"0,1": 2} and c2f.c2f.levels[1].tokens_kept == 5
    assert c2f.focus_passes == [FocusPass(level=0, seq_len=30, decoder_layers=1)]


def test_a_default_is_not_written_but_a_set_group_writes_all_its_keys():
    assert SampleRecord().to_dict() == {}
    assert SampleRecord(text_only=False, resume_disabled=False, budget_met=False).to_dict() == {"budget_met": False}
    assert SampleRecord(focus_recall=FocusRecall(tile=None, token=None)).to_dict() == {
        "focus_tile_recall": None,
        "focus_token_recall": None,
    }
    assert (
        FocusPass(seq_len=3, decoder_layers=0)
        == SampleRecord.from_dict({"focus_passes": [{"seq_len": 3, "decoder_layers": 0}]}).focus_passes[0]
    )


def test_unknown_top_level_keys_are_kept_in_extra_and_written_back():
    data = {"tflops": 1.5, "from_a_newer_version": {"x": [1, 2]}}
    record = SampleRecord.from_dict(data)
    assert record.tflops == 1.5 and record.extra == {"from_a_newer_version": {"x": [1, 2]}}
    assert record.to_dict() == data
    with pytest.raises(SampleRecordError, match=r"extra holds \['tflops'\]"):
        SampleRecord(tflops=1.0, extra={"tflops": 2.0}).to_dict()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tiles_encoded": "5"}, r"tiles_encoded='5' does not fit the field's type int$"),
        ({"tiles_encoded": True}, r"tiles_encoded=True does not fit"),
        ({"text_only": 1}, r"text_only=1 does not fit the field's type bool"),
        ({"focus_passes": [{"seq_len": 3}]}, r"focus_passes\[0\]\.decoder_layers is missing"),
        ({"focus_passes": [{"seq_len": 3, "decoder_layers": 1, "x": 0}]}, r"unknown keys \['x'\] in a FocusPass"),
        ({**OLD_C2F, "levels": [{"level": 0}]}, r"levels\[0\]\.scale is missing"),
        ({"visionzip": [4, 2]}, r"visionzip=\[4, 2\] does not fit"),
        ({"tflops_by_stage": {"total": "x"}}, r"tflops_by_stage\.total='x' does not fit"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_typed_error_naming_key_and_type(data, message):
    with pytest.raises(SampleRecordError, match=message):
        SampleRecord.from_dict(data)


def test_not_a_mapping_is_refused():
    with pytest.raises(SampleRecordError, match="JSON object; got list"):
        SampleRecord.from_dict([1])  # type: ignore[arg-type]


def test_json_keys_list_every_key_once():
    keys = SampleRecord.json_keys()
    assert len(keys) == len(set(keys)) and {"budget", "focus_tile_recall", "levels", "pdrop_lambda"} <= set(keys)
    assert "focus_recall" not in keys and "extra" not in keys


def test_efficiency_figures_read_the_fields_in_metric_order():
    record = SampleRecord.from_dict(OLD_PDROP)
    record.tflops, record.tflops_computed, record.latency_s, record.ttft_s = 2.0, 1.5, 0.5, 0.25
    record.stage_seconds = StageSeconds(
        image_read_s=0.01, vision_encode_s=0.02, focus_s=0.0, llm_prefill_s=0.2, llm_decode_s=0.1
    )
    record.peak_memory_bytes, record.peak_memory_growth_bytes, record.kv_cache_bytes = 3 * 2**20, 2**20, 2**19
    assert tuple(efficiency_figures(record)) == EFFICIENCY_KEYS
    assert efficiency_figures(record) == {
        "vision_tokens_encoded": 16,
        "vision_tokens_to_llm": 16,
        "tflops": 2.0,
        "tflops_computed": 1.5,
        "latency_s": 0.5,
        "focus_tile_recall": 1.0,
        "focus_token_recall": 0.5,
        "image_read_s": 0.01,
        "vision_encode_s": 0.02,
        "focus_s": 0.0,
        "llm_prefill_s": 0.2,
        "llm_decode_s": 0.1,
        "ttft_s": 0.25,
        "peak_memory_mib": 3.0,
        "peak_memory_growth_mib": 1.0,
        "kv_cache_mib": 0.5,
    }
    assert set(efficiency_figures(SampleRecord()).values()) == {None}


def test_the_store_holds_copies_of_records():
    store = SampleRecordStore()
    record = SampleRecord.from_dict(OLD_C2F)
    store.put("k", record)
    record.tflops = 9.0
    got = store.get("k")
    assert got is not None and got.tflops is None and got == SampleRecord.from_dict(OLD_C2F)
    got.focus_passes.clear()
    assert store.get("k").focus_passes and len(store) == 1
    assert store.pop("k") is not None and store.pop("k") is None and store.get("k") is None
    with pytest.raises(TypeError, match="SampleRecord objects; got dict"):
        store.put("k", {"error": "x"})  # type: ignore[arg-type]
