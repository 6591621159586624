#!/usr/bin/env python3
"""Regenerate the MME-RealWorld parquet fixture next to this script: ``data/train-0000N-of-00002.parquet``.

The tests build their own copy in a temporary folder; this script is for looking at the fixture by hand
(``python tests/data/mmerealworld_rs/data.py``). Its output is git-ignored.
"""

from __future__ import annotations

from pathlib import Path

from lrs_plugin.data.synthetic.mme_realworld_rs import write_mme_parquet

if __name__ == "__main__":
    for path in write_mme_parquet(Path(__file__).resolve().parent, seed=0):
        print(f"{path} ({path.stat().st_size} bytes)")
