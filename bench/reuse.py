"""Reuse across the questions on one image: wall time per question, LLM tokens and tiles computed, with and without.

One run on synthetic LRS-VQA data (:func:`lrs_plugin.data.synthetic.lrs_vqa.write_lrs_vqa`'s layout and questions;
its KB-size images are upscaled ``--scale`` times, as LRS-VQA's are large, so that anyres grids fill up) with
``--questions`` questions per image (the image's own, then others of its subset), on a tiny random LLaVA-NeXT
(Qwen2) at CLIP-L/336 tile geometry (336-px tiles of 14-px patches: 576 tokens a tile) with tiny widths, on the CPU.
For every reducer that can share work across the questions on one image, each image's questions are asked in a row
by a reducer built with ``reuse=False`` and one built with ``reuse=True``, alternately ``--repeats`` times, side by
side in this process. The question-independent reducers keep an image's vision tokens either way (decoded and
encoded at its first question), so for them the difference is the LLM prefill of the prompt head and image tokens
(prefix reuse); C2F reuses its thumbnail and base-level tile features (its zoomed tiles and its prompt depend on the
question). Times are medians over the repeats; ``first`` is an image's first question (decode + encode + prefill),
``later`` the others; ``s/q`` is the mean over all questions.

Peak memory (``peak_rss_mb``): one child process (its own ``ru_maxrss``) builds the same backbone and answers one
question with ``anyres`` at ``max_tiles=144`` on a 27,328 x 13,000 PNG (LRS-VQA's largest image's size; synthetic
pixels written by ``bench/imagery.py``'s generator, about 2 minutes on 2 cores, kept in ``--workdir`` when given).
``--skip-rss`` leaves it out; ``--rss-only`` runs only it.

    python bench/reuse.py [--images 3] [--questions 6] [--repeats 3] [--reducers anyres,c2f] [--dtype bfloat16]
        [--attn eager] [--workdir DIR] [--skip-rss | --rss-only] [--json]

``--json`` prints one line: ``{"anyres": {"cold_s_per_q", "reuse_s_per_q", "speedup"}, ..., "c2f": {...,
"cold_tiles_per_q", "reuse_tiles_per_q"}, "peak_rss_mb": {"anyres_p144_27k": float, "bench": float},
"answers_identical": bool, "agreement": float}`` (one entry per reducer; ``answers_identical``: every answer, token for
token, is the same with and without reuse; ``agreement``: the share of questions whose answer with reuse equals the
one without, the figure to read with ``--dtype bfloat16`` where bits may differ (float32 by default); ``bench``: this
process's own peak). Absolute times mean little on tiny widths; the ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.tiny import build_tiny_llava
from lrs_plugin.data.synthetic.lrs_vqa import write_lrs_vqa
from lrs_plugin.imagery.large_image import open_image
from lrs_plugin.reducers.registry import available_reducers, build_reducer, reducer_spec

TILE, PATCH = 336, 14  # CLIP-L/336
WIDTHS = {"text_hidden": 128, "text_intermediate": 256, "text_heads": 4, "text_kv_heads": 2}
OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},  # the checkpoint's grids: up to 2x2 / 1x3 tiles + the base image
    "anyres": {"max_tiles": 9},  # anyres-p9: up to 3x3 tiles + the base image
    "downsample": {"max_pixels": 672 * 672},
    "visionzip": {"dominant": 54, "contextual": 10},  # 64 of 576 tokens per tile
    "prumerge": {},  # PruMerge+, adaptive
    "random": {"budget": 576, "seed": 0},
    "c2f": {"focus": "llm_attention", "focus_options": {"layer": 1}},  # reuses its thumbnail + base-level features
}


def _data(root: Path, n_images: int, per_image: int, scale: int) -> list[tuple[str, list[str]]]:
    """``(image path, questions)`` of ``n_images`` images, each upscaled ``scale`` times."""
    tree = write_lrs_vqa(root, seed=0, bomb_image=False)
    rows = [json.loads(line) for line in (tree / "LRS_VQA" / "LRS_VQA_merged.jsonl").read_text().splitlines()]
    by_image: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_image[row["image"]].append(row["text"])
    out = []
    for name in sorted(by_image)[:n_images]:
        subset = [r["text"] for r in rows if r["question_id"].split("_")[0] == name_subset(rows, name)]
        questions = list(dict.fromkeys(by_image[name] + subset))[:per_image]
        with Image.open(tree / name) as image:
            big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)
        path = root / f"{Path(name).stem}_x{scale}.png"
        big.save(path)
        out.append((str(path), questions))
    return out


def name_subset(rows: list[dict[str, Any]], image: str) -> str:
    """The subset (``question_id`` prefix) of ``image``'s questions."""
    return next(r["question_id"].split("_")[0] for r in rows if r["image"] == image)


