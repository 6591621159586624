"""``c2f_llava``'s ``reuse`` setting: requests interleaved across images are answered grouped by image (answers in
the request order), reuse is on by default for question-independent reducers, and ``reuse=false`` gives the same
answers with every prefix computed."""

from __future__ import annotations

from typing import Any

import pytest

from lrs_plugin.harness.record import STATS_METADATA_KEY, STORE

QUESTIONS = ("What color is the roof?", "How many ships are there?", "Is it urban?")


@pytest.fixture(scope="module")
def checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint("llava_next", "qwen2")


def _model(checkpoint: Any, **extra: Any):
    from lrs_plugin.models.c2f_llava import C2FLlava

    return C2FLlava(
        pretrained=str(checkpoint), device="cpu", dtype="float32", max_new_tokens=4, reducer="none", **extra
    )


def _run(model, docs: list[dict]) -> tuple[list[str], list[Any]]:
    from lmms_eval.api.instance import Instance

    STORE.clear()
    model.task_dict = {"t": {"test": docs}}
    requests = [
        Instance(
            request_type="generate_until",
            arguments=(doc["question"], {"until": ["\n\n"]}, lambda d: [d["image_path"]], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1, "split": "test", STATS_METADATA_KEY: True},
        )
        for i, doc in enumerate(docs)
    ]
    out = model.generate_until(requests)
    return [r.text for r in out], [STORE.pop(f"t/test/{i}") for i in range(len(docs))]


@pytest.fixture(scope="module")
def docs(make_image_file) -> list[dict]:
    """Three questions on each of two images, interleaved (a, b, a, b, a, b)."""
    images = [str(make_image_file(120, 170, seed=s, high=255)) for s in (1, 2)]
    return [{"image_path": images[i % 2], "question": QUESTIONS[i // 2]} for i in range(6)]


def test_reuse_is_on_by_default_and_off_with_reuse_false(checkpoint, docs):
    on, off = _model(checkpoint), _model(checkpoint, reuse=False)
    assert on.settings.reuse and on.reducer.prefix_cache is not None
    assert not off.settings.reuse and off.reducer.prefix_cache is None
    texts_on, records_on = _run(on, docs)
    texts_off, records_off = _run(off, docs)
    assert texts_on == texts_off
    assert all(r.error is None for r in records_on + records_off)
    # answered grouped by image (the first question of each image computes its prefix), returned in request order
    assert [r.prefix_reused for r in records_on] == [False, False, True, True, True, True]
    assert all(r.prefix_reused is None and r.prefix_tokens_reused is None for r in records_off)
    # the paper-convention TFLOPs count the whole prompt either way
    assert [r.tflops for r in records_on] == [r.tflops for r in records_off]
    assert [r.llm_input_len for r in records_on] == [r.llm_input_len for r in records_off]


def test_a_failed_answer_does_not_spoil_the_next_question_on_the_image(checkpoint, docs, monkeypatch):
    model = _model(checkpoint)
    reference, _ = _run(model, docs)
    bb = model.backbone
    original = bb.generate
    calls = {"n": 0}

    def flaky(inputs_embeds: Any, **kwargs: Any):
        calls["n"] += 1
        if calls["n"] == 2:  # the second question on the first image, after its prefix was extended... then fails
            original(inputs_embeds, **kwargs)
            raise RuntimeError("injected generate failure")
        return original(inputs_embeds, **kwargs)

    monkeypatch.setattr(bb, "generate", flaky)
    texts, records = _run(model, docs)
    second = 2 if docs[0]["image_path"] < docs[1]["image_path"] else 3  # 2nd question on the image answered first
    failed = [i for i, r in enumerate(records) if r.error]
    assert failed == [second] and "injected generate failure" in records[second].error
    assert [t for i, t in enumerate(texts) if i != second] == [t for i, t in enumerate(reference) if i != second]
    assert records[second + 2].prefix_reused  # the kept prefix survived the failure
