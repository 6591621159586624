"""Oracle / uniform focus recall of C2F on the lrs_synth evaluation split, released vs exact tile-vote mapping.

Geometry only (a random 32-px-tile LLaVA-NeXT built from config; answers are not scored): how often can the
coarse-to-fine zoom reach the target at all, whatever the scorer? Prints one table and, with ``--json``, one line.

    python bench/focus_recall.py [--scenes 150] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.backbone.tiny import build_tiny_llava
    from lrs_plugin.c2f.driver import C2FConfig, run_c2f
    from lrs_plugin.focus.scorers import build_focus
    from lrs_plugin.imagery.large_image import open_image
    from lrs_plugin.testbed.scenes import TILE, make_scene, scene_questions

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_tiny_llava(f"{tmp}/ckpt", arch="llava_next", lm="qwen2", image_size=TILE, patch_size=8)
        backbone = Backbone.from_pretrained(ckpt, dtype="float32")
    settings = {
        "oracle/released": ("oracle", C2FConfig()),
        "oracle/exact": ("oracle", C2FConfig(newline_vote_quirk=False)),
        "uniform/released": ("uniform", C2FConfig()),
    }
    sums: dict[str, dict[str, list[float]]] = {k: {} for k in settings}
    start = time.perf_counter()
    for index in range(args.scenes):
        scene = make_scene("eval", 0, index)
        questions = scene_questions(scene, np.random.default_rng([2, 0, index, 7]))
        with open_image(scene.pixels) as image:
            for question in questions:
                for key, (focus, config) in settings.items():
                    result = run_c2f(
                        backbone,
                        image,
                        question["text"],
                        build_focus(focus, backbone),
                        config,
                        doc={"hbox": question["hbox"]},
                        max_new_tokens=1,
                    )
                    row = sums[key].setdefault(question["category"], [])
                    record = result.record
                    row.append(float(record.focus_recall.tile))
                    sums[key].setdefault("_token", []).append(float(record.focus_recall.token))
                    sums[key].setdefault("_tokens_to_llm", []).append(float(record.vision_tokens_to_llm))
    out = {}
    for key, rows in sums.items():
        cats = {c: 100 * float(np.mean(v)) for c, v in sorted(rows.items()) if not c.startswith("_")}
        every = [x for c, v in rows.items() if not c.startswith("_") for x in v]
        out[key] = {
            "tile_recall": 100 * float(np.mean(every)),
            "by_category": cats,
            "token_recall": 100 * float(np.mean(rows["_token"])),
            "vision_tokens_to_llm": float(np.mean(rows["_tokens_to_llm"])),
        }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.scenes} scenes, {4 * args.scenes} questions, {time.perf_counter() - start:.0f} s")
    print(f"{'setting':<18} {'tile recall':>11} {'token recall':>12} {'tokens to LLM':>13}  by category (tile recall)")
    for key, row in out.items():
        cats = ", ".join(f"{c} {v:.1f}" for c, v in row["by_category"].items())
        print(
            f"{key:<18} {row['tile_recall']:>10.1f}% {row['token_recall']:>11.1f}% "
            f"{row['vision_tokens_to_llm']:>13.0f}  {cats}"
        )


if __name__ == "__main__":
    main()