def _ask(bb: Backbone, name: str, data: list[tuple[str, list[str]]], *, reuse: bool) -> list[dict[str, Any]]:
    """One reducer over every image's questions in a row: per question its time, answer and token counts."""
    ids: list[tuple[int, ...]] = []
    original = bb.generate

    def spy(inputs_embeds: Any, **kwargs: Any) -> Any:
        out = original(inputs_embeds, **kwargs)
        ids.append(out.new_token_ids)
        return out

    bb.generate = spy  # type: ignore[method-assign]
    reducer = build_reducer(name, bb, dict(OPTIONS.get(name, {})), reuse=reuse)
    rows = []
    try:
        for path, questions in data:
            with open_image(path) as image:
                for k, question in enumerate(questions):
                    t0 = time.perf_counter()
                    out = reducer.answer(image, question, doc={}, max_new_tokens=8)
                    seconds = time.perf_counter() - t0
                    r = out.record
                    computed = r.llm_input_len - (r.prefix_tokens_reused or 0)
                    tiles = r.tiles_encoded - (r.tiles_reused or 0)
                    rows.append(
                        {"first": k == 0, "s": seconds, "text": out.text, "ids": ids[-1], "computed": computed}
                        | {"tiles": tiles}
                    )
    finally:
        reducer.close()
        del bb.generate
    return rows


RSS_SIZE = (27_328, 13_000)  # (W, H) of LRS-VQA's largest image


