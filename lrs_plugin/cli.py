"""The ``lrs-plugin`` command.

Sub-commands::

    lrs-plugin fetch lrs_vqa [--root DIR] [--revision SHA] [--parts-dir DIR] [--extractor auto|7z|py7zr] [--force]
    lrs-plugin fetch mmerealworld_rs [--root DIR] [--revision SHA] [--source-dir DIR] [--force]
    lrs-plugin score lrs_vqa ANSWERS.jsonl [MORE.jsonl ...] [--synonyms wordnet|exact] [--json]
    lrs-plugin score mmerealworld_rs ANSWERS.jsonl [MORE ...] [--extraction official|strict] [--json]
    lrs-plugin compare A B [--low-res RUN] [--json] [--bootstrap N] [--seed N]
    lrs-plugin sweep --task TASK --pretrained CKPT --reducers c2f,random --budgets 64,144 --out DIR [--limit N]
    lrs-plugin demo [--out DIR] [--small]
    lrs-plugin testbed --out DIR [--json] [--limit N] [--rows a,b,...]
    lrs-plugin testbed generate --out DIR [--split eval|train] [--seed N] [--scenes N]
    lrs-plugin testbed train --out DIR [--steps N] [--batch-size N] [--scenes N] [--seed N] [--threads N]
    lrs-plugin testbed checkpoint --out DIR [--seed N]
    lrs-plugin train-rfm --pretrained DIR --data ROOT --llm-layer-list 2,4 [--out FILE] [--steps N] [--questions N]
    lrs-plugin flops --paper-table [--json]
    lrs-plugin leaderboard submit RESULTS.json [--replace] | validate [FILE] | render [--readme README.md]
    lrs-plugin visualize --pretrained DIR --image FILE --question TEXT [--out focus.png] [--focus NAME] [--box ...]
    lrs-plugin flops --model-config CONFIG.json --vision-tokens N [--convention paper|full] [--json]
    lrs-plugin convert SOURCE OUT [--vision-tower PATH_OR_ID] [--dtype auto|float32|float16|bfloat16] [--overwrite]

Errors of this plugin print one ``error:`` line and exit with status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lrs_plugin.errors import LrsPluginError

if TYPE_CHECKING:
    from lrs_plugin.testbed.train import TrainConfig

__all__ = ["main", "build_parser"]

BENCHMARKS = ("lrs_vqa", "mmerealworld_rs")


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download (or take local parts), verify and extract a benchmark")
    p.add_argument("dataset", choices=BENCHMARKS)
    p.add_argument("--root", type=Path, default=None, help="target folder (default: the plugin's data cache)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit sha) to fetch")
    p.add_argument("--parts-dir", type=Path, default=None, help="lrs_vqa: folder with LRS_VQA.7z.001..013 already")
    p.add_argument("--source-dir", type=Path, default=None, help="mmerealworld_rs: folder with the parquet shards")
    p.add_argument("--extractor", choices=("auto", "7z", "py7zr"), default="auto", help="lrs_vqa: 7z backend")
    p.add_argument("--force", action="store_true", help="redo the work even when a completion marker exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score an answers file (original runners' JSONL or lmms-eval samples JSONL)")
    p.add_argument("benchmark", choices=BENCHMARKS)
    p.add_argument("answers", type=Path, nargs="+", help="one or more files (e.g. the three LRS-VQA sample logs)")
    p.add_argument("--synonyms", default="wordnet", help="lrs_vqa synonym rule: wordnet (paper) or exact")
    p.add_argument("--extraction", default="official", help="mmerealworld_rs answer extraction: official or strict")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object instead of the table")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="paired comparison of two runs of the same task: accuracies, agreement, delta with a 95 %% CI "
        "(bootstrap over images), McNemar p, per category",
    )
    p.add_argument("a", type=Path, help="run A (the reference): lmms-eval output folder, results or samples file")
    p.add_argument("b", type=Path, help="run B; delta = B - A")
    p.add_argument(
        "--low-res", type=Path, default=None, help="a low-resolution run: split resolution-sensitive questions"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per task (a list when several)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates of the CI (2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="one task, reducers x budgets (vision tokens sent to the LLM), each point a real lmms-eval run "
        "(resumable); a CSV and accuracy-vs-tokens / -TFLOPs pictures",
    )
    p.add_argument("--task", required=True, help="lmms-eval task or group, e.g. lrs_vqa_fair, lrs_synth")
    p.add_argument("--pretrained", required=True, help="checkpoint folder or Hub id of every point")
    p.add_argument("--reducers", required=True, help="comma-separated, each with a budget knob: c2f,random,...")
    p.add_argument("--budgets", required=True, help="comma-separated vision-token budgets, e.g. 64,144,256,576")
    p.add_argument("--out", type=Path, required=True, help="output folder (finished points in it are reused)")
    p.add_argument("--model-args", default="", help="more --model_args for every point, e.g. device=cuda")
    p.add_argument(
        "--reducer-options",
        action="append",
        default=[],
        metavar="REDUCER:ARGS",
        help="more --model_args for one reducer (repeatable), e.g. c2f:focus=rfm",
    )
    p.add_argument("--limit", type=int, default=None, help="--limit of every lmms-eval run")
    p.add_argument("--metric", default=None, help="accuracy metric to plot (default: the task's headline)")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline offline on generated data (no GPU, no Hub)")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for data, results and logs")
    p.add_argument("--small", action="store_true", help="fewer questions (used by the tests)")


def _add_testbed(sub: argparse._SubParsersAction) -> None:
    from lrs_plugin.testbed.table import ROW_KEYS

    p = sub.add_parser(
        "testbed",
        help="the planted-target testbed (docs/testbed.md): with no sub-command, generate, train, distill, evaluate "
        "every method through lmms-eval and print the table",
    )
    p.add_argument("--out", type=Path, default=None, help="working folder (stages already in it are reused)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--limit", type=int, default=None, help="questions per method (default: all 600)")
    p.add_argument("--rows", default=",".join(ROW_KEYS), help=f"methods to run (default: {','.join(ROW_KEYS)})")
    from lrs_plugin.testbed.table import TestbedConfig
    from lrs_plugin.testbed.train import TrainConfig

    td, d = TestbedConfig(), TrainConfig()
    p.add_argument("--eval-scenes", type=int, default=td.eval_scenes, help=f"evaluation scenes ({td.eval_scenes})")
    p.add_argument("--rfm-scenes", type=int, default=td.rfm_scenes, help=f"train scenes for the RFM ({td.rfm_scenes})")
    p.add_argument("--rfm-steps", type=int, default=td.rfm_steps, help=f"RFM distillation steps ({td.rfm_steps})")
    p.add_argument("--seed", type=int, default=td.seed, help="seed of data, weights and examples (0)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps ({d.steps})")
    p.add_argument("--vision-steps", type=int, default=d.vision_steps, help=f"vision pre-training ({d.vision_steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"training examples per step ({d.batch_size})")
    p.add_argument("--train-scenes", type=int, default=d.train_scenes, help=f"training scenes ({d.train_scenes})")
    p.add_argument("--threads", type=int, default=d.threads, help=f"torch threads of the training ({d.threads})")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="evaluate this trained testbed checkpoint (with rfm.safetensors; 'shipped': the package's own) instead "
        "of training one",
    )
    tsub = p.add_subparsers(dest="testbed_command", required=False)
    g = tsub.add_parser("generate", help="write lrs_synth scenes and questions in the LRS-VQA layout")
    g.add_argument("--out", type=Path, required=True, help="dataset root (LRS_VQA/ is created inside)")
    g.add_argument("--split", choices=("train", "eval"), default="eval", help="scene stream (disjoint)")
    g.add_argument("--seed", type=int, default=0, help="seed of the stream")
    g.add_argument("--scenes", type=int, default=150, help="scenes to write (4 questions each)")
    from lrs_plugin.testbed.train import TrainConfig

    d = TrainConfig()
    t = tsub.add_parser("train", help="train the testbed LLaVA-NeXT from scratch on train-split scenes (CPU)")
    t.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    t.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    t.add_argument("--vision-steps", type=int, default=d.vision_steps, help=f"vision pre-training ({d.vision_steps})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"examples per step ({d.batch_size})")
    t.add_argument("--scenes", type=int, default=d.train_scenes, help=f"train-split scenes ({d.train_scenes})")
    t.add_argument("--seed", type=int, default=d.seed, help="seed of weights, scenes and examples")
    t.add_argument("--threads", type=int, default=d.threads, help=f"torch threads ({d.threads})")
    c = tsub.add_parser(
        "checkpoint", help="train the testbed model and distill its RFM: the recipe of the shipped checkpoint"
    )
    c.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    c.add_argument("--seed", type=int, default=0, help="seed of weights, scenes and examples (0: the shipped one)")


def _add_train_rfm(sub: argparse._SubParsersAction) -> None:
    from lrs_plugin.focus.distill import DistillConfig

    d = DistillConfig(llm_layer_list=(1,))
    p = sub.add_parser("train-rfm", help="distill a Region Focus Module from a checkpoint's own attention (§6)")
    p.add_argument("--pretrained", required=True, help="checkpoint folder (or Hub id) the plugin loads")
    p.add_argument("--data", type=Path, required=True, help="benchmark root in the LRS-VQA layout (questions)")
    p.add_argument("--llm-layer-list", required=True, help="LLM layers to distill, e.g. 2,6,10,14 (R = len + 1)")
    p.add_argument("--out", type=Path, default=None, help="output .safetensors (default <pretrained>/rfm.safetensors)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps ({d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate ({d.lr})")
    p.add_argument("--questions", type=int, default=200, help="questions recorded from the file's start (200)")
    p.add_argument("--skip-stack", default="1,2", help="stack indices left out of the loss (release: 1,2; '' none)")
    p.add_argument("--num-zoom-steps", type=int, default=1, help="C2F zoom steps of the recording run (1)")
    p.add_argument("--write-config", action="store_true", help="write llm_layer_list into <pretrained>/config.json")
    p.add_argument("--device", default="cpu", help="device of the backbone (cpu, cuda, ...)")


def _add_flops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="analytic TFLOPs: the paper's efficiency table, or one setting of a model")
    p.add_argument("--paper-table", action="store_true", help="every row of the paper's efficiency table")
    p.add_argument(
        "--setting",
        action="append",
        default=None,
        help="a row of the paper's efficiency table (repeatable), e.g. "
        "'anyres-p144 w/ FastV'; with --model-config, evaluated with that model's dimensions (28 layers)",
    )
    p.add_argument("--model-config", type=Path, default=None, help="config.json (or folder) of a LLaVA checkpoint")
    p.add_argument("--vision-tokens", type=int, default=None, help="vision tokens sent to the LLM")
    p.add_argument("--text-tokens", type=int, default=0, help="text tokens of the prompt (full convention)")
    p.add_argument("--tiles", type=int, default=0, help="tiles through the vision tower (full convention)")
    p.add_argument("--new-tokens", type=int, default=1, help="generated tokens (full convention)")
    p.add_argument("--convention", choices=("paper", "full"), default="paper")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="draw the pyramid levels, selected tiles and focus heat map of one question")
    p.add_argument("--pretrained", required=True, help="LLaVA / LLaVA-NeXT checkpoint folder")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--out", type=Path, default=Path("focus.png"))
    p.add_argument("--focus", default="auto", help="focus scorer: auto, rfm, llm_attention, oracle, uniform")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-zoom-steps", type=int, default=1)
    p.add_argument("--box", default=None, help="target box x1,y1,x2,y2 in source pixels (drawn; oracle focus, recall)")
    p.add_argument("--ground-truth", default=None, help="the expected answer, printed beside the model's")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from lrs_plugin.backbone.convert import DTYPES  # light: torch and transformers load only when converting

    p = sub.add_parser(
        "convert", help="convert a released original-LLaVA-layout checkpoint to LLaVA-NeXT (docs/convert.md)"
    )
    p.add_argument("source", help="original checkpoint folder or Hub id (model_type llava_qwen / llava_llama)")
    p.add_argument("out", type=Path, help="output folder (written atomically)")
    p.add_argument("--vision-tower", default=None, help="CLIP folder or Hub id (default: the config's mm_vision_tower)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto keeps each tensor's stored dtype")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lrs-plugin``."""
    parser = argparse.ArgumentParser(prog="lrs-plugin", description=__doc__.split("\n\n")[0])
    from lrs_plugin import __version__

    parser.add_argument("--version", action="version", version=f"lrs-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fetch(sub)
    _add_score(sub)
    _add_compare(sub)
    _add_sweep(sub)
    _add_demo(sub)
    _add_testbed(sub)
    _add_train_rfm(sub)
    _add_flops(sub)
    _add_visualize(sub)
    _add_convert(sub)
    from lrs_plugin.leaderboard.submit import add_cli as _add_leaderboard

    _add_leaderboard(sub)
    return parser


def _fetch(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.dataset == "lrs_vqa":
        from lrs_plugin.data import lrs_vqa

        if args.source_dir is not None:
            raise LrsPluginError("--source-dir is for mmerealworld_rs; lrs_vqa takes --parts-dir")
        root = lrs_vqa.fetch(
            args.root,
            revision=args.revision or lrs_vqa.LRS_VQA_REVISION,
            parts_dir=args.parts_dir,
            extractor=args.extractor,
            progress=progress,
            force=args.force,
        )
        print(f"LRS-VQA ready in {root} (tasks find it there by default; elsewhere set {lrs_vqa.ROOT_ENV}={root})")
    else:
        from lrs_plugin.data import mme_realworld_rs

        if args.parts_dir is not None:
            raise LrsPluginError("--parts-dir is for lrs_vqa; mmerealworld_rs takes --source-dir")
        root = mme_realworld_rs.fetch(
            args.root,
            revision=args.revision or mme_realworld_rs.MME_REVISION,
            source_dir=args.source_dir,
            progress=progress,
            force=args.force,
        )
        print(f"MME-RealWorld-RS ready in {root} (elsewhere set {mme_realworld_rs.ENV_ROOT}={root})")
    return 0


def _score(args: argparse.Namespace) -> int:
    from lrs_plugin import scoring

    if args.benchmark == "lrs_vqa":
        summary = scoring.score_lrs_file(args.answers, synonyms=args.synonyms)
        text = scoring.format_lrs_table(summary)
    else:
        summary = scoring.score_mme_file(args.answers, mode=args.extraction)
        text = scoring.format_mme_table(summary)
    print(json.dumps(summary) if args.json else text)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from lrs_plugin.scoring.compare import compare_runs, format_comparison

    results = compare_runs(
        args.a, args.b, low_res=args.low_res, iters=args.bootstrap, seed=args.seed, detail=not args.json
    )
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    else:
        print("\n\n".join(format_comparison(r, str(args.low_res) if args.low_res else None) for r in results))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from lrs_plugin.errors import ConfigError
    from lrs_plugin.harness.sweep import SweepConfig, run_sweep

    options = {}
    for item in args.reducer_options:
        reducer, sep, fragment = item.partition(":")
        if not sep or not reducer:
            raise ConfigError(f"--reducer-options {item!r} must be REDUCER:ARGS, e.g. c2f:focus=rfm")
        options[reducer] = fragment
    config = SweepConfig(
        task=args.task,
        pretrained=args.pretrained,
        reducers=tuple(r for r in args.reducers.replace(" ", "").split(",") if r),
        budgets=_int_list(args.budgets, "--budgets"),
        model_args=args.model_args,
        reducer_options=options,
        limit=args.limit,
        metric=args.metric,
    )
    report = run_sweep(config, args.out, log=lambda m: print(m, file=sys.stderr))

    def num(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in report.rows:
        print(
            f"{row['reducer']:<10} B={row['budget']:<6} {row['metric']} {num(row['accuracy'], 2)} "
            f"± {num(row['accuracy_se'], 2)}  vision tokens {num(row['vision_tokens'], 1)}  "
            f"TFLOPs {num(row['tflops'], 4)}  failed {row['failed']}/{row['n']}"
        )
    print(f"csv: {report.csv}\nplots: {report.plots[0]} {report.plots[1]}")
    return 0


def _flops(args: argparse.Namespace) -> int:
    from lrs_plugin import flops

    if args.paper_table or args.setting:
        dims = flops.load_config_dims(args.model_config)[0] if args.model_config else flops.QWEN2_7B
        rows = flops.paper_table(args.setting, dims)
        if args.json:
            keys = ("setting", "tflops", "paper_tflops")
            print(json.dumps([{k: row[k] for k in keys} for row in rows]))
        else:
            print(flops.format_paper_table(rows))
        return 0
    if args.model_config is None or args.vision_tokens is None:
        raise LrsPluginError("flops needs --paper-table, or --model-config CONFIG with --vision-tokens N")
    lm, vision = flops.load_config_dims(args.model_config)
    if args.convention == "paper":
        value = flops.paper_llm_tflops(flops.uniform_tokens_per_layer(args.vision_tokens, lm.num_layers), lm)
        result = {"convention": "paper", "vision_tokens": args.vision_tokens, "tflops": value}
    else:
        n = args.vision_tokens + args.text_tokens
        terms = {"llm_prefill": flops.llm_prefill_flops(flops.uniform_tokens_per_layer(n, lm.num_layers), lm)}
        terms["llm_decode"] = flops.llm_decode_flops(n, args.new_tokens, lm)
        if args.tiles and vision is not None:
            terms["vision_tower"] = flops.vision_tower_flops(args.tiles, vision)
            terms["projector"] = flops.projector_flops(args.vision_tokens, vision.hidden, lm.hidden)
        result = {"convention": "full", "terms_tflops": {k: v / 1e12 for k, v in terms.items()}}
        result["tflops"] = sum(terms.values()) / 1e12
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def _visualize_doc(args: argparse.Namespace) -> dict | None:
    from lrs_plugin.errors import ConfigError

    doc: dict = {}
    if args.box is not None:
        try:
            box = [float(v) for v in args.box.split(",")]
        except ValueError:
            box = []
        if len(box) != 4:
            raise ConfigError(f"--box={args.box!r} must be four comma-separated numbers x1,y1,x2,y2")
        doc["hbox"] = box
    if args.ground_truth is not None:
        doc["ground_truth"] = args.ground_truth
    return doc or None


def _visualize(args: argparse.Namespace) -> int:
    from lrs_plugin.c2f.visualize import visualize

    summary = visualize(
        args.pretrained,
        args.image,
        args.question,
        args.out,
        focus=args.focus,
        device=args.device,
        options={"num_zoom_steps": args.num_zoom_steps},
        doc=_visualize_doc(args),
    )
    print(json.dumps(summary))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from lrs_plugin.backbone.convert import convert_original_llava

    out = convert_original_llava(
        args.source, args.out, vision_tower=args.vision_tower, dtype=args.dtype, overwrite=args.overwrite
    )
    print(out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lrs_plugin.demo import run_demo

    return run_demo(args.out, small=args.small)


def _leaderboard(args: argparse.Namespace) -> int:
    from lrs_plugin.leaderboard.submit import run_cli

    return run_cli(args)


def _int_list(value: str, name: str) -> tuple[int, ...]:
    from lrs_plugin.errors import ConfigError

    try:
        return tuple(int(v) for v in value.replace(" ", "").strip("[]()").split(",") if v)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be comma-separated integers, e.g. 2,6,10,14") from None


def _train_rfm(args: argparse.Namespace) -> int:
    from lrs_plugin.focus.distill import DistillConfig, train_rfm

    layers = _int_list(args.llm_layer_list, "--llm-layer-list")
    config = DistillConfig(
        llm_layer_list=layers, steps=args.steps, lr=args.lr, skip_stack=_int_list(args.skip_stack, "--skip-stack")
    )
    record = train_rfm(
        args.pretrained,
        args.data,
        llm_layer_list=layers,
        out=args.out,
        max_questions=args.questions,
        config=config,
        c2f_options={"num_zoom_steps": args.num_zoom_steps},
        write_config=args.write_config,
        device=args.device,
    )
    print(
        f"RFM ({len(layers) + 1} layers, llm_layer_list={list(layers)}) distilled on {record['passes']} passes of "
        f"{record['questions']} questions in {record['total_s']} s; held-out loss {record['held_out_loss_before']} "
        f"-> {record['held_out_loss_after']}; saved {record['rfm_path']}"
    )
    return 0


def _train_config(args: argparse.Namespace, train_scenes: int) -> TrainConfig:
    """The testbed's training config from the shared flags (scenes: ``--train-scenes`` or ``train --scenes``)."""
    from lrs_plugin.testbed.train import TrainConfig

    return TrainConfig(
        steps=args.steps,
        vision_steps=args.vision_steps,
        batch_size=args.batch_size,
        train_scenes=train_scenes,
        seed=args.seed,
        threads=args.threads,
    )


def _testbed(args: argparse.Namespace) -> int:
    if args.testbed_command is None:
        from lrs_plugin.errors import ConfigError
        from lrs_plugin.testbed.table import TestbedConfig, format_table, run_testbed

        if args.out is None:
            raise ConfigError("lrs-plugin testbed needs --out DIR (or a sub-command: generate, train, checkpoint)")
        train = _train_config(args, args.train_scenes)
        checkpoint = args.checkpoint
        if checkpoint == "shipped":
            from lrs_plugin.testbed.table import shipped_checkpoint

            checkpoint = shipped_checkpoint()
        config = TestbedConfig(
            checkpoint=checkpoint,
            eval_scenes=args.eval_scenes,
            rfm_scenes=args.rfm_scenes,
            rfm_steps=args.rfm_steps,
            seed=args.seed,
            limit=args.limit,
            rows=tuple(r for r in args.rows.split(",") if r),
            train=train,
        )
        report = run_testbed(args.out, config, log=(lambda m: print(m, file=sys.stderr)) if args.json else print)
        if args.json:
            print(
                json.dumps(
                    {k: report[k] for k in ("chance", "fine_categories", "rows", "train_s", "rfm_train_s", "total_s")}
                )
            )
        else:
            print(format_table(report))
            print(f"plot: {report['plot']}\nfocus picture: {report['focus_picture']}\ntotal {report['total_s']} s")
        return 0
    if args.testbed_command == "train":
        from lrs_plugin.testbed.train import train_testbed

        config = _train_config(args, args.scenes)
        record = train_testbed(args.out, config)
        print(f"testbed model trained in {record['train_s']} s ({record['parameters']} parameters): {args.out}")
        return 0
    if args.testbed_command == "checkpoint":
        from lrs_plugin.testbed.table import make_checkpoint

        folder = make_checkpoint(args.out, seed=args.seed, log=lambda m: print(m, file=sys.stderr))
        print(f"testbed checkpoint (model + RFM): {folder}")
        return 0
    from lrs_plugin.testbed.scenes import write_lrs_synth

    root = write_lrs_synth(args.out, split=args.split, seed=args.seed, num_scenes=args.scenes)
    print(f"lrs_synth {args.split} split ({args.scenes} scenes, {4 * args.scenes} questions) in {root}")
    print(f"evaluate it with: LRS_SYNTH_ROOT={root} lmms-eval --tasks lrs_synth --model c2f_llava ...")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lrs-plugin`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    args = build_parser().parse_args(argv)
    handlers = {
        "fetch": _fetch,
        "score": _score,
        "compare": _compare,
        "sweep": _sweep,
        "demo": _demo,
        "testbed": _testbed,
        "train-rfm": _train_rfm,
        "flops": _flops,
        "visualize": _visualize,
        "leaderboard": _leaderboard,
        "convert": _convert,
    }
    try:
        return handlers[args.command](args)
    except LrsPluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
