"""Reading runs and costs: ``lrs-plugin score``, ``compare``, ``sweep``, ``flops``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lrs_plugin.commands import BENCHMARKS, int_list
from lrs_plugin.errors import LrsPluginError

__all__ = ["add_parsers", "run_score", "run_compare", "run_sweep", "run_flops"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this group's sub-commands to ``lrs-plugin``'s parser."""
    _add_score(sub)
    _add_compare(sub)
    _add_sweep(sub)
    _add_flops(sub)


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


def run_score(args: argparse.Namespace) -> int:
    """``lrs-plugin score``: score answer files by the paper's rule; a table or one JSON object."""
    from lrs_plugin import scoring

    if args.benchmark == "lrs_vqa":
        summary = scoring.score_lrs_file(args.answers, synonyms=args.synonyms)
        text = scoring.format_lrs_table(summary)
    else:
        summary = scoring.score_mme_file(args.answers, mode=args.extraction)
        text = scoring.format_mme_table(summary)
    print(json.dumps(summary) if args.json else text)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """``lrs-plugin compare``: paired comparison of two runs of the same task."""
    from lrs_plugin.scoring.compare import compare_runs, format_comparison

    results = compare_runs(
        args.a, args.b, low_res=args.low_res, iters=args.bootstrap, seed=args.seed, detail=not args.json
    )
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    else:
        print("\n\n".join(format_comparison(r, str(args.low_res) if args.low_res else None) for r in results))
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """``lrs-plugin sweep``: one task, reducers x budgets, one lmms-eval run a point; print each point."""
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
        budgets=int_list(args.budgets, "--budgets"),
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


def run_flops(args: argparse.Namespace) -> int:
    """``lrs-plugin flops``: the paper's efficiency table, or the TFLOPs of one setting of a model."""
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
