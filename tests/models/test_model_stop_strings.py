"""``c2f_llava`` hands the task's ``until`` to generation, and the resume store keeps what each answer was cut at.

On a tiny LLaVA-NeXT checkpoint, in process: a stop string reached mid-answer gives the text the model gave when it
generated to the end and cut afterwards, with fewer generated tokens and TFLOPs; a stored answer is served only to a
request with the same stop strings, and a line written before (the whole answer, no ``stop_strings``) is served cut.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lrs_plugin.harness.record import STATS_METADATA_KEY, STORE, SampleRecord
from lrs_plugin.harness.resume import ResumeStore, answer_key

CONTEXT = "What color is the roof?"


@pytest.fixture(scope="module")
def checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint("llava_next", "qwen2")


def _model(checkpoint, **extra: Any):
    from lrs_plugin.models.c2f_llava import C2FLlava

    return C2FLlava(
        pretrained=str(checkpoint), reducer="none", device="cpu", dtype="float32", max_new_tokens=16, **extra
    )


DOCS = [{"image": Image.fromarray(np.random.default_rng(7).integers(0, 256, (340, 400, 3), dtype=np.uint8))}]


def _ask(model, until: list[str]) -> tuple[str, SampleRecord]:
    from lmms_eval.api.instance import Instance

    model.task_dict = {"t": {"test": DOCS}}
    request = Instance(
        request_type="generate_until",
        arguments=(CONTEXT, {"until": list(until)}, lambda doc: [doc["image"]], 0, "t", "test"),
        idx=0,
        metadata={"task": "t", "doc_id": 0, "repeats": 1, "split": "test", STATS_METADATA_KEY: True},
    )
    STORE.clear()
    (out,) = model.generate_until([request])
    record = STORE.pop("t/test/0")
    assert record is not None and record.error is None, record
    assert out.token_counts.output_tokens == record.new_tokens
    return out.text, record


@pytest.fixture(scope="module")
def full(checkpoint) -> tuple[str, SampleRecord, str]:
    """The answer generated to the end, its record, and a stop string that first occurs mid-answer."""
    text, record = _ask(_model(checkpoint), [])
    words = text.split()
    assert len(words) >= 2, text
    stop = words[1][:2]
    assert text.find(stop) > 0
    return text, record, stop


def test_until_ends_generation_with_the_text_cutting_afterwards_gave(checkpoint, full):
    text, record, stop = full
    cut, cut_record = _ask(_model(checkpoint), ["\n\n", stop])
    assert cut == text.split(stop, 1)[0].strip()
    assert cut_record.new_tokens < record.new_tokens
    assert cut_record.tflops_by_stage["llm_decode"] < record.tflops_by_stage["llm_decode"]
    assert cut_record.tflops < record.tflops
    assert cut_record.tflops_by_stage["llm_prefill"] == record.tflops_by_stage["llm_prefill"]
    assert SampleRecord.from_dict(cut_record.to_dict()) == cut_record and cut_record.extra == {}


def test_stored_answers_are_served_only_under_their_stop_strings(checkpoint, full, tmp_path):
    text, _record, stop = full
    first = _model(checkpoint, resume_dir=str(tmp_path))
    cut, cut_record = _ask(first, [stop])
    lines = [json.loads(line) for line in next(tmp_path.glob("answers.*.jsonl")).read_text().splitlines()]
    assert [(line["raw_text"], line["stop_strings"]) for line in lines] == [(cut, [stop])]
    assert SampleRecord.from_dict(lines[0]["stats"]) == cut_record

    again = _model(checkpoint, resume_dir=str(tmp_path))
    generated: list[Any] = []
    answer = again._answer
    again._answer = lambda *a, **k: generated.append(a) or answer(*a, **k)  # type: ignore[method-assign]
    assert _ask(again, [stop]) == (cut, cut_record) and not generated  # same stop strings: served
    assert _ask(again, [])[0] == text and len(generated) == 1  # other stop strings: generated again


def test_a_line_written_before_stop_strings_were_applied_is_served_cut(checkpoint, full, tmp_path):
    text, record, stop = full
    model = _model(checkpoint, resume_dir=str(tmp_path))
    key = answer_key(
        settings_hash=model._settings_hash,
        task="t",
        split="test",
        doc_id=0,
        doc=DOCS[0],
        context=CONTEXT,
        gen_kwargs={"until": [stop]},
    )
    old = ResumeStore(tmp_path, rank=0, world_size=1)
    old.put(key, f"  {text}\n", record)  # the whole answer, no stop_strings field: the earlier layout
    old.close()
    assert "stop_strings" not in json.loads(next(tmp_path.glob("answers.*.jsonl")).read_text())
    model = _model(checkpoint, resume_dir=str(tmp_path))
    model._answer = lambda *a, **k: pytest.fail("a stored answer was generated again")  # type: ignore[method-assign]
    served, served_record = _ask(model, [stop])
    assert served == text.split(stop, 1)[0].strip() and served_record == record
