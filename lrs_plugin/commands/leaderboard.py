"""``lrs-plugin leaderboard {submit,validate,render,seed}`` (also ``python -m lrs_plugin.leaderboard``).

The parsers and the handler of the leaderboard commands; the work is :mod:`lrs_plugin.leaderboard.submit`'s (which
re-exports ``add_cli``, ``run_cli`` and ``main`` from here).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lrs_plugin.errors import LrsPluginError

__all__ = ["add_cli", "main", "run_cli"]


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``leaderboard {submit,validate,render,seed}`` to an argparse sub-parsers object."""
    parser = subparsers.add_parser("leaderboard", help="build, check and render leaderboard.csv")
    sub = parser.add_subparsers(dest="leaderboard_command", required=True)
    p = sub.add_parser("submit", help="add the row of an lmms-eval results file (atomic, locked)")
    p.add_argument("results", type=Path, help="<date>_results.json written by lmms-eval")
    p.add_argument("--samples", type=Path, nargs="+", default=None, help="its <date>_samples_<task>.jsonl files")
    p.add_argument("--replace", action="store_true", help="replace the row with the same key")
    p.add_argument("--csv", type=Path, default=Path("leaderboard.csv"))
    for name in ("model", "method", "setting", "hardware", "link", "backbone", "vision-encoder", "llm", "train-data"):
        p.add_argument(f"--{name}", default=None)
    p = sub.add_parser("validate", help="check a leaderboard file (e.g. contributed rows)")
    p.add_argument("file", type=Path, nargs="?", default=Path("leaderboard.csv"))
    p = sub.add_parser("render", help="markdown table into README markers, PNG accuracy-vs-TFLOPs plot")
    p.add_argument("--csv", type=Path, default=Path("leaderboard.csv"))
    p.add_argument("--readme", type=Path, default=None, help="README with the leaderboard markers")
    p.add_argument("--plot", type=Path, default=None, help="PNG to write (e.g. docs/leaderboard.png)")
    p = sub.add_parser("seed", help="(re)write the paper's rows, keeping measured rows")
    p.add_argument("--csv", type=Path, default=Path("leaderboard.csv"))
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Run a parsed ``leaderboard`` command; returns the exit status.

    Raises:
        LeaderboardError: every failure, an ``OSError`` (unwritable folder, full disk, ``filelock.Timeout``) too,
            so that ``lrs-plugin`` prints one ``error:`` line instead of a traceback.
    """
    from lrs_plugin.leaderboard.schema import LeaderboardError

    try:
        return _run_cli(args)
    except OSError as exc:
        raise LeaderboardError(f"{type(exc).__name__}: {exc}") from exc


def _run_cli(args: argparse.Namespace) -> int:
    from lrs_plugin.leaderboard.render import MARKER_END, MARKER_START
    from lrs_plugin.leaderboard.submit import render, seed, submit, validate_file

    command = args.leaderboard_command
    if command == "submit":
        identity = {
            k: getattr(args, k)
            for k in ("model", "method", "setting", "hardware", "link", "backbone", "vision_encoder", "llm")
        }
        identity["train_data"] = args.train_data
        identity = {k: v for k, v in identity.items() if v is not None}
        row = submit(args.results, args.csv, replace=args.replace, samples=args.samples, **identity)
        print(
            f"{args.csv}: {'replaced' if args.replace else 'added'} {row['model']} / {row['method']} / {row['setting']}"
        )
        return 0
    if command == "validate":
        errors = validate_file(args.file)
        for error in errors:
            print(error, file=sys.stderr)
        print(f"{args.file}: {'invalid, ' + str(len(errors)) + ' problem(s)' if errors else 'valid'}")
        return 1 if errors else 0
    if command == "render":
        report = render(args.csv, readme=args.readme, plot=args.plot)
        if args.readme is None:
            print(report.markdown, end="")
        elif not report.readme_updated:
            print(f"{args.readme} has no {MARKER_START} ... {MARKER_END} markers; table not written", file=sys.stderr)
        if report.plot is not None:
            what = f"{report.plot_points} rows, y = {report.plot_metric}" if report.plot_points else "no plottable row"
            print(f"plot written to {report.plot} ({what})")
        return 0 if report.readme_updated is not False else 1
    count = seed(args.csv)
    print(f"{args.csv}: {count} rows")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lrs_plugin.leaderboard SUBCOMMAND ...`` (the same as ``lrs-plugin leaderboard ...``)."""
    parser = argparse.ArgumentParser(prog="lrs-plugin")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except (LrsPluginError, OSError) as exc:  # OSError: unreadable files, filelock.Timeout
        print(f"error: {exc}", file=sys.stderr)
        return 2
