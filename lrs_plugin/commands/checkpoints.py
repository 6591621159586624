"""Working on a checkpoint: ``lrs-plugin convert``, ``train-rfm``, ``visualize``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lrs_plugin.commands import int_list

__all__ = ["add_parsers", "run_convert", "run_train_rfm", "run_visualize"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this group's sub-commands to ``lrs-plugin``'s parser."""
    _add_convert(sub)
    _add_train_rfm(sub)
    _add_visualize(sub)


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


def run_convert(args: argparse.Namespace) -> int:
    """``lrs-plugin convert``: an original-layout checkpoint to transformers' LLaVA-NeXT; print the folder."""
    from lrs_plugin.backbone.convert import convert_original_llava

    out = convert_original_llava(
        args.source, args.out, vision_tower=args.vision_tower, dtype=args.dtype, overwrite=args.overwrite
    )
    print(out)
    return 0


def run_train_rfm(args: argparse.Namespace) -> int:
    """``lrs-plugin train-rfm``: distill a Region Focus Module from the checkpoint's own attention."""
    from lrs_plugin.focus.distill import DistillConfig, train_rfm

    layers = int_list(args.llm_layer_list, "--llm-layer-list")
    config = DistillConfig(
        llm_layer_list=layers, steps=args.steps, lr=args.lr, skip_stack=int_list(args.skip_stack, "--skip-stack")
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


def run_visualize(args: argparse.Namespace) -> int:
    """``lrs-plugin visualize``: draw one question's C2F focus; print the summary as JSON."""
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
