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
traceback. This module only dispatches: each group of sub-commands (its parsers and handlers) is a module of
:mod:`lrs_plugin.commands` (``data``, ``results``, ``testbed``, ``checkpoints``, ``leaderboard``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lrs_plugin.commands import checkpoints, data, leaderboard, results, testbed
from lrs_plugin.errors import LrsPluginError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lrs-plugin``."""
    parser = argparse.ArgumentParser(prog="lrs-plugin", description=__doc__.split("\n\n")[0])
    from lrs_plugin import __version__

    parser.add_argument("--version", action="version", version=f"lrs-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (data, results, testbed, checkpoints):
        group.add_parsers(sub)
    leaderboard.add_cli(sub)
    return parser


_HANDLERS = {
    "fetch": data.run_fetch,
    "demo": data.run_demo,
    "score": results.run_score,
    "compare": results.run_compare,
    "sweep": results.run_sweep,
    "flops": results.run_flops,
    "testbed": testbed.run_testbed,
    "train-rfm": checkpoints.run_train_rfm,
    "visualize": checkpoints.run_visualize,
    "convert": checkpoints.run_convert,
    "leaderboard": leaderboard.run_cli,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lrs-plugin`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _HANDLERS[args.command](args)
    except LrsPluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
