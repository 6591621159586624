"""Every registered reducer on generated large images with the tiny backbones: tokens, TFLOPs, latency vs ``none``.

Usage: ``.venv/bin/python bench/reducers.py [--sizes 2000x1500,6000x4000] [--repeats 2]``. TFLOPs are the ``full``
convention of :func:`lrs_plugin.flops.sample_tflops` (the tiny models make absolute numbers meaningless; the
ratios to ``none`` are the point;
tiny tiles are 56 px, so budgets are scaled to 16 tokens per tile). Latency is the median wall time of
``answer`` over the repeats after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.tiny import build_tiny_llava
from lrs_plugin.flops.accounting import ModelDims, sample_tflops
from lrs_plugin.harness.record import SampleRecord
from lrs_plugin.reducers.registry import available_reducers, build_reducer, reducer_spec

OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "random": {"budget": 8, "seed": 0},
    "downsample": {"max_pixels": 56 * 84},
    "fastv": {},
    "pdrop": {},
    "c2f": {"focus_options": {"layer": 1}},
    "visionzip": {"dominant": 3, "contextual": 1},  # 4 of 16 tokens per tile (the README's 64 of 576 is 1/9)
    # 4 top + 4 uniform + 1 of 16 per tile (the seed's call); adaptive PruMerge+ keeps ~all of a 16-patch tile
    "prumerge": {"adaptive": False, "reduction_ratio": 0.25},
    "anyres": {"max_tiles": 1},  # anyres-p1: the base image + one grid tile (LLaVA-NeXT only)
}


def _image(path: Path, w: int, h: int) -> str:
    rng = np.random.default_rng(w * 7 + h)
    yy, xx = np.mgrid[0:h, 0:w]
    base = ((xx // 97 + yy // 89) % 2 * 120 + rng.integers(0, 60, (h, w))).astype(np.uint8)
    Image.fromarray(np.stack([base, base[::-1], base[:, ::-1]], -1)).save(path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    """Print one table per (backbone, image size)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="2000x1500,6000x4000")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for arch, lm in (("llava", "llama"), ("llava_next", "qwen2")):
            bb = Backbone.from_pretrained(
                build_tiny_llava(root / f"{arch}_{lm}", arch=arch, lm=lm, text_layers=4), dtype="float32"
            )
            dims = ModelDims.from_config(bb.config)
            for size in args.sizes.split(","):
                w, h = (int(v) for v in size.split("x"))
                path = _image(root / f"{size}.png", w, h)
                rows: dict[str, tuple[SampleRecord, float, float]] = {}
                for name in available_reducers():
                    if arch not in reducer_spec(name).archs:
                        continue
                    reducer = build_reducer(name, bb, dict(OPTIONS.get(name, {})))
                    out = reducer.answer(path, "What is it?", doc={}, max_new_tokens=4)  # warm-up (decodes image)
                    times = []
                    for _ in range(args.repeats):
                        reducer.close()  # each timed call decodes and encodes the image again
                        t0 = time.perf_counter()
                        out = reducer.answer(path, "What is it?", doc={}, max_new_tokens=4)
                        times.append(time.perf_counter() - t0)
                    reducer.close()
                    rows[name] = (out.record, sample_tflops(out.record, dims)["total"], statistics.median(times))
                ref_s, ref_f, ref_t = rows["none"]
                print(f"\n{arch}+{lm}  image {w}x{h}  (ratios to none)")
                print(
                    f"{'reducer':<11}{'encoded':>9}{'to_llm':>8}{'TFLOPs':>11}{'lat_s':>8}{'enc':>7}{'llm':>7}{'flops':>7}{'lat':>7}"
                )
                for name, (s, f, t) in rows.items():
                    enc, llm = s.vision_tokens_encoded, s.vision_tokens_to_llm
                    print(
                        f"{name:<11}{enc:>9}{llm:>8}{f:>11.3e}{t:>8.3f}{enc / ref_s.vision_tokens_encoded:>7.2f}"
                        f"{llm / ref_s.vision_tokens_to_llm:>7.2f}{f / ref_f:>7.2f}{t / ref_t:>7.2f}"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