def _big_png(workdir: Path) -> Path:
    """The 27,328 x 13,000 synthetic PNG (written once into ``workdir``)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import imagery  # bench/imagery.py: the streamed synthetic-scene writer

    width, height = RSS_SIZE
    path = workdir / f"synthetic_{width}x{height}.png"
    if not path.exists():
        t = time.perf_counter()
        low = imagery._lowres(-(-height // 4), -(-width // 4), 0)
        tmp = path.with_suffix(".partial")
        imagery._write_png(tmp, imagery._strips(low, height, width, 0), width, height)
        tmp.rename(path)
        print(f"wrote {path.name} ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def _peak_mb() -> float:
    """This process's peak RSS in MB: Linux's ``VmHWM`` (``ru_maxrss`` keeps the parent's peak across ``exec``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def rss_child(ckpt: str, image: str) -> dict[str, Any]:
    """In a fresh process: ``anyres`` p144 answers one question on ``image``; its peak RSS and what it encoded."""
    bb = Backbone.from_pretrained(ckpt, dtype="float32", attn_implementation="sdpa")
    base_mb = _peak_mb()
    reducer = build_reducer("anyres", bb, {"max_tiles": 144})
    t0 = time.perf_counter()
    out = reducer.answer(image, "What is in the image?", doc={}, max_new_tokens=4)
    return {
        "peak_rss_mb": round(_peak_mb(), 1),
        "after_load_mb": round(base_mb, 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "tiles": out.record.tiles_encoded,
        "llm_input_len": out.record.llm_input_len,
    }


def _peak_rss(ckpt: Path, workdir: Path) -> dict[str, Any]:
    image = _big_png(workdir)
    cmd = [sys.executable, __file__, "--rss-child", str(ckpt), str(image)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONHASHSEED": "0"})
    if done.returncode != 0:
        raise RuntimeError(f"the peak-RSS child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Print the table (or, with ``--json``, one line)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=int, default=6)
    ap.add_argument("--reducers", default="", help="comma-separated subset (default: every reducer that reuses)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--workdir", type=Path, help="keep the 27k PNG here between runs (default: a temporary folder)")
    ap.add_argument("--skip-rss", action="store_true", help="leave out the 27k peak-RSS child")
    ap.add_argument("--rss-only", action="store_true", help="run only the 27k peak-RSS child")
    ap.add_argument("--rss-child", nargs=2, metavar=("CKPT", "IMAGE"), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(*args.rss_child)))
        return 0
    results: dict[str, Any] = {}
    identical = True
    same, asked = 0, 0
    rss: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = build_tiny_llava(
            root / "ckpt", arch="llava_next", lm="qwen2", image_size=TILE, patch_size=PATCH, widths=WIDTHS
        )
        if not args.skip_rss:
            workdir = args.workdir or root
            workdir.mkdir(parents=True, exist_ok=True)
            rss = _peak_rss(ckpt, workdir)
        data = [] if args.rss_only else _data(root / "lrs", args.images, args.questions, args.scale)
        bb = Backbone.from_pretrained(ckpt, dtype=args.dtype, attn_implementation=args.attn)
        names = [n for n in available_reducers() if reducer_spec(n).reusable and bb.arch in reducer_spec(n).archs]
        if args.rss_only:
            names = []
        if args.reducers:
            names = [n for n in names if n in args.reducers.split(",")]
        lines = []
        for name in names:
            runs: dict[bool, list[list[dict[str, Any]]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for reuse in (False, True):
                    runs[reuse].append(_ask(bb, name, data, reuse=reuse))
            answers = {reuse: [(q["text"], q["ids"]) for q in runs[reuse][0]] for reuse in runs}
            identical &= all([(q["text"], q["ids"]) for q in run] == answers[False] for r in runs.values() for run in r)
            same += sum(a == b for a, b in zip(answers[True], answers[False], strict=True))
            asked += len(answers[False])
            row: dict[str, Any] = {}
            for reuse, label in ((False, "cold"), (True, "reuse")):
                per_q = [statistics.median(run[i]["s"] for run in runs[reuse]) for i in range(len(runs[reuse][0]))]
                first = [s for s, q in zip(per_q, runs[reuse][0], strict=True) if q["first"]]
                later = [s for s, q in zip(per_q, runs[reuse][0], strict=True) if not q["first"]]
                computed = [q["computed"] for q in runs[reuse][0]]
                row[label] = {
                    "s_per_q": statistics.fmean(per_q),
                    "first_s": statistics.fmean(first),
                    "later_s": statistics.fmean(later),
                    "tokens_first": statistics.fmean(
                        c for c, q in zip(computed, runs[reuse][0], strict=True) if q["first"]
                    ),
                    "tokens_later": statistics.fmean(
                        c for c, q in zip(computed, runs[reuse][0], strict=True) if not q["first"]
                    ),
                    "tiles_per_q": statistics.fmean(q["tiles"] for q in runs[reuse][0]),
                }
            cold, warm = row["cold"], row["reuse"]
            results[name] = {
                "cold_s_per_q": round(cold["s_per_q"], 4),
                "reuse_s_per_q": round(warm["s_per_q"], 4),
                "speedup": round(cold["s_per_q"] / warm["s_per_q"], 3),
            }
            if name == "c2f":  # the other reducers keep their vision tokens per image either way
                results[name] |= {
                    "cold_tiles_per_q": round(cold["tiles_per_q"], 3),
                    "reuse_tiles_per_q": round(warm["tiles_per_q"], 3),
                }
            lines.append(
                f"{name:<11}"
                + "".join(
                    f"{r['first_s']:>9.3f}{r['later_s']:>9.3f}{r['s_per_q']:>9.3f}{r['tokens_first']:>8.0f}"
                    f"{r['tokens_later']:>8.0f}{r['tiles_per_q']:>8.2f}"
                    for r in (cold, warm)
                )
                + f"{cold['later_s'] / warm['later_s']:>9.2f}{cold['s_per_q'] / warm['s_per_q']:>9.2f}"
            )
    peak_mb = _peak_mb()
    peaks = {"anyres_p144_27k": rss.get("peak_rss_mb"), "bench": round(peak_mb, 1)}
    agreement = round(same / asked, 4) if asked else None
    summary = json.dumps({**results, "peak_rss_mb": peaks, "answers_identical": identical, "agreement": agreement})
    if args.json:
        print(summary)
        return 0
    print(
        f"tiny LLaVA-NeXT (Qwen2) at CLIP-L/336 tiles, {args.images} synthetic LRS-VQA images x{args.scale}, "
        f"{args.questions} questions each, median of {args.repeats} side-by-side repeats (seconds; tokens = LLM prompt "
        "positions computed per question; tiles/q = tiles the vision tower ran per question)"
    )
    head = "".join(f"{h:>9}" for h in ("first_s", "later_s", "s/q")) + "".join(
        f"{h:>8}" for h in ("tok_1st", "tok_lat", "tiles/q")
    )
    print(f"{'':<11}{'--- cold (reuse=false) ':-<51}{' reuse=true ':-<51}{'speedup':>18}")
    print(f"{'reducer':<11}{head}{head}{'later':>9}{'s/q':>9}")
    print("\n".join(lines))
    print(
        f"answers identical with and without reuse ({args.dtype}, {args.attn}): {identical} (agreement {agreement}); "
        f"this process's peak RSS {peak_mb:.0f} MB"
    )
    if rss:
        print(
            f"anyres max_tiles=144 on a {RSS_SIZE[0]:,} x {RSS_SIZE[1]:,} PNG, one process: peak RSS "
            f"{rss['peak_rss_mb']:,.0f} MB ({rss['after_load_mb']:,.0f} MB after loading the model), {rss['tiles']} "
            f"tiles, {rss['llm_input_len']:,} LLM positions, {rss['seconds']:.1f} s"
        )
    print(f"--json: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
