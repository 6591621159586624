"""Measured costs (:mod:`lrs_plugin.harness.costs`): stage nesting, prefill / decode split, KV bytes, peak memory.

No timing thresholds: stage arithmetic is checked on a scripted clock, real runs only by invariants (non-negative
stages summing to at most the latency, TTFT within the latency) and KV bytes against the config's formula.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lrs_plugin.harness import costs
from lrs_plugin.harness.costs import STAGES, PeakMemory, StageClock, record_costs
from lrs_plugin.harness.record import SampleRecord
from lrs_plugin.reducers.registry import available_reducers, build_reducer

NEXT = ("llava_next", "qwen2")


class _Ticks:
    """A scripted ``time`` module: each ``perf_counter()`` returns the next value."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def perf_counter(self) -> float:
        return self.values.pop(0)


def test_nested_stages_are_exclusive_and_sum_to_the_outer_block(monkeypatch):
    monkeypatch.setattr(costs, "time", _Ticks(0.0, 1.0, 2.0, 5.0, 6.0, 7.0, 9.0, 10.0))
    clock = StageClock()  # start 0
    with clock.stage("focus"):  # 1 .. 9
        with clock.stage("vision_encode"):  # 2 .. 5
            pass
        with clock.stage("image_read"):  # 6 .. 7
            pass
    assert clock.seconds == {
        "image_read": 1.0,
        "vision_encode": 3.0,
        "focus": 4.0,  # 8 s in the block, 4 s of them in the inner stages
        "llm_prefill": 0.0,
        "llm_decode": 0.0,
    }
    assert clock.elapsed() == 10.0 and sum(clock.seconds.values()) == 8.0


def test_generation_splits_at_the_first_token_and_stamps_ttft_once(monkeypatch):
    monkeypatch.setattr(costs, "time", _Ticks(0.0, 2.0, 3.0, 7.0, 8.0, 8.0, 9.5, 9.5))
    clock = StageClock()  # 0
    with clock.generation():  # 2 .. 7
        clock.first_token()  # 3
        clock.first_token()  # ignored (reads no time): the split and the TTFT keep the first stamp
    assert clock.seconds["llm_prefill"] == 1.0 and clock.seconds["llm_decode"] == 4.0
    with clock.stage("focus"), clock.generation():  # 8 .. (8 .. 9.5) .. 9.5: no first token, all prefill
        pass
    assert clock.seconds["llm_prefill"] == 2.5 and clock.seconds["focus"] == 0.0
    assert clock.ttft_s == 3.0


def test_a_block_that_raises_records_nothing_and_keeps_its_error():
    clock = StageClock()
    with pytest.raises(KeyError, match="boom"):
        with clock.stage("focus"), clock.stage("vision_encode"), clock.generation():
            raise KeyError("boom")
    assert set(clock.seconds.values()) == {0.0} and clock.ttft_s is None
    with clock.stage("focus"):  # the clock still works afterwards
        pass
    assert clock.seconds["focus"] >= 0.0


def test_an_unknown_stage_is_refused_naming_the_stages():
    with pytest.raises(ValueError, match=r"unknown stage 'prefill'; valid: image_read, vision_encode, focus, llm_"):
        with StageClock().stage("prefill"):
            pass


def _kv_per_position(bb) -> int:
    """``layers x 2 x kv_heads x head_dim x dtype bytes``: one position of a dense cache, from the config."""
    text = bb.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_key_value_heads * head_dim * torch.finfo(bb.dtype).bits // 8


