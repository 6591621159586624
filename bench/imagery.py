"""Per-question pyramid cost on large images: naive (original-style) vs LargeImage + render_tiles vs one decode.

Not run by the tests. Generates synthetic remote-sensing-like PNG and TIFF images once (research note
``largeimage.md`` §3: multi-octave terrain with correlated channels, fields, buildings, roads, vehicles, sensor noise;
written in strips, < 1 GB of RAM even at 27k), then runs every configuration in a fresh subprocess:

* ``floor:<decoder>``: one full decode with each available decoder (pyvips, OpenCV, Pillow, tifffile); the fastest
  is the one-decode floor.
* ``naive``: every question decodes with Pillow, normalises the whole image in float32 and bilinear-resizes it to
  each level it needs (``F.interpolate``, as the original ``process_images``), then cuts the tiles. A lower bound of
  the original, which also materialises every finer level up to full resolution.
* ``ours``: one :class:`~lrs_plugin.imagery.LargeImage` per image (``backend="auto"``) and ``render_tiles`` per
  question; ``ours-memory``: the same with ``backend="memory"`` (the fallback without pyvips).

A question renders what the DIP needs: the thumbnail, every base-level tile (long side 1008) and 6 level-1 tiles at
random positions. Time is wall time inside the child (imports excluded); peak RSS is the child's ``ru_maxrss``.

    python bench/imagery.py --quick
    python bench/imagery.py --sizes 27328 --formats png --workdir /tmp/lrs-bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

TILE, BASE_LONG_SIDE, LEVEL1_TILES, STRIP = 336, 1008, 6, 512
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --- synthetic images ----------------------------------------------------------------------------------------------


def _lowres(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 [h, w, 3] quarter-resolution scene: terrain, fields, roads, buildings."""
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)

    def field(octaves: int = 7) -> np.ndarray:
        total = np.zeros((h, w), np.float32)
        for o in range(octaves):
            g = 3 * 2**o
            grid = torch.from_numpy(rng.standard_normal((1, 1, g + 1, g + 1)).astype(np.float32))
            total += 0.6**o * F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)[0, 0].numpy()
        return total

    terrain, moisture, urban = field(), field(), field(5)
    rgb = np.stack(
        [100 + 28 * terrain - 14 * moisture, 108 + 24 * terrain + 18 * moisture, 84 + 16 * terrain + 4 * moisture],
        axis=2,
    )
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    del rgb, terrain, moisture
    draw = ImageDraw.Draw(image)
    area = h * w / (6832 * 6832)
    for _ in range(int(4000 * area) + 5):  # fields: large, tinted parcels
        x, y, fw, fh = rng.integers(0, w), rng.integers(0, h), rng.integers(40, 400), rng.integers(40, 400)
        tint = tuple(int(v) for v in rng.integers((70, 85, 55), (165, 160, 120)))  # earthy crops and soil
        draw.rectangle((x, y, x + fw, y + fh), fill=tint)
    for _ in range(int(600 * area) + 3):  # roads
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        ang, length = rng.uniform(0, math.pi), rng.integers(200, 3000)
        end = (x0 + length * math.cos(ang), y0 + length * math.sin(ang))
        draw.line((x0, y0, *end), fill=tuple(int(v) for v in rng.integers(115, 165, 3)), width=int(rng.integers(1, 4)))
    ys, xs = np.nonzero(urban[::8, ::8] > 0.8)  # buildings, clustered where the "urban" field is high
    for i in rng.choice(len(ys), size=min(len(ys), int(50000 * area) + 10), replace=False):
        x, y = xs[i] * 8 + rng.integers(0, 8), ys[i] * 8 + rng.integers(0, 8)
        bw, bh = rng.integers(2, 14, 2)
        roof = tuple(int(v) for v in rng.integers(90, 250, 3)) if rng.random() < 0.7 else (200, 90, 70)
        draw.rectangle((x, y, x + bw, y + bh), fill=roof, outline=(60, 60, 60))
    return np.asarray(image)


