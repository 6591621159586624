"""``c2f_llava.generate_until`` on requests as lmms-eval builds them, in process, on a tiny LLaVA-NeXT checkpoint.

* the image comes from the request's visual (what ``doc_to_visual(doc)`` returns: path, lazy or eager PIL image,
  numpy array, a list of one), and every reducer reads it through one :class:`~lrs_plugin.imagery.LargeImage`:
  a table of bad and unusual images x every registered reducer -> one outcome (the same recorded error, or the same
  pixels, captured where the reader hands them over: ``LargeImage.to_pil`` / ``LargeImage.read_region``);
* documents without ``question_id`` / ``image_path``, requests without an image (text-only) or with two;
* faults injected at each step (document, read, encode, focus, generate, stats hand-off, resume write, until):
  the faulty sample is recorded, the others are answered exactly as in a clean run.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from lmms_eval.utils import simple_parse_args_string
from PIL import Image, ImageFile

from lrs_plugin.backbone.tiny import TINY_REDUCER_OPTIONS
from lrs_plugin.harness.record import STATS_METADATA_KEY, STORE, SampleRecord
from lrs_plugin.imagery.large_image import LargeImage
from lrs_plugin.reducers.registry import available_reducers

W, H = 400, 340  # above one 336-px tile, so every reducer (C2F's pyramid included) takes its ordinary path
# the tiny checkpoints' --model_args fragments, parsed as lmms-eval parses --model_args
TINY_OPTIONS = {name: simple_parse_args_string(args) for name, args in TINY_REDUCER_OPTIONS.items()}


@pytest.fixture(scope="module")
def checkpoint(make_tiny_checkpoint):
    return make_tiny_checkpoint("llava_next", "qwen2")


@pytest.fixture(scope="module")
def models(checkpoint):
    """One ``C2FLlava`` per reducer, built on first use."""
    from lrs_plugin.models.c2f_llava import C2FLlava

    cache: dict[tuple, Any] = {}

    def get(reducer: str, **extra: Any):
        key = (reducer, tuple(sorted(extra.items())))
        if key not in cache:
            cache[key] = C2FLlava(
                pretrained=str(checkpoint),
                reducer=reducer,
                device="cpu",
                dtype="float32",
                max_new_tokens=2,
                **TINY_OPTIONS.get(reducer, {}),
                **extra,
            )
        return cache[key]

    return get


def _request(doc_id: int, visual: Any, *, context: str = "What color is the roof?", task: str = "t", gen=None):
    from lmms_eval.api.instance import Instance

    fn = visual if callable(visual) else (lambda doc, v=visual: v)
    return Instance(
        request_type="generate_until",
        arguments=(context, dict(gen or {"until": ["\n\n"]}), fn, doc_id, task, "test"),
        idx=0,
        metadata={"task": task, "doc_id": doc_id, "repeats": 1, "split": "test", STATS_METADATA_KEY: True},
    )


def _answer(model, docs: list[dict], visuals: list[Any], **kwargs: Any) -> tuple[list[str], list[SampleRecord]]:
    """Run ``generate_until`` on one request per document; returns the texts and the records handed to the task."""
    STORE.clear()
    model.task_dict = {"t": {"test": docs}}
    out = model.generate_until([_request(i, v, **kwargs) for i, v in enumerate(visuals)])
    stats = [STORE.pop(f"t/test/{i}") for i in range(len(docs))]
    return [r.text for r in out], stats


# --- image kinds --------------------------------------------------------------------------------------------------


def _tif(path: Path, data: np.ndarray, **kwargs: Any) -> Path:
    tifffile.imwrite(path, data, **kwargs)
    return path


def _png(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


def _palette_image(colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("P", (W, H), 0)
    image.putpalette(list(colour) + [0] * 765)
    return image


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _bomb_tiff(path: Path) -> Path:
    """A tiny little-endian TIFF whose header claims 200,000 x 200,000 RGB pixels (no pixel data)."""
    entries = [(256, 4, 1, 200_000), (257, 4, 1, 200_000), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, 200_000), (279, 4, 1, 100)]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + zlib.compress(b"\0" * 100))
    return path


# name -> (writer(folder) -> file, expected RGB of every pixel, or None for "recorded ImageReadError")
FILES = {
    "uint16-gray-tiff": (lambda d: _tif(d / "a.tif", np.full((H, W), 40000, np.uint16)), (156, 156, 156)),
    "float32-gray-tiff": (lambda d: _tif(d / "a.tif", np.full((H, W), 0.6, np.float32)), (153, 153, 153)),
    "uint8-gray-tiff": (lambda d: _tif(d / "a.tif", np.full((H, W), 99, np.uint8)), (99, 99, 99)),
    "gray-alpha-tiff": (
        lambda d: _tif(
            d / "a.tif",
            np.dstack([np.full((H, W), 77, np.uint8), np.full((H, W), 255, np.uint8)]),
            photometric="minisblack",
            extrasamples=[2],
        ),
        (77, 77, 77),
    ),  # fmt: skip
    "rgb-nir-tiff": (
        lambda d: _tif(
            d / "a.tif",
            np.broadcast_to(np.array([10, 20, 30, 200], np.uint8), (H, W, 4)).copy(),
            photometric="rgb",
            extrasamples=[0],
        ),
        (10, 20, 30),
    ),  # fmt: skip
    "uint16-rgb-tiff": (
        lambda d: _tif(
            d / "a.tif", np.broadcast_to(np.array([40000, 1000, 65535], np.uint16), (H, W, 3)).copy(), photometric="rgb"
        ),
        (156, 3, 255),
    ),  # fmt: skip
    "rgba-png": (lambda d: _png(d / "a.png", Image.new("RGBA", (W, H), (10, 20, 30, 0))), (10, 20, 30)),
    "palette-png": (lambda d: _png(d / "a.png", _palette_image((200, 40, 0))), (200, 40, 0)),
    "1-bit-png": (lambda d: _png(d / "a.png", Image.new("1", (W, H), 1)), (255, 255, 255)),
    "truncated-png": (lambda d: _truncate(_png(d / "a.png", Image.fromarray(_noise()))), None),
    "truncated-jpeg": (lambda d: _truncate(_png(d / "a.jpg", Image.fromarray(_noise()))), None),
    "truncated-tiff": (lambda d: _truncate(_tif(d / "a.tif", _noise(), photometric="rgb")), None),
    "corrupt-png": (
        lambda d: (
            (d / "a.png").write_bytes(_png(d / "b.png", Image.fromarray(_noise())).read_bytes()[:60] + b"\x07" * 4000)
            or d / "a.png"
        ),
        None,
    ),  # fmt: skip
    "int32-tiff": (lambda d: _tif(d / "a.tif", np.full((H, W), 7, np.int32)), None),
    "int16-tiff": (lambda d: _tif(d / "a.tif", np.full((H, W), 7, np.int16)), None),
    "header-bomb-tiff": (lambda d: _bomb_tiff(d / "a.tif"), None),
    "not-an-image": (lambda d: (d / "a.png").write_text("hello") or d / "a.png", None),
}

# name -> (in-memory visual, expected RGB or None)
MEMORY = {
    "numpy-uint16": (lambda: np.full((H, W), 40000, np.uint16), (156, 156, 156)),
    "numpy-float32": (lambda: np.full((H, W, 3), 0.6, np.float32), (153, 153, 153)),
    "numpy-rgb-nir": (lambda: np.broadcast_to(np.array([10, 20, 30, 200], np.uint8), (H, W, 4)).copy(), (10, 20, 30)),
    "numpy-bool": (lambda: np.ones((H, W), bool), (255, 255, 255)),
    "numpy-int32": (lambda: np.full((H, W), 7, np.int32), None),
    "pil-F": (lambda: Image.fromarray(np.full((H, W), 0.6, np.float32)), (153, 153, 153)),
    "pil-I;16": (lambda: Image.fromarray(np.full((H, W), 40000, np.uint16)), (156, 156, 156)),
    "pil-RGBA": (lambda: Image.new("RGBA", (W, H), (10, 20, 30, 0)), (10, 20, 30)),
    "pil-I": (lambda: Image.fromarray(np.full((H, W), 7, np.int32)), None),
    "unsupported-object": (lambda: {"not": "an image"}, None),
}


@pytest.fixture
def seen_pixels(monkeypatch):
    """Every array the reader hands to a reducer: ``to_pil`` images and ``read_region`` windows."""
    seen: list[np.ndarray] = []
    to_pil, read_region = LargeImage.to_pil, LargeImage.read_region

    def spy_to_pil(self):
        image = to_pil(self)
        seen.append(np.asarray(image, dtype=np.float32))
        return image

    def spy_read_region(self, *args, **kwargs):
        out = read_region(self, *args, **kwargs)
        seen.append(np.asarray(out, dtype=np.float32))
        return out

    monkeypatch.setattr(LargeImage, "to_pil", spy_to_pil)
    monkeypatch.setattr(LargeImage, "read_region", spy_read_region)
    # lmms-eval sets this process-wide at import; a truncated file must still be refused.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    return seen


def _check_outcome(texts, stats, seen, expected, label, reads_pixels=True):
    """One outcome per image kind; ``reads_pixels=False`` (``blind``): the image is decoded, never sent."""
    if expected is None:
        for s in stats:
            assert s is not None and s.error is not None, (label, s)
            assert s.error.split(":")[0].endswith("Error") and s.error_step == "read", (label, s.error)
        assert not seen, f"{label}: pixels of a refused image reached a reducer"
        return
    for s in stats:
        assert s is not None and s.error is None, (label, s and s.error)
    if not reads_pixels:
        assert not seen, f"{label}: pixels reached a reducer that sends none"
        return
    assert seen, f"{label}: no pixels went through LargeImage.to_pil / read_region"
    for array in seen:
        assert np.allclose(array, np.asarray(expected, np.float32), atol=1e-3), (
            label,
            np.unique(array.reshape(-1, 3), axis=0)[:4],
        )


def _error_class(stats: dict) -> str:
    return stats.error.split(":")[0]


@pytest.mark.parametrize("reducer", sorted(available_reducers()))
def test_every_image_kind_gets_one_outcome_whatever_the_reducer(models, reducer, tmp_path, seen_pixels):
    import lrs_plugin.errors as errors
    from lrs_plugin.errors import ImageReadError

    model = models(reducer)
    for name, (write, expected) in FILES.items():
        folder = tmp_path / name
        folder.mkdir()
        path = write(folder)
        try:  # what a task does: a lazy PIL image opened outside our guard, or [] when Pillow cannot open it
            lazy = [Image.open(path)]
        except Exception:  # noqa: BLE001
            lazy = []
        for route, visual in (("path", str(path)), ("lazy", lazy)):
            seen_pixels.clear()
            texts, stats = _answer(model, [{"image_path": str(path)}], [visual])
            _check_outcome(texts, stats, seen_pixels, expected, f"{reducer}/{name}/{route}", reducer != "blind")
            if expected is None:
                cls = getattr(errors, _error_class(stats[0]), None)
                assert isinstance(cls, type) and issubclass(cls, ImageReadError), stats[0].error
    for name, (make, expected) in MEMORY.items():
        seen_pixels.clear()
        texts, stats = _answer(model, [{}], [[make()]])
        _check_outcome(texts, stats, seen_pixels, expected, f"{reducer}/{name}", reducer != "blind")


def test_a_header_bomb_is_refused_naming_its_size_and_the_limit(models, tmp_path):
    texts, stats = _answer(models("none"), [{}], [str(_bomb_tiff(tmp_path / "bomb.tif"))])
    assert texts == [""]
    assert _error_class(stats[0]) == "ImageTooLargeError"
    message = stats[0].error.replace(",", "").replace("_", "")
    assert "200000" in message and "2000000000" in message


# --- documents and requests ---------------------------------------------------------------------------------------


def test_two_images_in_one_request_are_a_recorded_failure_naming_the_count(models):
    image = Image.fromarray(_noise())
    texts, stats = _answer(models("none"), [{}, {}], [[image, image], [image]])
    assert texts[0] == "" and _error_class(stats[0]) == "MultipleImagesError" and "2 images" in stats[0].error
    assert stats[1].error is None


def test_a_request_without_an_image_is_answered_text_only(models):
    model = models("c2f")
    texts, stats = _answer(model, [{"question": "x"}], [[]], context="What is the capital?")
    assert stats[0].error is None and stats[0].text_only is True
    assert stats[0].vision_tokens_to_llm == 0 and stats[0].tiles_encoded == 0 and stats[0].tflops > 0
    bb = model.backbone
    want = bb.generate(bb.embed_ids(bb.text_prompt_ids("What is the capital?")).unsqueeze(0), max_new_tokens=2)
    assert texts[0] == want.text
    assert bb.config.image_token_id not in bb.text_prompt_ids("What is the capital?").tolist()


def test_an_empty_visual_falls_back_to_the_documents_image_path(models, tmp_path):
    missing = tmp_path / "gone.png"
    texts, stats = _answer(models("none"), [{"image_path": str(missing)}], [[]])
    assert texts == [""] and _error_class(stats[0]) == "ImageReadError" and "gone.png" in stats[0].error


def test_documents_without_question_id_are_keyed_by_task_split_and_doc_id_and_resume(models, tmp_path, checkpoint):
    from lrs_plugin.models.c2f_llava import C2FLlava

    images = [Image.fromarray(_noise(i)) for i in range(3)]
    docs = [{"id": f"q{i}", "image": images[i]} for i in range(3)]
    visuals = [lambda doc: [doc["image"]]] * 3
    kwargs = dict(pretrained=str(checkpoint), reducer="none", device="cpu", dtype="float32", max_new_tokens=2)
    first = C2FLlava(**kwargs, resume_dir=str(tmp_path / "store"))
    texts, stats = _answer(first, docs, visuals)
    assert all(s is not None and s.error is None for s in stats)  # keyed t/test/<doc_id>
    again = C2FLlava(**kwargs, resume_dir=str(tmp_path / "store"))
    generated = []
    again._answer = lambda *a, **k: generated.append(a) or ("", SampleRecord())  # type: ignore[method-assign]
    texts2, stats2 = _answer(again, docs, visuals)
    assert (
        not generated
        and texts2 == texts
        and [s.vision_tokens_to_llm for s in stats2] == [s.vision_tokens_to_llm for s in stats]
    )


def test_padding_requests_are_not_answered_nor_handed_to_the_task(models):
    model = models("none")
    model.task_dict = {"t": {"test": [{}]}}
    request = _request(0, [Image.fromarray(_noise())])
    request.metadata["__padding_only__"] = True
    STORE.clear()
    out = model.generate_until([request])
    assert [r.text for r in out] == [""] and len(STORE) == 0


# --- faults at each step ------------------------------------------------------------------------------------------


_CURRENT = {"doc": None}  # set by the visual function of the request being answered


def _fail_on_doc_1(monkeypatch, owner: Any, name: str) -> None:
    """Make ``owner.name`` raise while the request of document 1 is answered."""
    real = getattr(owner, name)

    def faulty(*args, **kwargs):
        if _CURRENT["doc"] == 1:
            raise RuntimeError(f"injected fault in {name}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, faulty)


def _visual(i: int):
    def doc_to_visual(doc):
        _CURRENT["doc"] = i
        return [doc["image"]]

    return doc_to_visual


STEPS = {
    # step -> (reducer, object and attribute made to fail for document 1, is that document's answer lost?)
    "document": ("none", None, True),
    "read": ("none", ("lrs_plugin.imagery.large_image", "open_image"), True),
    "encode": ("none", ("backbone", "plain_vision_embeds"), True),
    "encode-c2f": ("c2f", ("backbone", "encode_tiles"), True),
    "focus": ("c2f", ("lrs_plugin.c2f.driver", "_score"), True),
    "generate": ("none", ("backbone", "generate"), True),
    "generate-c2f": ("c2f", ("backbone", "generate"), True),
    "stats hand-off": ("none", ("store", "put"), False),
    "resume write": ("none", ("resume", "put"), False),
    "until": ("none", None, False),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_fault_at_any_step_is_recorded_on_its_sample_and_the_run_goes_on(models, step, monkeypatch, tmp_path):
    import importlib

    from lrs_plugin.harness.resume import ResumeStore

    reducer, target, lost = STEPS[step]
    extra = {"resume_dir": str(tmp_path / "store")} if step == "resume write" else {}
    model = models(reducer, **extra)
    docs = [{"image": Image.fromarray(_noise(i))} for i in range(3)]
    visuals = [_visual(i) for i in range(3)]
    clean_texts, clean_stats = _answer(model, docs, visuals)
    assert all(s.error is None for s in clean_stats)
    if step == "resume write":
        model._settings_hash = f"{model._settings_hash}-{tmp_path.name}"  # nothing from the clean run is reused
    if target is not None:
        owner_name, attr = target
        owner = {"backbone": type(model.backbone), "store": STORE, "resume": ResumeStore}.get(owner_name)
        _fail_on_doc_1(monkeypatch, owner if owner is not None else importlib.import_module(owner_name), attr)
    STORE.clear()
    model.task_dict = {"t": {"test": {0: docs[0], 2: docs[2]} if step == "document" else docs}}
    requests = [_request(i, v) for i, v in enumerate(visuals)]
    if step == "until":
        requests[1].arguments[1]["until"] = [5]  # not a string: str.split raises
    out = model.generate_until(requests)
    _CURRENT["doc"] = None
    texts = [r.text for r in out]
    stats = [STORE.pop(f"t/test/{i}") for i in range(3)]
    assert len(out) == 3 and texts[0] == clean_texts[0] and texts[2] == clean_texts[2], step
    assert stats[0].error is None and stats[2].error is None
    if step == "document":
        assert texts[1] == "" and stats[1] is None  # no document: nothing to hand to the task
    elif lost:
        assert texts[1] == "" and "injected fault" in stats[1].error, stats[1]
        assert stats[1].error_step in ("read", "answer")
    else:
        assert texts[1] == clean_texts[1], step
    if step == "resume write":
        assert stats[1].resume_error is not None and stats[1].error is None


# --- efficiency figures for any task ------------------------------------------------------------------------------


def test_efficiency_tally_means_match_the_task_metric_rule_and_reach_lmms_eval_throughput():
    from lmms_eval.models.model_utils.gen_metrics import reset_logged_metrics, summarize_logged_metrics

    from lrs_plugin.flops.accounting import EfficiencyTally

    tally = EfficiencyTally()
    tally.add(
        "a",
        SampleRecord(vision_tokens_encoded=10, vision_tokens_to_llm=4, tflops=1.0, latency_s=2.0, new_tokens=3),
    )
    tally.add("a", SampleRecord(error="ImageReadError: x", latency_s=1.0))
    tally.add("b", SampleRecord(vision_tokens_encoded=0, vision_tokens_to_llm=0, tflops=0.5, latency_s=1.0,
                                text_only=True, new_tokens=1))  # fmt: skip
    other = EfficiencyTally()
    other.add("b", SampleRecord(vision_tokens_encoded=20, vision_tokens_to_llm=8, tflops=1.5, latency_s=3.0))
    tally.merge(other.sums)
    m = tally.metrics()
    assert m["eff_samples"] == 4 and m["eff_failed"] == 1 and m["eff_text_only"] == 1
    assert m["eff_latency_s"] == pytest.approx((2 + 1 + 1 + 3) / 4)
    assert m["eff_vision_tokens_to_llm"] == pytest.approx((4 + 0 + 8) / 3)  # the failed sample has none
    assert m["eff_tflops/a"] == pytest.approx(1.0) and m["eff_tflops/b"] == pytest.approx(1.0)
    reset_logged_metrics()
    try:
        tally.report()
        summary = summarize_logged_metrics()
    finally:
        reset_logged_metrics()
    assert summary["avg_eff_vision_tokens_to_llm"] == pytest.approx(m["eff_vision_tokens_to_llm"])
    assert summary["avg_eff_samples/b"] == 2