@pytest.mark.parametrize("variant", [("llava", "llama"), NEXT], ids="_".join)
def test_generate_with_a_clock_gives_the_same_tokens_and_the_prefill_kv_bytes(tiny_backbones, variant):
    bb = tiny_backbones[variant]
    embeds = bb.embed_ids(bb.text_prompt_ids("What is in the picture, in many words?")).unsqueeze(0)
    plain = bb.generate(embeds, max_new_tokens=6)
    clock = StageClock()
    timed = bb.generate(embeds, max_new_tokens=6, clock=clock)
    assert timed == plain
    layers, length = bb.config.text_config.num_hidden_layers, int(embeds.shape[1])
    assert clock.kv_cache_bytes == layers * _kv_per_position(bb) * length  # the prefill only, not the decoded tokens
    assert 0.0 <= clock.ttft_s <= clock.elapsed()
    assert min(clock.seconds.values()) >= 0.0 and sum(clock.seconds.values()) <= clock.elapsed()


@pytest.fixture(scope="module")
def image_path(make_image_file) -> str:
    return str(make_image_file(150, 230, seed=1, high=255))


@pytest.mark.parametrize("name", ["fastv", "pdrop"])
def test_in_llm_kv_bytes_follow_the_pruned_layers(tiny_backbones, image_path, name):
    bb = tiny_backbones[NEXT]
    clock = StageClock()
    reducer = build_reducer(name, bb, {"budget": 20})
    try:
        record = reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=3, clock=clock).record
    finally:
        reducer.close()
    per_layer = record.llm_tokens_per_layer
    assert min(per_layer) < max(per_layer)  # something was dropped
    assert clock.kv_cache_bytes == sum(per_layer) * _kv_per_position(bb)
    assert clock.seconds["llm_prefill"] > 0.0 and clock.ttft_s <= clock.elapsed()


def test_pre_llm_stages_time_the_cached_encoding_once_per_image(tiny_backbones, image_path):
    bb = tiny_backbones[NEXT]
    reducer = build_reducer("none", bb)
    clocks = [StageClock(), StageClock()]
    try:
        for clock in clocks:
            reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=2, clock=clock)
    finally:
        reducer.close()
    assert clocks[0].seconds["vision_encode"] > 0.0
    assert clocks[1].seconds["vision_encode"] == 0.0  # the image's tokens were kept from the first question


@pytest.fixture(scope="module")
def models(make_tiny_checkpoint):
    """One ``C2FLlava`` (tiny LLaVA-NeXT-Qwen2, CPU) per reducer, built on first use."""
    from lmms_eval.utils import simple_parse_args_string

    from lrs_plugin.backbone.tiny import TINY_REDUCER_OPTIONS
    from lrs_plugin.models.c2f_llava import C2FLlava

    checkpoint = make_tiny_checkpoint(*NEXT)
    cache = {}

    def get(reducer: str):
        if reducer not in cache:
            options = simple_parse_args_string(TINY_REDUCER_OPTIONS[reducer])
            cache[reducer] = C2FLlava(
                pretrained=str(checkpoint), reducer=reducer, device="cpu", dtype="float32", max_new_tokens=3, **options
            )
        return cache[reducer]

    return get


@pytest.mark.parametrize("reducer", available_reducers())
def test_every_reducer_records_consistent_costs_through_the_model(models, image_path, reducer):
    from lmms_eval.api.instance import Instance

    from lrs_plugin.harness.record import STATS_METADATA_KEY, STORE

    model = models(reducer)
    model.task_dict = {"t": {"test": [{"image_path": image_path}] * 2}}
    requests = [
        Instance(
            request_type="generate_until",
            arguments=("What is it?", {"until": ["\n\n"]}, lambda doc: [image_path], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1, "split": "test", STATS_METADATA_KEY: True},
        )
        for i in range(2)
    ]
    STORE.clear()
    model.generate_until(requests)
    for i in range(2):
        record = STORE.pop(f"t/test/{i}")
        assert record.error is None, record.error
        stages = [getattr(record.stage_seconds, f"{s}_s") for s in STAGES]
        assert min(stages) >= 0.0 and sum(stages) <= record.latency_s
        assert 0.0 < record.ttft_s <= record.latency_s
        assert record.stage_seconds.llm_prefill_s > 0.0
        assert record.kv_cache_bytes > 0 and record.peak_memory_bytes > 0 and record.peak_memory_growth_bytes >= 0
        assert record.peak_memory_method in ("linux_vmhwm", "ru_maxrss")
        data = json.loads(json.dumps(record.to_dict()))  # as the resume store writes it
        assert {f"{s}_s" for s in STAGES} | {"ttft_s", "kv_cache_bytes", "peak_memory_bytes"} <= set(data)
        assert SampleRecord.from_dict(data) == record


