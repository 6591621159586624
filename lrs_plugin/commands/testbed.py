"""The planted-target testbed: ``lrs-plugin testbed`` and its ``generate`` / ``train`` / ``checkpoint``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrs_plugin.testbed.train import TrainConfig

__all__ = ["add_parsers", "run_testbed"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this group's sub-commands to ``lrs-plugin``'s parser."""
    _add_testbed(sub)


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


def run_testbed(args: argparse.Namespace) -> int:
    """``lrs-plugin testbed``: the whole table, or one of its ``generate`` / ``train`` / ``checkpoint`` steps."""
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
