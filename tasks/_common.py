"""Helpers shared by the task modules of this plugin."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from lrs_plugin.flops.accounting import EFFICIENCY_KEYS, efficiency_figures
from lrs_plugin.harness.record import SampleRecord

__all__ = ["EFFICIENCY_KEYS", "efficiency_metrics", "first_response", "log_failures", "mean_skip_none"]


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


def efficiency_metrics(record: SampleRecord | None) -> dict[str, float | None]:
    """The ``eff_*`` metrics of one sample from its model's record (all ``None`` when the model recorded nothing)."""
    figures = efficiency_figures(record or SampleRecord())
    return {f"eff_{key}": None if value is None else float(value) for key, value in figures.items()}


def log_failures(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Log an exception of a task hook before re-raising it: lmms-eval retries ``process_results`` silently."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            from loguru import logger

            logger.opt(exception=True).warning("lrs-plugin: {} raised (lmms-eval may retry it)", fn.__name__)
            raise

    return wrapper
