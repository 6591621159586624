"""``lrs-plugin demo``: the benchmark pipeline end to end on generated data, offline, on a CPU.

Steps (each cached in the output folder, so a rerun only re-evaluates):

1. generate an LRS-VQA tree in the real layout (all subsets and categories, TIFF and PNG, one bomb-sized PNG), pack
   it as a multi-volume 7z, and install it with the real ``fetch`` path (part checks, safe extraction, marker);
2. generate MME-RealWorld parquet shards (base64 images, non-RS rows) and prepare them with the real ``fetch``;
3. run the real ``lmms-eval`` command on ``lrs_vqa`` and ``mmerealworld_rs`` with the deterministic ``lrs_dummy``
   model and print the per-category tables computed from the sample logs.

The model is a dummy: the accuracies mean nothing; the point is the machinery.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lrs_plugin.harness import offline_env, run_lmms_eval

__all__ = ["run_demo"]


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
        _say("generating a synthetic LRS-VQA set and packing it as LRS_VQA.7z.001..003")
        source = write_lrs_vqa(out / "generated" / "lrs_vqa", seed=0, questions_per_subset=_lrs_sizes(small))
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


def _lrs_sizes(small: bool) -> dict[str, int] | None:
    return {"FAIR": 12, "GLH-Bridge": 8, "STAR": 14} if small else None


def run_demo(out: Path, *, small: bool = False) -> int:
    """Run the demo into ``out`` and print the tables. Returns the exit status."""
    from lrs_plugin import scoring

    out = Path(out).resolve()
    start = time.perf_counter()
    lrs_root, mme_root = prepare_demo_data(out, small=small)
    _say("running: lmms-eval --model lrs_dummy --tasks lrs_vqa,mmerealworld_rs --include_path <plugin tasks>")
    env = offline_env({"LRS_VQA_ROOT": str(lrs_root), "MME_RW_RS_ROOT": str(mme_root)})
    run = run_lmms_eval(
        model="lrs_dummy",
        model_args="pretrained=lrs-dummy",
        tasks=["lrs_vqa", "mmerealworld_rs"],
        output_path=out / "results",
        env=env,
    )
    lrs_files = [run.samples[t] for t in ("lrs_vqa_fair", "lrs_vqa_bridge", "lrs_vqa_star")]
    print("LRS-VQA (per-category accuracy, %)")
    print(scoring.format_lrs_table(scoring.score_lrs_file(lrs_files)))
    print()
    print("MME-RealWorld-RS (accuracy, %)")
    print(scoring.format_mme_table(scoring.score_mme_file([run.samples["mmerealworld_rs"]])))
    print()
    print("NOTE: lrs_dummy is a deterministic stand-in, not a model: these accuracies are meaningless.")
    print(f"results: {run.results_path}")
    for task, path in sorted(run.samples.items()):
        print(f"samples ({task}): {path}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s (lmms-eval run: {run.wall_s:.1f} s)")
    return 0
