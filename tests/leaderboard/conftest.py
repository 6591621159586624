"""Fixtures of the leaderboard tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="session")
def measured_row() -> Callable[..., dict[str, Any]]:
    """Factory ``measured_row(model="m", avg=30.0, **changes) -> dict``: a valid typed measured row, no results file."""
    from lrs_plugin.leaderboard.schema import COLUMN_NAMES, COLUMNS

    text = [c.name for c in COLUMNS if c.kind == "text"]

    def row(model: str = "m", avg: float = 30.0, **changes: Any) -> dict[str, Any]:
        out: dict[str, Any] = {c: None for c in COLUMN_NAMES}
        out.update({c: "" for c in text})
        out.update(mme_rw_rs=avg, lrs_fair=avg, lrs_bridge=avg, lrs_star=avg, avg_acc=avg)
        out.update(
            model=model,
            method="c2f",
            setting="default",
            source="measured",
            scoring="wordnet+official",
            plugin_version="0.1.0",
            lmms_eval_version="0.7.3",
            config_hash="a" * 64,
            date="2026-01-02",
            results_link="https://example.org/results.json",
        )
        out.update(changes)
        return out

    return row
