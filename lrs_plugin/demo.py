"""``lrs-plugin demo``: the whole pipeline, offline, on a CPU, in a few minutes.

Steps (data and checkpoint are cached in the output folder, so a rerun only re-evaluates):

1. generate an LRS-VQA set in the real layout and question schema (three subsets, eight categories, TIFF and PNG,
   one 27,328-px PNG), pack it as ``LRS_VQA.7z.001..003`` and install it through the real ``fetch`` path; generate
   MME-RealWorld parquet shards and prepare their Remote Sensing rows the same way;
2. build a tiny random LLaVA-NeXT (Qwen2) checkpoint with ``save_pretrained`` (locally trained tokenizer, processor,
   chat template);
3. run the real ``lmms-eval`` command (no ``--include_path``) with ``c2f_llava`` for ``reducer=c2f`` and for
   ``reducer=none`` on the same backbone, and print the per-category table and a side-by-side efficiency table;
4. draw the focus of one question on the 27,328-px image;
5. the testbed with the trained checkpoint shipped in the package (:func:`lrs_plugin.testbed.table.shipped_checkpoint`,
   a LLaVA-NeXT trained here on ``lrs_synth`` with its distilled RFM): :data:`TESTBED_ROWS` through the same
   ``lmms-eval`` command on :data:`TESTBED_SCENES` evaluation scenes, the table, the accuracy-vs-TFLOPs picture and a
   focus picture.

The model of steps 2-4 is random: those accuracies are meaningless, the machinery and the efficiency columns are the
point. Step 5's accuracies are a trained model's (docs/testbed.md has the full 600-question table).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from lrs_plugin.harness.run import EvalRun, offline_env, run_lmms_eval

__all__ = ["run_demo", "prepare_demo_data", "ensure_checkpoint"]

LRS_TASKS = ("lrs_vqa_fair", "lrs_vqa_bridge", "lrs_vqa_star")
ALL_TASKS = (*LRS_TASKS, "mmerealworld_rs")
METHODS = (("c2f", "reducer=c2f"), ("none", "reducer=none"))
HUGE_SIDE = 27_328
SMALL_HUGE_SIDE = 13_400
TESTBED_ROWS = ("low_res", "full_res", "c2f_rfm", "c2f_oracle", "random")
"""Testbed methods of the demo: the two references, C2F with the distilled RFM and with the target box, and random
tokens at C2F's budget."""
TESTBED_SCENES = 10
"""Evaluation scenes of the demo's testbed part (4 questions each; ``--small``: 2 scenes, every other row)."""


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def prepare_demo_data(out: Path, *, small: bool = False) -> tuple[Path, Path]:
    """Generate the demo datasets under ``out`` and install them through the real fetch code.

    Returns:
        ``(lrs_vqa_root, mmerealworld_rs_root)``.
    """
    from lrs_plugin.data import lrs_vqa, mme_realworld_rs
    from lrs_plugin.data.synthetic.lrs_vqa import write_lrs_vqa, write_lrs_vqa_archive
    from lrs_plugin.data.synthetic.mme_realworld_rs import write_mme_parquet

    lrs_root = out / "data" / "lrs_vqa"
    if not (lrs_root / lrs_vqa.MARKER_NAME).exists():
        side = SMALL_HUGE_SIDE if small else HUGE_SIDE
        _say(f"generating a synthetic LRS-VQA set (one {side:,}-px PNG) and packing it as LRS_VQA.7z.001..003")
        sizes = {"FAIR": 12, "GLH-Bridge": 8, "STAR": 14} if small else None
        source = write_lrs_vqa(out / "generated" / "lrs_vqa", seed=0, questions_per_subset=sizes, bomb_side=side)
        parts = write_lrs_vqa_archive(source, out / "generated" / "lrs_vqa_parts", num_parts=3)
        _say("installing it with the real fetch path (part checks, safe extraction, completion marker)")
        lrs_vqa.fetch(lrs_root, parts_dir=parts[0].parent, progress=True)
    mme_root = out / "data" / "mmerealworld_rs"
    if not (mme_root / mme_realworld_rs.MARKER_NAME).exists():
        _say("generating MME-RealWorld parquet shards and preparing the Remote Sensing rows")
        shards = out / "generated" / "mme_shards"
        write_mme_parquet(shards, seed=0)
        mme_realworld_rs.fetch(mme_root, source_dir=shards, expected_rows=None, progress=True)
    return lrs_root, mme_root


def ensure_checkpoint(folder: Path) -> Path:
    """The tiny random LLaVA-NeXT (Qwen2, 4 text layers) checkpoint, built once into ``folder``."""
    from lrs_plugin.backbone.tiny import build_tiny_llava

    if not (folder / "config.json").exists():
        _say("building a tiny random LLaVA-NeXT (Qwen2) checkpoint with save_pretrained")
        build_tiny_llava(folder, arch="llava_next", lm="qwen2", text_layers=4)
    return folder


