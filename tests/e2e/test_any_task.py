"""``c2f_llava`` on an lmms-eval task written outside this plugin, through the real ``lmms-eval`` command.

The task (``tests/fixtures/generic_vqa``: its own YAML and utils) holds documents with only ``id``, ``image``,
``question`` and ``answer``; the image is a decoded PIL image from a ``datasets`` ``Image()`` column, 300 to 1,000 px
a side, and ``doc_to_visual`` returns PIL images, as lmms-eval's built-in tasks do. Every registered reducer must
answer every document without a recorded failure, report its efficiency figures in ``results["throughput"]``, and
``reducer=none`` must answer exactly like lmms-eval's own ``llava_hf``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lrs_plugin.backbone.tiny import TINY_REDUCER_OPTIONS
from lrs_plugin.harness.run import offline_env, run_lmms_eval
from lrs_plugin.reducers.registry import available_reducers

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "generic_vqa"
TASK = "lrsplugin_generic_vqa"
# (width, height): under one 336-px tile, between one tile and C2F's 1,008-px base level, portrait and landscape.
SIZES = [(300, 300), (512, 384), (1000, 640), (640, 1000), (333, 500), (800, 800)]
ANSWERS = ["red", "blue", "green", "yellow", "white", "black"]


def write_generic_task(folder: Path, *, seed: int = 0) -> Path:
    """Copy the fixture task into ``folder`` with a generated dataset saved next to it; returns the include path."""
    import datasets

    rng = np.random.default_rng(seed)
    include = folder / "tasks"
    shutil.copytree(FIXTURE, include / "generic_vqa")
    rows = {"id": [], "image": [], "question": [], "answer": []}
    from PIL import Image

    for i, (w, h) in enumerate(SIZES):
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        pixels[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 256, size=3, dtype=np.uint8)
        rows["id"].append(f"q{i}")
        rows["image"].append(Image.fromarray(pixels))
        rows["question"].append("What color is the largest building?")
        rows["answer"].append(ANSWERS[i % len(ANSWERS)])
    features = datasets.Features(
        id=datasets.Value("string"),
        image=datasets.Image(),
        question=datasets.Value("string"),
        answer=datasets.Value("string"),
    )
    data = folder / "dataset"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(data))
    yaml_path = include / "generic_vqa" / "generic_vqa.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("dataset_path: DATASET_DIR", f"dataset_path: {data}"))
    return include


@pytest.fixture(scope="module")
def setting(tmp_path_factory, make_tiny_checkpoint, decord_stub):
    base = tmp_path_factory.mktemp("any_task")
    include = write_generic_task(base)
    env = offline_env({"LRS_PLUGIN_HOME": str(base / "home"), "PYTHONPATH": str(decord_stub)})
    checkpoints = {
        "llava": make_tiny_checkpoint("llava", "llama"),
        "llava_next": make_tiny_checkpoint("llava_next", "qwen2"),
    }
    return base, include, env, checkpoints


def _predictions(run) -> dict[int, str]:
    out = {}
    for line in run.samples[TASK].read_text().splitlines():
        record = json.loads(line)
        out[int(record["doc_id"])] = record["filtered_resps"][0]
    return out


def _run(setting, model: str, model_args: str, name: str, extra: tuple[str, ...] = ()):
    base, include, env, _ = setting
    return run_lmms_eval(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        output_path=base / name,
        include_path=include,
        env=env,
        extra_args=list(extra),
        timeout=900,
    )


def _assert_every_doc_answered(run, reducer: str) -> None:
    assert run.results["results"][TASK]["exact_match,none"] is not None
    assert len(_predictions(run)) == len(SIZES)
    figures = run.results["throughput"]
    assert figures["avg_eff_samples"] == len(SIZES), figures
    assert figures["avg_eff_failed"] == 0, f"{reducer}: a document failed; see the run log"
    assert figures["avg_eff_text_only"] == 0
    for key in ("vision_tokens_encoded", "vision_tokens_to_llm", "tflops", "latency_s", "ttft_s"):
        if reducer == "blind" and key.startswith("vision_"):  # the language-prior floor sends no vision token
            assert figures[f"avg_eff_{key}"] == 0, (reducer, key)
            continue
        assert figures[f"avg_eff_{key}"] > 0, (reducer, key)
        assert figures[f"avg_eff_{key}/{TASK}"] == pytest.approx(figures[f"avg_eff_{key}"])


@pytest.mark.parametrize("arch", ["llava", pytest.param("llava_next", marks=pytest.mark.slow)])
def test_reducer_none_answers_a_generic_task_like_llava_hf(setting, arch):
    checkpoint = setting[3][arch]
    ours = _run(setting, "c2f_llava", f"pretrained={checkpoint},reducer=none,device=cpu", f"none-{arch}")
    _assert_every_doc_answered(ours, "none")
    theirs = _run(
        setting,
        "llava_hf",
        f"pretrained={checkpoint},device=cpu,device_map=cpu",
        f"llava_hf-{arch}",
        extra=("--force_simple",),
    )
    a, b = _predictions(ours), _predictions(theirs)
    assert a.keys() == b.keys() == set(range(len(SIZES)))
    assert sum(bool(v.strip()) for v in a.values()) >= len(SIZES) // 2, "the tiny model should answer with text"
    assert a == b


def test_c2f_answers_every_doc_of_a_generic_task(setting):
    checkpoint = setting[3]["llava_next"]
    args = f"pretrained={checkpoint},reducer=c2f,{TINY_REDUCER_OPTIONS['c2f']},device=cpu"
    run = _run(setting, "c2f_llava", args, "c2f")
    _assert_every_doc_answered(run, "c2f")


@pytest.mark.slow
@pytest.mark.parametrize("reducer", sorted(available_reducers()))
def test_every_reducer_answers_every_doc_of_a_generic_task(setting, reducer):
    checkpoint = setting[3]["llava_next"]
    args = ",".join(
        a for a in (f"pretrained={checkpoint}", f"reducer={reducer}", TINY_REDUCER_OPTIONS[reducer], "device=cpu") if a
    )
    run = _run(setting, "c2f_llava", args, f"sweep-{reducer}")
    _assert_every_doc_answered(run, reducer)
