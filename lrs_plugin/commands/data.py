"""Fetching the benchmarks and the offline demo: ``lrs-plugin fetch``, ``lrs-plugin demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from lrs_plugin.commands import BENCHMARKS
from lrs_plugin.errors import LrsPluginError

__all__ = ["add_parsers", "run_fetch", "run_demo"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this group's sub-commands to ``lrs-plugin``'s parser."""
    _add_fetch(sub)
    _add_demo(sub)


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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline offline on generated data (no GPU, no Hub)")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for data, results and logs")
    p.add_argument("--small", action="store_true", help="fewer questions (used by the tests)")


def run_fetch(args: argparse.Namespace) -> int:
    """``lrs-plugin fetch``: download or take local parts, verify, extract; print where the data is."""
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


def run_demo(args: argparse.Namespace) -> int:
    """``lrs-plugin demo``: the whole pipeline offline on generated data."""
    from lrs_plugin import demo

    return demo.run_demo(args.out, small=args.small)
