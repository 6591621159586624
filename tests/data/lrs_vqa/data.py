#!/usr/bin/env python3
"""Regenerate the synthetic LRS-VQA fixture next to this file (torchgeo style; the outputs are not committed).

Writes ``LRS_VQA/`` (question file + images, one bomb-sized PNG) and ``parts/LRS_VQA.7z.001..003`` from seed 0.
The tests build the same data in temporary folders through ``lrs_plugin.data.synthetic.lrs_vqa``; run this only to
look at the files:

    python tests/data/lrs_vqa/data.py
"""

from __future__ import annotations

from pathlib import Path

from lrs_plugin.data.synthetic.lrs_vqa import write_lrs_vqa, write_lrs_vqa_archive

SEED = 0
NUM_PARTS = 3


def main() -> None:
    """Write the tree and its volumes into this script's folder."""
    here = Path(__file__).resolve().parent
    root = write_lrs_vqa(here, seed=SEED)
    volumes = write_lrs_vqa_archive(root, here / "parts", num_parts=NUM_PARTS)
    for path in [root / "LRS_VQA" / "LRS_VQA_merged.jsonl", *volumes]:
        print(f"{path.relative_to(here)}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
