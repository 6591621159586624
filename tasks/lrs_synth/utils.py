"""lmms-eval glue of ``lrs_synth``: the testbed's documents; prompt, visual and scoring are ``lrs_vqa``'s own."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lrs_plugin.data import lrs_vqa as lrs_data
from lrs_plugin.errors import DatasetNotFoundError
from lrs_plugin.tasks._common import log_failures
from lrs_plugin.tasks.lrs_vqa.utils import SYNONYMS, _features, score_sample

__all__ = ["BENCHMARK", "ROOT_ENV", "SUBSETS", "process_docs", "process_results", "resolve_root"]

BENCHMARK = "lrs_synth"
ROOT_ENV = "LRS_SYNTH_ROOT"
"""Environment variable naming the generated evaluation split (the folder that contains ``LRS_VQA/``)."""


def _subsets() -> dict[str, tuple[str, ...]]:
    from lrs_plugin.testbed.scenes import CATEGORIES, SUBSET

    return {SUBSET: CATEGORIES}


SUBSETS = _subsets()


def resolve_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$LRS_SYNTH_ROOT``; the folder holding ``LRS_VQA/LRS_VQA_merged.jsonl``.

    Raises:
        DatasetNotFoundError: Neither is set (says how to generate the data).
    """
    root = root or os.environ.get(ROOT_ENV) or None
    if root is None:
        raise DatasetNotFoundError(
            f"lrs_synth data not found: run `lrs-plugin testbed generate --out DIR` and set {ROOT_ENV}=DIR"
        )
    return lrs_data.resolve_root(root)


def process_docs(dataset: Any):
    """``process_docs`` of ``lrs_synth``: the placeholder rows are replaced by the generated questions."""
    from datasets import Dataset

    if SYNONYMS == "wordnet":
        from lrs_plugin.scoring.wordnet import load_wordnet

        load_wordnet()
    docs = [{"benchmark": BENCHMARK, **doc} for doc in lrs_data.build_docs(resolve_root(), None, subsets=SUBSETS)]
    return Dataset.from_list(docs, features=_features())


@log_failures
def process_results(doc: Mapping[str, Any], results: Sequence[Any]) -> dict[str, Any]:
    """Score one answer as ``lrs_vqa`` does: ``oa`` (0 or 100), ``aa`` (the sample record), ``cat_*``, ``eff_*``."""
    return score_sample(doc, results, SUBSETS)