def _strips(low: np.ndarray, height: int, width: int, seed: int):
    """Full-resolution strips of STRIP rows: 4x bilinear upsample + vehicles + luminance/chroma noise."""
    import torch
    import torch.nn.functional as F

    lh = low.shape[0]
    for index, y0 in enumerate(range(0, height, STRIP)):
        y1 = min(y0 + STRIP, height)
        b0, b1 = max(y0 // 4 - 2, 0), min(-(-y1 // 4) + 2, lh)
        block = torch.from_numpy(low[b0:b1].astype(np.float32)).permute(2, 0, 1)[None]
        up = F.interpolate(block, scale_factor=4, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        strip = up[y0 - 4 * b0 : y1 - 4 * b0, :width]
        rng = np.random.default_rng([seed, index])
        for _ in range(int(strip.shape[0] * width / 4e4)):  # 6x12 px vehicles
            x, y = rng.integers(0, width - 12), rng.integers(0, max(strip.shape[0] - 12, 1))
            vh, vw = (6, 12) if rng.random() < 0.5 else (12, 6)
            strip[y : y + vh, x : x + vw] = rng.integers(20, 240, 3)
        noise = rng.standard_normal(strip.shape[:2], dtype=np.float32) * 2
        strip += noise[:, :, None] + rng.standard_normal(strip.shape, dtype=np.float32) * 0.7
        yield np.clip(strip + 0.5, 0, 255).astype(np.uint8)


def _png_filter(rows: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Adaptive PNG filtering (libpng's minimum-sum-of-absolute-differences heuristic), one filter byte per row."""
    x = rows.reshape(rows.shape[0], -1).astype(np.int16)
    up = np.vstack([prev[None].astype(np.int16), x[:-1]])
    left, upleft = np.zeros_like(x), np.zeros_like(x)
    left[:, 3:], upleft[:, 3:] = x[:, :-3], up[:, :-3]
    pa, pb, pc = np.abs(up - upleft), np.abs(left - upleft), np.abs(left + up - 2 * upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    cands = np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - paeth]).astype(np.uint8)
    best = np.abs(cands.view(np.int8).astype(np.int16)).sum(axis=2, dtype=np.int64).argmin(axis=0)
    out = np.empty((x.shape[0], x.shape[1] + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = cands[best, np.arange(x.shape[0])]
    return out


def _write_png(path: Path, strips, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    # Z_RLE: as small as level 6 on this content (2.2:1) at 10x its speed; inflate speed does not depend on it.
    packer = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    prev = np.zeros(width * 3, np.uint8)
    with open(path, "wb") as fh:
        fh.write(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0]))
        )
        for strip in strips:
            for r in range(0, strip.shape[0], 128):
                rows = strip[r : r + 128]
                fh.write(chunk(b"IDAT", packer.compress(_png_filter(rows, prev).tobytes())))
                prev = rows[-1].reshape(-1)
        fh.write(chunk(b"IDAT", packer.flush()) + chunk(b"IEND", b""))


def _write_tiff(path: Path, strips, width: int, height: int) -> None:
    """512-tiled deflate TIFF (a common GeoTIFF layout), no predictor."""
    import tifffile

    def tiles():
        for strip in strips:
            padded = np.zeros((STRIP, -(-width // 512) * 512, 3), np.uint8)
            padded[: strip.shape[0], :width] = strip
            for x in range(0, width, 512):
                yield padded[:, x : x + 512]

    tifffile.imwrite(
        path,
        tiles(),
        shape=(height, width, 3),
        dtype=np.uint8,
        photometric="rgb",
        tile=(512, 512),
        compression="zlib",
        compressionargs={"level": 1},  # decode speed does not depend on the level; level 6 takes 10x longer
        bigtiff=width * height * 3 > 2**31,
    )


def generate(workdir: Path, size: int, fmt: str, seed: int = 0) -> Path:
    """Write (once) a ``size x size`` synthetic image; returns its path."""
    path = workdir / f"synthetic_{size}.{fmt}"
    if path.exists():
        return path
    t = time.perf_counter()
    low = _lowres(-(-size // 4), -(-size // 4), seed)
    tmp = path.with_suffix(".partial")
    (_write_png if fmt == "png" else _write_tiff)(tmp, _strips(low, size, size, seed), size, size)
    tmp.rename(path)
    print(f"generated {path.name}: {path.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - t:.0f} s", flush=True)
    return path


# --- pyramid geometry (method.md §1.2-1.3, thumbnail + level 0 + level 1 only) -------------------------------------


class _Level:
    def __init__(self, height: int, width: int, scale: float) -> None:
        h0, w0 = round(height * scale), round(width * scale)
        k = min(math.ceil(h0 / TILE) * TILE / h0, math.ceil(w0 / TILE) * TILE / w0)
        self.resize_hw = (round(h0 * k), round(w0 * k))
        self.grid_hw = (math.ceil(self.resize_hw[0] / TILE), math.ceil(self.resize_hw[1] / TILE))


def _levels(height: int, width: int) -> tuple[_Level, _Level, _Level]:
    base = min(BASE_LONG_SIDE / max(height, width), 1.0)
    s = 1.0
    while s / 2 >= base:
        s /= 2
    level1 = s if s > base else min(2 * base, 1.0)
    return (
        _Level(height, width, min(TILE / height, TILE / width)),
        _Level(height, width, base),
        _Level(height, width, level1),
    )


def _questions(level1: _Level, n: int) -> list[list[tuple[int, int]]]:
    nb_h, nb_w = level1.grid_hw
    every = [(r, c) for r in range(nb_h) for c in range(nb_w)]
    out = []
    for q in range(n):
        pick = np.random.default_rng(1000 + q).choice(len(every), size=min(LEVEL1_TILES, len(every)), replace=False)
        out.append([every[i] for i in sorted(pick)])
    return out


# --- child processes -----------------------------------------------------------------------------------------------


def _floor(path: Path, decoder: str) -> dict:
    base = _rss_now()
    t = time.perf_counter()
    if decoder == "pyvips":
        import pyvips

        pyvips.Image.new_from_file(str(path), access="sequential", fail_on="error").avg()
    elif decoder == "cv2":
        import cv2

        cv2.setNumThreads(1)
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None
    elif decoder == "tifffile":
        import tifffile

        tifffile.imread(path, maxworkers=1)
    else:
        from PIL import Image

        from lrs_plugin.imagery.large_image import pillow_pixel_limit

        with pillow_pixel_limit(), Image.open(path) as image:
            image.load()
    return {"q": [time.perf_counter() - t], "base_rss_mb": base}


def _naive_question(path: Path, levels, tiles_l1) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from lrs_plugin.imagery.large_image import pillow_pixel_limit

    with pillow_pixel_limit(), Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    full = torch.from_numpy(pixels).permute(2, 0, 1).float()
    del pixels
    full = full.div_(255).sub_(torch.tensor(CLIP_MEAN)[:, None, None]).div_(torch.tensor(CLIP_STD)[:, None, None])[None]
    out = []
    for level, picks in zip(levels, [[(0, 0)], None, tiles_l1], strict=True):
        (rh, rw), (nb_h, nb_w) = level.resize_hw, level.grid_hw
        resized = F.interpolate(full, size=(rh, rw), mode="bilinear", align_corners=False)[0]
        padded = F.pad(resized, (0, nb_w * TILE - rw, 0, nb_h * TILE - rh))
        grid = padded.unfold(1, TILE, TILE).unfold(2, TILE, TILE).permute(1, 2, 0, 3, 4)  # [nb_h, nb_w, 3, T, T]
        picks = picks or [(r, c) for r in range(nb_h) for c in range(nb_w)]
        out += [grid[r, c].contiguous().numpy() for r, c in picks]
    return np.stack(out)


def _child(spec: dict) -> dict:
    if "generate" in spec:
        workdir, size, fmt = spec["generate"]
        generate(Path(workdir), size, fmt)
        return {}
    path, method = Path(spec["path"]), spec["method"]
    if not method.startswith("floor:"):  # naive and ours compute with torch (its import alone is ~0.5 GB of RSS)
        import torch

        torch.set_num_threads(spec["threads"])
    from lrs_plugin.c2f.render import render_thumbnail, render_tiles
    from lrs_plugin.imagery.large_image import LargeImage, image_size

    if method.startswith("floor:"):
        return _floor(path, method.split(":", 1)[1])

    width, height = image_size(path)
    levels = _levels(height, width)
    questions = _questions(levels[2], spec["questions"])
    times, first, backend, rss0 = [], None, "pillow+torch", _rss_now()
    kw = {"tile": TILE, "mean": CLIP_MEAN, "std": CLIP_STD}
    base_tiles = [(r, c) for r in range(levels[1].grid_hw[0]) for c in range(levels[1].grid_hw[1])]
    if method == "naive":
        need = width * height * 15  # uint8 copy + float32 image; Pillow's 4 B/px buffer is freed first
        available = _meminfo("MemAvailable")
        if available < 1.2 * need:
            return {"skipped": f"needs ~{need / 1e9:.1f} GB, {available / 1e9:.1f} GB available"}
        for q in questions[: spec["naive_questions"]]:
            t = time.perf_counter()
            tiles = _naive_question(path, levels, q)
            times.append(time.perf_counter() - t)
            first = tiles if first is None else first
    else:
        image = None
        for q in questions:
            t = time.perf_counter()
            if image is None:  # the first question opens (and decodes) the image
                image = LargeImage(path, backend="memory" if method == "ours-memory" else "auto")
            thumb = render_thumbnail(image, levels[0], **kw)[None]
            base = render_tiles(image, levels[1], base_tiles, **kw)
            tiles = np.concatenate([thumb, base, render_tiles(image, levels[2], q, **kw)])
            times.append(time.perf_counter() - t)
            first = tiles if first is None else first
        backend = image.backend
        image.close()
    np.save(spec["dump"], first)
    return {"q": times, "backend": backend, "base_rss_mb": rss0}


def _rss_now() -> float:
    """Current RSS in MB (after imports, before any work): the interpreter and library baseline."""
    return _meminfo("VmRSS", "/proc/self/status") / 2**20


def _meminfo(key: str, source: str = "/proc/meminfo") -> int:
    with open(source) as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _run_child(spec: dict, env: dict) -> dict:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec)], stdout=out, stderr=err, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        text = out.read().decode()
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}: {err.read().decode()[-600:]}"}
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    return result


# --- driver --------------------------------------------------------------------------------------------------------


def _decoders(fmt: str) -> list[str]:
    names = []
    for module, name in [("pyvips", "pyvips"), ("cv2", "cv2")]:
        try:
            __import__(module)
            names.append(name)
        except (ImportError, OSError):
            pass
    return names + (["tifffile", "pillow"] if fmt == "tif" else ["pillow"])


_HEADER = "  " + " ".join(
    f"{name:{align}{width}}"
    for name, align, width in [
        ("method", "<", 16),
        ("backend", "<", 17),
        ("q1 (s)", ">", 9),
        ("later (s)", ">", 10),
        ("avg/q (s)", ">", 11),
        ("peak MB", ">", 8),
        ("base MB", ">", 8),
    ]
)


def _fmt_row(label: str, r: dict) -> str:
    if "q" not in r:
        return f"  {label:<16} {r.get('skipped') or r.get('error')}"
    q = r["q"]
    later = f"{np.mean(q[1:]):.3f}" if len(q) > 1 else "-"
    r["avg"] = float(np.mean(q))  # naive reuses nothing, so its measured questions stand for all of them
    avg = f"{r['avg']:.2f}" if len(q) > 1 or label == "naive" else "-"
    rss = f"{r['peak_rss_mb']:>8,.0f} {r['base_rss_mb']:>8,.0f}"
    return f"  {label:<16} {r.get('backend', ''):<17} {q[0]:>9.2f} {later:>10} {avg:>11} {rss}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[7000, 27328])
    parser.add_argument("--formats", nargs="+", default=["png", "tif"], choices=["png", "tif"])
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument(
        "--naive-questions", type=int, default=2, help="naive reuses nothing: each question costs the same"
    )
    parser.add_argument("--methods", nargs="+", default=["floor", "naive", "ours", "ours-memory"])
    parser.add_argument("--threads", type=int, default=1, help="torch / libvips / OpenCV threads per child")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lrs-imagery-bench")
    parser.add_argument("--quick", action="store_true", help="7k only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = _child(json.loads(args.child))
        if result:
            print(json.dumps(result))
        return 0
    sizes = [7000] if args.quick else args.sizes
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, VIPS_CONCURRENCY=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    nq = args.questions
    what = f"thumbnail + all base-level tiles + {LEVEL1_TILES} level-1 tiles"
    print(f"{nq} questions per image ({what}); {args.threads} thread(s) per process")
    for size in sizes:
        for fmt in args.formats:
            # In a child: the parent must stay small, because a spawned child's ru_maxrss starts from the RSS
            # high-water mark of the process it was spawned from (Linux carries it across vfork + exec).
            spec = {"generate": [str(args.workdir), size, fmt]}
            subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True)
            path = args.workdir / f"synthetic_{size}.{fmt}"
            print(f"\n{path.name} ({size}x{size}, {path.stat().st_size / 1e6:,.0f} MB)")
            print(_HEADER)
            results = {}
            for method in args.methods:
                names = [f"floor:{d}" for d in _decoders(fmt)] if method == "floor" else [method]
                for name in names:
                    dump = args.workdir / f"tiles_{name}.npy"
                    spec = {
                        "path": str(path),
                        "method": name,
                        "questions": nq,
                        "threads": args.threads,
                        "naive_questions": args.naive_questions,
                        "dump": str(dump),
                    }
                    results[name] = _run_child(spec, env)
                    print(_fmt_row(name, results[name]), flush=True)
            _print_ratios(results, nq, args.workdir)
    return 0


def _print_ratios(results: dict, nq: int, workdir: Path) -> None:
    floors = {k: r["q"][0] for k, r in results.items() if k.startswith("floor:") and "q" in r}
    ours, naive = results.get("ours", {}), results.get("naive", {})
    lines = []
    if floors and "avg" in ours:
        best = min(floors, key=floors.get)
        lines.append(
            f"ours over {nq} questions / one decode ({best} {floors[best]:.2f} s) = "
            f"{ours['avg'] * nq / floors[best]:.2f}x   (avg per question vs the floor amortised over {nq} questions)"
        )
    if "avg" in ours and "avg" in naive:
        lines.append(
            f"naive / ours: time per question {naive['avg'] / ours['avg']:.1f}x, "
            f"peak RSS {naive['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x"
        )
        a, b = np.load(workdir / "tiles_ours.npy"), np.load(workdir / "tiles_naive.npy")
        lines.append(
            f"max |ours - naive| over question 1's {len(a)} tiles: {np.abs(a - b).max():.2e} (normalised units)"
        )
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