def _efficiency(run: EvalRun, tasks: tuple[str, ...]) -> dict[str, float | None]:
    """Sample-weighted means over ``tasks`` of the per-task efficiency metrics."""
    out = {}
    for key in ("vision_tokens_encoded", "vision_tokens_to_llm", "tflops", "latency_s"):
        total, n = 0.0, 0
        for task in tasks:
            value = run.results["results"][task].get(f"eff_{key},none")
            size = run.results["n-samples"][task]["effective"]
            if value is not None:
                total, n = total + value * size, n + size
        out[key] = total / n if n else None
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_efficiency(runs: dict[str, EvalRun]) -> str:
    """Side-by-side table: mean per question of each efficiency figure, per benchmark and method."""
    rows = [("benchmark", "method", "tokens encoded", "tokens to LLM", "TFLOPs", "latency s")]
    for label, tasks in (("LRS-VQA", LRS_TASKS), ("MME-RW-RS", ("mmerealworld_rs",))):
        for method, run in runs.items():
            eff = _efficiency(run, tasks)
            rows.append(
                (
                    label,
                    method,
                    _fmt(eff["vision_tokens_encoded"], ".0f"),
                    _fmt(eff["vision_tokens_to_llm"], ".0f"),
                    _fmt(eff["tflops"], ".6f"),
                    _fmt(eff["latency_s"], ".3f"),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _largest_image_doc(lrs_root: Path) -> dict[str, Any]:
    from lrs_plugin.data import lrs_vqa

    docs = lrs_vqa.build_docs(lrs_root)
    return max(docs, key=lambda d: (d["image_size"][0] * d["image_size"][1], d["hbox"] is not None))


def run_testbed_part(out: Path, *, small: bool = False) -> dict[str, Any]:
    """Step 5: :data:`TESTBED_ROWS` on the shipped trained checkpoint (``lrs-plugin testbed --checkpoint shipped``)."""
    from lrs_plugin.testbed.table import TestbedConfig, run_testbed, shipped_checkpoint

    scenes, rows = (2, TESTBED_ROWS[::2]) if small else (TESTBED_SCENES, TESTBED_ROWS)
    _say(
        f"testbed: the trained checkpoint shipped in the package on {scenes} evaluation scenes ({4 * scenes} questions)"
    )
    config = TestbedConfig(checkpoint=shipped_checkpoint(), eval_scenes=scenes, rows=rows)
    return run_testbed(out, config, log=_say)


def format_testbed(report: dict[str, Any]) -> str:
    """The testbed part's table and where its pictures are."""
    from lrs_plugin.testbed.table import format_table

    lines = [
        "Testbed: a LLaVA-NeXT trained here on lrs_synth (the shipped checkpoint), the same lmms-eval command (%)",
        format_table(report),
        f"accuracy vs TFLOPs: {report['plot']}",
        f"focus picture: {report['focus_picture']}",
    ]
    return "\n".join(lines)


def run_demo(out: Path, *, small: bool = False) -> int:
    """Run the demo into ``out`` and print the tables. Returns the exit status."""
    from lrs_plugin import scoring
    from lrs_plugin.c2f.visualize import visualize

    out = Path(out).resolve()
    start = time.perf_counter()
    lrs_root, mme_root = prepare_demo_data(out, small=small)
    checkpoint = ensure_checkpoint(out / "checkpoint" / "tiny-llava-next-qwen2")
    from lrs_plugin.data import lrs_vqa, mme_realworld_rs

    env = offline_env({lrs_vqa.ROOT_ENV: str(lrs_root), mme_realworld_rs.ENV_ROOT: str(mme_root)})
    runs: dict[str, EvalRun] = {}
    for i, (method, args) in enumerate(METHODS, 1):
        _say(
            f"run {i}/{len(METHODS)}: lmms-eval --model c2f_llava --model_args pretrained=<tiny>,{args} "
            "--tasks lrs_vqa,mmerealworld_rs"
        )
        runs[method] = run_lmms_eval(
            model="c2f_llava",
            model_args=f"pretrained={checkpoint},{args}",
            tasks=["lrs_vqa", "mmerealworld_rs"],
            output_path=out / "results" / method,
            env=env,
            use_task_hook=True,
        )
        _say(f"run {i} finished in {runs[method].wall_s:.1f} s")
    doc = _largest_image_doc(lrs_root)
    _say(f"drawing the focus of {doc['question_id']} ({doc['image_size'][0]:,} px) into focus.png")
    focus = visualize(str(checkpoint), doc["image_path"], doc["text"], out / "focus.png")
    testbed = run_testbed_part(out / "testbed", small=small)

    for method, run in runs.items():
        files = [run.samples[t] for t in LRS_TASKS]
        print(f"LRS-VQA, c2f_llava reducer={method} (per-category accuracy, %)")
        print(scoring.format_lrs_table(scoring.score_lrs_file(files)))
        print()
    print("MME-RealWorld-RS, c2f_llava reducer=c2f")
    print(scoring.format_mme_table(scoring.score_mme_file([runs["c2f"].samples["mmerealworld_rs"]])))
    print()
    print("Efficiency, mean per question (same backbone, prompt, greedy decoding; TFLOPs: full convention)")
    print(format_efficiency(runs))
    print()
    print("NOTE: the checkpoint above is a tiny RANDOM model: the accuracies are meaningless; the machinery and the")
    print("efficiency columns are the point.")
    for method, run in runs.items():
        print(f"results ({method}): {run.results_path}")
    print(f"focus picture: {focus['out']} ({doc['question_id']}: {json.dumps(doc['text'][:60])}...)")
    print()
    print(format_testbed(testbed))
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 0
