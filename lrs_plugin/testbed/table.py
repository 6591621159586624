r"""``lrs-plugin testbed``: generate, train, distill, evaluate every method through ``lmms-eval``, tabulate, draw.

One command from nothing to the accuracy-vs-efficiency table of the testbed (docs/testbed.md):

1. the evaluation split of ``lrs_synth`` (:func:`~lrs_plugin.testbed.scenes.write_lrs_synth`, ``eval`` stream) and
   a few ``train``-split scenes for the RFM's recorded passes;
2. the testbed model (:func:`~lrs_plugin.testbed.train.train_testbed`) and its RFM
   (:func:`~lrs_plugin.focus.train_rfm`, written into the checkpoint with its ``llm_layer_list``);
3. every row of :func:`row_specs` through the real ``lmms-eval`` command (``--model c2f_llava --tasks lrs_synth``),
   one process per row, with the one checkpoint;
4. the table, ``testbed.json``, ``accuracy_vs_tflops.png`` (a point per row, the Pareto front joined) and
   ``focus.png`` (C2F with the RFM on one evaluation question).

Every stage reuses what ``out`` already holds when it was made with the same settings (data marker, the model's
``train_log.json`` config, the RFM's log, each row's ``row.json``), so a second run only re-reads results; delete a
folder to redo that stage. No evaluation scene is trained on: the model and the RFM see ``train``-split scenes only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lrs_plugin.errors import ConfigError, EvaluationFailedError
from lrs_plugin.testbed import scenes as sc

__all__ = [
    "BASELINE_MAX_TILES",
    "ROW_KEYS",
    "RowSpec",
    "TestbedConfig",
    "format_table",
    "make_checkpoint",
    "pareto_front",
    "row_specs",
    "run_testbed",
    "shipped_checkpoint",
]

CHECKPOINT_FILES = ("config.json", "model.safetensors", "rfm.safetensors", "train_log.json", "rfm_train_log.json")
"""Files every trained testbed checkpoint holds (besides the tokenizer and processor files of ``save_pretrained``)."""

ROW_KEYS = (
    "low_res",
    "full_res",
    "c2f_rfm",
    "c2f_llm_attention",
    "c2f_oracle",
    "c2f_uniform",
    "random",
    "visionzip",
    "fastv",
    "pdrop",
)
"""Rows of the table, in order (``random`` needs ``c2f_rfm``'s token count, so it runs after it)."""

BASELINE_MAX_TILES = 144
"""The stock-layout baselines' anyres limit: the paper's ``p144`` (12 x 12 tiles of 32 px: 384 px, as 4,032 px is to
LRS-VQA's 4-27k px images)."""

RFM_LAYERS = (2, 3)
"""``llm_layer_list`` of the testbed's RFM: 3 layers initialised from LLM layers 1-3, scoring like layer 3 (the
layer the training's focus term supervises, :data:`lrs_plugin.testbed.train.FOCUS_LAYER`)."""

ZOOM_STEPS = 5
"""C2F rows zoom until the finest level (every testbed scene has at most 6 levels)."""

C2F_OPTIONS = {"num_zoom_steps": ZOOM_STEPS, **sc.C2F_CLEAN}
"""Knobs of every C2F row and of the RFM's recorded passes. The released tile-vote mapping (``newline_vote_quirk``,
unpadded token grid over the padded tile grid) drifts further from the voted tokens at every zoom: on the testbed
with 5 zooms the oracle focus kept the target's tile at the finest level for only 22.7 % of the questions with it
(measured on the 600 evaluation questions); the truncating unpad (``unpad_floor_quirk``) never shows a target in the
last partial token row or column of the base grid, up to a sixth of the scene here. The rows use the clean options
(:data:`lrs_plugin.testbed.scenes.C2F_CLEAN`)."""


@dataclass(frozen=True)
class RowSpec:
    """One method of the table: ``key``, the ``reducer`` and its ``options`` (model-argument values), and a note."""

    key: str
    reducer: str
    options: dict[str, Any]
    note: str

    def model_args(self, pretrained: str | Path) -> str:
        """The ``--model_args`` string of this row for checkpoint ``pretrained``."""
        common = {"pretrained": str(pretrained), "reducer": self.reducer, "dtype": "float32", "device": "cpu"}
        common["attn_implementation"] = "sdpa"
        common["tile_batch_size"] = 256
        return ",".join(f"{k}={v}" for k, v in {**common, **self.options}.items())


def row_specs(*, random_budget: int | None = None) -> list[RowSpec]:
    """The table's methods (:data:`ROW_KEYS` order); ``random`` is left out until ``random_budget`` is known."""
    from lrs_plugin.testbed.train import FOCUS_LAYER

    c2f = dict(C2F_OPTIONS)
    p = {"max_tiles": BASELINE_MAX_TILES}
    rows = [
        RowSpec("low_res", "none", {}, "the stock model on the whole scene (base tile + its pinpoint grid, 96 px)"),
        RowSpec(
            "full_res",
            "c2f",
            {**c2f, "focus": "uniform", "keep_ratio": 1.0, "select_ratio": 1.0},
            "every tile of the finest level, every token (C2F's layout)",
        ),
        RowSpec("c2f_rfm", "c2f", {**c2f, "focus": "rfm"}, "C2F, distilled RFM, keep / select 0.25"),
        RowSpec(
            "c2f_llm_attention",
            "c2f",
            {**c2f, "focus": "llm_attention", "focus_layer": FOCUS_LAYER},
            f"C2F, the LLM's own attention at layer {FOCUS_LAYER} (the RFM's teacher)",
        ),
        RowSpec(
            "c2f_oracle",
            "c2f",
            {**c2f, "focus": "oracle", "focus_missing_box": "uniform"},
            "C2F, the doc's target box as focus (upper bound; uniform for an absent colour's question)",
        ),
        RowSpec("c2f_uniform", "c2f", {**c2f, "focus": "uniform"}, "C2F, uniform scores (blind selection)"),
    ]
    if random_budget is not None:
        rows.append(
            RowSpec(
                "random",
                "random",
                {**p, "budget": int(random_budget)},
                f"seeded random tokens of the p{BASELINE_MAX_TILES} layout at c2f_rfm's budget ({random_budget})",
            )
        )
    rows += [
        RowSpec(
            "visionzip",
            "visionzip",
            {**p, "dominant": 3, "contextual": 1},
            f"VisionZip 3 + 1 tokens per tile of the p{BASELINE_MAX_TILES} layout",
        ),
        RowSpec("fastv", "fastv", dict(p), f"FastV K=2, R=50 % on the p{BASELINE_MAX_TILES} layout"),
        RowSpec("pdrop", "pdrop", dict(p), f"PyramidDrop (quarter-depth stages, lambda 0.5) on p{BASELINE_MAX_TILES}"),
    ]
    return rows


@dataclass(frozen=True)
class TestbedConfig:
    """Knobs of :func:`run_testbed` (defaults: the documented run)."""

    __test__ = False  # not a pytest class despite the name

    eval_scenes: int = 150
    rfm_scenes: int = 50
    seed: int = 0
    limit: int | None = None
    rows: tuple[str, ...] = ROW_KEYS
    train: Any = None  # TrainConfig; None = its defaults
    rfm_steps: int = 300
    jobs: int = 2
    timeout_s: float = 3600.0
    extra: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | Path | None = None
    """A trained testbed checkpoint with its RFM (:func:`shipped_checkpoint`, :func:`make_checkpoint`): skips the
    training and distillation stages and never writes into it. ``None``: train one in ``out/model``."""

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            check_checkpoint(self.checkpoint)
        for name in ("eval_scenes", "rfm_scenes", "rfm_steps", "jobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"TestbedConfig.{name}={value!r} is invalid; valid: an int >= 1")
        limit = self.limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"TestbedConfig.limit={self.limit!r} is invalid; valid: None or an int >= 1")
        unknown = [r for r in self.rows if r not in ROW_KEYS]
        if unknown or not self.rows:
            raise ConfigError(f"TestbedConfig.rows={list(self.rows)!r} is invalid; valid: a subset of {list(ROW_KEYS)}")
        if "random" in self.rows and "c2f_rfm" not in self.rows:
            raise ConfigError("TestbedConfig.rows: 'random' runs at c2f_rfm's budget, so it needs 'c2f_rfm' too")


# --------------------------------------------------------------------------------------------- checkpoints
def check_checkpoint(folder: str | Path) -> Path:
    """``folder`` as a :class:`~pathlib.Path` once it holds every file of :data:`CHECKPOINT_FILES`.

    Raises:
        ConfigError: ``folder`` is missing or lacks one of the files (named).
    """
    path = Path(folder)
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigError(
            f"testbed checkpoint {str(path)!r} lacks {missing}; valid: a folder written by "
            "'lrs-plugin testbed checkpoint --out DIR' (or the shipped one: --checkpoint shipped)"
        )
    return path


def shipped_checkpoint() -> Path:
    """The trained testbed checkpoint shipped in the package (model + RFM, ~7 MB; ``make_checkpoint`` recipe).

    Raises:
        ConfigError: the package was installed without it.
    """
    return check_checkpoint(Path(__file__).with_name("checkpoint"))


def make_checkpoint(
    out: str | Path,
    *,
    seed: int = 0,
    rfm_scenes: int = 50,
    rfm_steps: int = 300,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train the testbed model (``TrainConfig(seed=seed)``) and distill its RFM into ``out``: the shipped recipe.

    The RFM's recorded passes use ``rfm_scenes`` train-split scenes written to a temporary folder, so ``out`` holds
    the checkpoint only. Reuses a model or RFM ``out`` already holds with the same settings.
    """
    import tempfile

    from lrs_plugin.testbed.train import TrainConfig

    folder = Path(out)
    _model(folder, TrainConfig(seed=seed), log)
    with tempfile.TemporaryDirectory(prefix="lrs_synth_rfm_") as tmp:
        data = _data(Path(tmp), split="train", seed=seed, scenes=rfm_scenes)
        _rfm(folder, data, rfm_steps, seed, log)
    return check_checkpoint(folder)


def _read_logs(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training and distillation records of a finished checkpoint."""
    return tuple(json.loads((ckpt / n).read_text(encoding="utf-8")) for n in ("train_log.json", "rfm_train_log.json"))


# --------------------------------------------------------------------------------------------- stages
def _stage_marker(folder: Path, name: str, settings: Mapping[str, Any]) -> bool:
    """True when ``folder/name`` records exactly ``settings`` (the stage can be reused)."""
    path = folder / name
    try:
        return json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(settings))
    except (OSError, ValueError):
        return False


def _write_marker(folder: Path, name: str, settings: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (name + ".partial")
    tmp.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    tmp.replace(folder / name)


def _data(folder: Path, *, split: str, seed: int, scenes: int) -> Path:
    settings = {"split": split, "seed": seed, "scenes": scenes, "generator": 1}
    if not _stage_marker(folder, "lrs_synth.json", settings):
        sc.write_lrs_synth(folder, split=split, seed=seed, num_scenes=scenes)
        _write_marker(folder, "lrs_synth.json", settings)
    return folder


def _model(folder: Path, cfg: Any, log: Callable[[str], None] | None) -> dict[str, Any]:
    from lrs_plugin.testbed.train import train_testbed

    try:
        record = json.loads((folder / "train_log.json").read_text(encoding="utf-8"))
        if record.get("config") == json.loads(json.dumps(asdict(cfg))) and (folder / "config.json").is_file():
            return record
    except (OSError, ValueError):
        pass
    return train_testbed(folder, cfg, log=log)


def _rfm(ckpt: Path, data: Path, steps: int, seed: int, log: Callable[[str], None] | None) -> dict[str, Any]:
    from lrs_plugin.focus.distill import DistillConfig, train_rfm

    cfg = DistillConfig(llm_layer_list=RFM_LAYERS, steps=steps, skip_stack=(), seed=seed)
    log_path = ckpt / "rfm_train_log.json"
    train_stamp = (ckpt / "train_log.json").stat().st_mtime_ns
    try:
        record = json.loads(log_path.read_text(encoding="utf-8"))
        if (
            record.get("config") == json.loads(json.dumps(asdict(cfg)))
            and record.get("model_stamp") == train_stamp
            and record.get("c2f_options") == C2F_OPTIONS
            and (ckpt / "rfm.safetensors").is_file()
        ):
            return record
    except (OSError, ValueError):
        pass
    record = train_rfm(
        ckpt,
        data,
        llm_layer_list=RFM_LAYERS,
        out=ckpt / "rfm.safetensors",
        config=cfg,
        c2f_options=dict(C2F_OPTIONS),
        write_config=True,
        log=log,
    )
    record["model_stamp"] = train_stamp
    record["c2f_options"] = dict(C2F_OPTIONS)
    log_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def _metric(results: Mapping[str, Any], name: str) -> float | None:
    value = results.get(f"{name},none")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def parse_row(spec: RowSpec, results: Mapping[str, Any]) -> dict[str, Any]:
    """A table row from ``results["results"]["lrs_synth"]`` of one lmms-eval run (percent 0-100).

    ``vision_tokens_to_llm`` is what enters the LLM's first layer (FastV / PDrop prune later inside it; their
    ``tflops`` count the pruned layers).
    """
    recall = {k: _metric(results, f"eff_{k}") for k in ("focus_tile_recall", "focus_token_recall")}
    return {
        "key": spec.key,
        "reducer": spec.reducer,
        "options": dict(spec.options),
        "aa": _metric(results, "aa"),
        "categories": {c: _metric(results, "cat_" + c.replace(" ", "_")) for c in sc.CATEGORIES},
        "vision_tokens_to_llm": _metric(results, "eff_vision_tokens_to_llm"),
        "tflops": _metric(results, "eff_tflops"),
        "latency_s": _metric(results, "eff_latency_s"),
        "focus_tile_recall": None if recall["focus_tile_recall"] is None else 100.0 * recall["focus_tile_recall"],
        "focus_token_recall": None if recall["focus_token_recall"] is None else 100.0 * recall["focus_token_recall"],
    }


def _run_row(
    spec: RowSpec, ckpt: Path, data: Path, folder: Path, cfg: TestbedConfig, log: Callable[[str], None] | None
) -> dict[str, Any]:
    from lrs_plugin.harness.run import offline_env, run_lmms_eval

    settings = {
        "model_args": spec.model_args(ckpt),
        "limit": cfg.limit,
        "model_stamp": (ckpt / "train_log.json").stat().st_mtime_ns,
        "rfm_stamp": _stamp(ckpt / "rfm.safetensors"),
        "data": json.loads((data / "lrs_synth.json").read_text(encoding="utf-8")),
    }
    try:
        saved = json.loads((folder / "row.json").read_text(encoding="utf-8"))
        if saved.get("settings") == json.loads(json.dumps(settings)):
            return saved["row"]
    except (OSError, ValueError, KeyError):
        pass
    extra = ["--log_samples"] + (["--limit", str(cfg.limit)] if cfg.limit else [])
    if log is not None:
        log(f"[{spec.key}] lmms-eval --model c2f_llava --tasks lrs_synth --model_args {settings['model_args']}")
    run = run_lmms_eval(
        model="c2f_llava",
        model_args=settings["model_args"],
        tasks=["lrs_synth"],
        output_path=folder / "lmms_eval",
        env=offline_env({"LRS_SYNTH_ROOT": str(data), **_thread_env(cfg.jobs)}),
        use_task_hook=True,
        extra_args=extra,
        timeout=cfg.timeout_s,
    )
    results = run.results.get("results", {}).get("lrs_synth")
    if not isinstance(results, dict):
        raise EvaluationFailedError(f"row {spec.key!r}: no lrs_synth results in {run.results_path}")
    row = parse_row(spec, results)
    row["eval_wall_s"] = round(run.wall_s, 1)
    _write_marker(folder, "row.json", {"settings": settings, "row": row})
    return row


def _thread_env(jobs: int) -> dict[str, str]:
    """Thread counts of one lmms-eval child when ``jobs`` run side by side (the machine's cores shared out)."""
    import os

    per_job = max(1, (os.cpu_count() or 1) // jobs)
    return {name: str(per_job) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


# --------------------------------------------------------------------------------------------- report
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats, sorted by cost.

    A point is beaten by one with lower-or-equal cost ``x`` and higher-or-equal accuracy ``y``, one of them strictly.
    """
    keep = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y and (x2 < x or y2 > y)) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (points[i][0], -points[i][1]))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table (percent; TFLOPs per question; latency seconds per question)."""
    cats = list(sc.CATEGORIES)
    head = ["method", "AA", *cats, "vision tok", "TFLOPs", "latency s", "tile recall", "token recall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    chance = report["chance"]
    lines.append("| chance | " + _fmt(sum(chance.values()) / len(chance)) + " | ")
    lines[-1] += " | ".join(_fmt(chance[c]) for c in cats) + " | | | | | |"
    for row in report["rows"]:
        cells = [row["key"], _fmt(row["aa"]), *(_fmt(row["categories"].get(c)) for c in cats)]
        cells += [_fmt(row["vision_tokens_to_llm"], 0), _fmt(row["tflops"], 5), _fmt(row["latency_s"], 3)]
        cells += [_fmt(row["focus_tile_recall"]), _fmt(row["focus_token_recall"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_tradeoff(rows: Sequence[Mapping[str, Any]], out: str | Path, *, size: tuple[int, int] = (900, 600)) -> Path:
    """Accuracy (AA) vs TFLOPs per question, a labelled point per row, the Pareto front joined; PNG at ``out``."""
    from PIL import Image, ImageDraw

    pts = [(r["tflops"], r["aa"], r["key"]) for r in rows if r.get("tflops") is not None and r.get("aa") is not None]
    w, h = size
    left, right, top, bottom = 80, 30, 40, 60
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((left, 12), "lrs_synth: AA (%) vs TFLOPs per question (log scale); Pareto front in red", fill=(0, 0, 0))
    if pts:
        xs = [math.log10(max(p[0], 1e-9)) for p in pts]
        x_lo, x_hi = min(xs), max(xs)
        if x_hi - x_lo < 1e-6:
            x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
        pad = 0.05 * (x_hi - x_lo)
        x_lo, x_hi = x_lo - pad, x_hi + pad

        def px(x: float, y: float) -> tuple[float, float]:
            fx = (math.log10(max(x, 1e-9)) - x_lo) / (x_hi - x_lo)
            return left + fx * (w - left - right), top + (1 - y / 100.0) * (h - top - bottom)

        draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
        for y in range(0, 101, 20):
            yy = px(10**x_lo, y)[1]
            draw.line([left - 4, yy, left, yy], fill=(0, 0, 0))
            draw.text((left - 34, yy - 6), f"{y}", fill=(0, 0, 0))
        for e in range(math.floor(x_lo), math.ceil(x_hi) + 1):
            for m in (1, 2, 5):
                v = m * 10.0**e
                if x_lo <= math.log10(v) <= x_hi:
                    xx = px(v, 0)[0]
                    draw.line([xx, h - bottom, xx, h - bottom + 4], fill=(0, 0, 0))
                    draw.text((xx - 14, h - bottom + 8), f"{v:.0e}", fill=(0, 0, 0))
        draw.text((w // 2 - 60, h - 24), "TFLOPs per question", fill=(0, 0, 0))
        front = pareto_front([(p[0], p[1]) for p in pts])
        line = [px(pts[i][0], pts[i][1]) for i in front]
        if len(line) > 1:
            draw.line(line, fill=(220, 30, 30), width=2)
        for i, (x, y, key) in enumerate(pts):
            cx, cy = px(x, y)
            color = (220, 30, 30) if i in front else (40, 70, 200)
            draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=color)
            draw.text((cx + 7, cy - 12), key, fill=(0, 0, 0))
    out = Path(out)
    img.save(out)
    return out


def _focus_picture(ckpt: Path, data: Path, out: Path) -> Path | None:
    """Draw C2F with the RFM on the first ``object shape`` question of the evaluation split.

    Uses :func:`lrs_plugin.c2f.visualize` (the image under the heat map, the target box, Q / A / GT).
    """
    from lrs_plugin.c2f.visualize import visualize
    from lrs_plugin.data import lrs_vqa
    from lrs_plugin.focus.distill import _subsets_of

    docs = [d for d in lrs_vqa.build_docs(data, subsets=_subsets_of(data)) if d["category"] == "object shape"]
    if not docs:
        return None
    doc = docs[0]
    visualize(
        str(ckpt),
        doc["image_path"],
        doc["text"],
        out,
        focus="rfm",
        options=dict(C2F_OPTIONS),
        doc=doc,
    )
    return out


def _run_rows(
    cfg: TestbedConfig, ckpt: Path, data: Path, runs: Path, log: Callable[[str], None] | None
) -> dict[str, dict[str, Any]]:
    """Every row of ``cfg.rows``, ``cfg.jobs`` lmms-eval processes at a time; ``random`` once ``c2f_rfm`` is done."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    specs = {s.key: s for s in row_specs()}
    rows: dict[str, dict[str, Any]] = {}
    pending = [k for k in cfg.rows if k != "random"]
    waiting_random = "random" in cfg.rows
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        running = {}
        while pending or running or waiting_random:
            if waiting_random and "c2f_rfm" in rows:
                budget = rows["c2f_rfm"]["vision_tokens_to_llm"]
                specs["random"] = next(s for s in row_specs(random_budget=round(budget or 1)) if s.key == "random")
                pending.append("random")
                waiting_random = False
            while pending and len(running) < cfg.jobs:
                key = pending.pop(0)
                running[pool.submit(_run_row, specs[key], ckpt, data, runs / key, cfg, log)] = key
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                rows[running.pop(future)] = future.result()
    return rows


def run_testbed(
    out: str | Path, config: TestbedConfig | None = None, *, log: Callable[[str], None] | None = print
) -> dict[str, Any]:
    """Run the whole testbed in ``out`` and return the report (also written to ``out/testbed.json``).

    Returns:
        ``{"chance", "fine_categories", "rows": [...], "train_s", "rfm_train_s", "total_s"}`` plus ``"plot"`` and
        ``"focus_picture"`` paths (percent 0-100; recall ``None`` where the reducer reports none).

    Raises:
        ConfigError: bad configuration; EvaluationFailedError: a row's lmms-eval run wrote no results.
    """
    from lrs_plugin.testbed.train import TrainConfig

    cfg = config or TestbedConfig()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = _data(root / "eval_data", split="eval", seed=cfg.seed, scenes=cfg.eval_scenes)
    if cfg.checkpoint is not None:
        ckpt = Path(cfg.checkpoint)
        train_record, rfm_record = _read_logs(ckpt)
    else:
        rfm_data = _data(root / "rfm_data", split="train", seed=cfg.seed, scenes=cfg.rfm_scenes)
        ckpt = root / "model"
        train_record = _model(ckpt, cfg.train or TrainConfig(seed=cfg.seed), log)
        rfm_record = _rfm(ckpt, rfm_data, cfg.rfm_steps, cfg.seed, log)
    rows = _run_rows(cfg, ckpt, data, root / "runs", log)
    report: dict[str, Any] = {
        "chance": dict(sc.CHANCE),
        "fine_categories": list(sc.FINE_CATEGORIES),
        "rows": [rows[k] for k in cfg.rows],
        "train_s": train_record.get("train_s"),
        "rfm_train_s": rfm_record.get("total_s"),
    }
    report["plot"] = str(draw_tradeoff(report["rows"], root / "accuracy_vs_tflops.png"))
    picture = _focus_picture(ckpt, data, root / "focus.png")
    report["focus_picture"] = None if picture is None else str(picture)
    report["total_s"] = round(time.perf_counter() - start, 1)
    (root / "testbed.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report