def test_a_failed_sample_records_only_its_latency(models):
    from lmms_eval.api.instance import Instance

    from lrs_plugin.harness.record import STATS_METADATA_KEY, STORE

    model = models("none")
    model.task_dict = {"t": {"test": [{"image_path": "/missing.png"}]}}
    request = Instance(
        request_type="generate_until",
        arguments=("What is it?", {}, lambda doc: ["/missing.png"], 0, "t", "test"),
        idx=0,
        metadata={"task": "t", "doc_id": 0, "repeats": 1, "split": "test", STATS_METADATA_KEY: True},
    )
    STORE.clear()
    model.generate_until([request])
    record = STORE.pop("t/test/0")
    assert record.error is not None and record.latency_s >= 0.0
    assert record.stage_seconds is None and record.ttft_s is None and record.peak_memory_bytes is None


def test_cpu_peak_memory_sees_a_buffer_touched_during_the_question():
    memory = PeakMemory("cpu")
    if memory.method != "linux_vmhwm":
        pytest.skip("/proc/self/clear_refs is not writable here")
    buffer = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page touched
    del buffer
    peak = memory.stop()
    # pages the process had freed before may be reused: most of the buffer, not all of it, is new RSS
    assert peak.growth_bytes >= 48 * 2**20 and peak.peak_bytes >= peak.growth_bytes


def test_without_clear_refs_the_cpu_falls_back_to_ru_maxrss(monkeypatch, tmp_path):
    monkeypatch.setattr(costs, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    memory = PeakMemory(None)
    assert memory.method == "ru_maxrss"
    peak = memory.stop()
    assert peak.peak_bytes > 0 and peak.growth_bytes >= 0 and peak.method == "ru_maxrss"


def test_an_unreadable_memory_counter_leaves_the_answer_and_records_no_memory(monkeypatch):
    memory = PeakMemory(None)
    if memory.method != "linux_vmhwm":
        pytest.skip("/proc/self/clear_refs is not writable here")

    def unreadable(key: str) -> int:
        raise OSError(f"/proc/self/status has no {key}")

    monkeypatch.setattr(costs, "_status_bytes", unreadable)
    assert memory.stop() is None
    record = SampleRecord()
    record_costs(record, StageClock(), memory)
    assert record.latency_s >= 0.0 and record.peak_memory_bytes is None and record.peak_memory_method is None


def test_record_costs_fills_every_measured_field():
    clock, memory, record = StageClock(), PeakMemory(None), SampleRecord()
    with clock.generation():
        clock.first_token()
    record_costs(record, clock, memory)
    assert record.latency_s >= record.ttft_s >= 0.0 and record.stage_seconds.focus_s == 0.0
    assert record.kv_cache_bytes is None  # no cache handed to first_token
    assert record.peak_memory_method in ("linux_vmhwm", "ru_maxrss")


@pytest.mark.gpu
def test_cuda_peak_memory_is_the_allocator_high_water_mark():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    memory = PeakMemory("cuda")
    block = torch.empty(32 * 2**20, dtype=torch.uint8, device="cuda")
    del block
    peak = memory.stop()
    assert peak.method == "cuda_max_allocated" and peak.growth_bytes >= 32 * 2**20
    clock = StageClock("cuda")
    with clock.stage("vision_encode"):
        torch.ones(1024, 1024, device="cuda").sum()
    assert clock.seconds["vision_encode"] > 0.0
