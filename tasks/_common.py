"""Helpers shared by the task modules of this plugin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["first_response", "mean_skip_none"]


def first_response(results: Sequence[Any]) -> str:
    """The model's answer for one document from lmms-eval's ``results`` list (``""`` when there is none)."""
    response = results[0] if results else ""
    if isinstance(response, (list, tuple)):  # some filters keep a list per request
        response = response[0] if response else ""
    return "" if response is None else str(response)


def mean_skip_none(items: Sequence[float | None]) -> float | None:
    """Mean of the values that are not ``None`` (one category's accuracy); ``None`` when there are none."""
    values = [float(v) for v in items if v is not None]
    return sum(values) / len(values) if values else None
