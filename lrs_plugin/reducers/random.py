"""``random``: keep a seeded random subset of the plain vision tokens (a trivial baseline, baselines.md §7).

The budget is the number of vision tokens sent to the LLM, LLaVA-NeXT ``image_newline`` tokens included
(docs/fairness.md). ``newlines="rankable"`` (default) draws from the whole vision span, newline tokens included, as
FastV and PDrop treat LLaVA-NeXT's span; ``newlines="keep"`` keeps every newline token and draws the rest of the
budget from the other tokens (at least one); when the newlines alone fill the budget it cannot be met and the record
says ``budget_met: False``.

Focus recall (:mod:`lrs_plugin.reducers._cells`): every tile is encoded, so the tile recall is 1.0 for a box inside
the image; the token recall is over the cells of the drawn tokens (base-image tokens included, newlines have none).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.record import SampleRecord
from lrs_plugin.reducers._stock import PlainVision, PreLLMReducer
from lrs_plugin.reducers._tiles import option_int, take_options
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.harness.costs import StageClock
    from lrs_plugin.imagery.large_image import LargeImage

__all__ = ["NEWLINE_MODES", "RandomConfig", "RandomReducer", "random_keep"]

NEWLINE_MODES = ("rankable", "keep")
"""How ``random`` treats LLaVA-NeXT ``image_newline`` tokens (module doc)."""


@dataclass(frozen=True)
class RandomConfig:
    """Knobs of the ``random`` reducer."""

    budget: int | None = None  # vision tokens sent to the LLM, newline tokens included; None keeps all; >= 1
    seed: int = 0  # seed of the per-call generator; >= 0
    newlines: str = "rankable"  # "rankable": newlines are drawn like any token; "keep": always kept (and counted)

    def __post_init__(self) -> None:
        if self.budget is not None and (isinstance(self.budget, bool) or int(self.budget) < 1):
            raise ConfigError(f"random: budget must be an int >= 1 or None; got {self.budget!r}")
        if int(self.seed) < 0:
            raise ConfigError(f"random: seed must be an int >= 0; got {self.seed!r}")
        if self.newlines not in NEWLINE_MODES:
            raise ConfigError(
                f"random: newlines must be one of {', '.join(repr(m) for m in NEWLINE_MODES)}; got {self.newlines!r}"
            )


def random_keep(
    tokens: torch.Tensor,
    is_newline: torch.Tensor,
    budget: int,
    *,
    generator: torch.Generator,
    newlines: str = "rankable",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random subset of ``budget`` tokens in total, newline tokens counted, in their original order.

    Args:
        tokens: Vision tokens ``[N, C]``.
        is_newline: Bool mask ``[N]`` of the ``image_newline`` tokens (ignored when ``newlines="rankable"``).
        budget: Tokens to keep in total, newline tokens included.
        generator: CPU generator that draws the subset.
        newlines: ``"rankable"``: draw ``min(budget, N)`` tokens (at least 1) from all ``N``; ``"keep"``: keep every
            newline token and draw ``budget - newlines`` of the others (at least 1, clipped to the available count),
            so more than ``budget`` tokens are kept when the newlines alone reach it.

    Returns:
        ``(kept [K, C], indices [K])`` with indices sorted ascending; ``K <= budget`` unless ``newlines="keep"``
        and ``budget < newlines + 1``.

    Raises:
        ConfigError: unknown ``newlines`` mode.
    """
    if newlines not in NEWLINE_MODES:
        raise ConfigError(f"random_keep: newlines must be one of {', '.join(NEWLINE_MODES)}; got {newlines!r}")
    if newlines == "rankable":
        candidates = torch.arange(tokens.shape[0])
        fixed = candidates[:0]
    else:
        mask = is_newline.cpu().bool()
        candidates = torch.nonzero(~mask).flatten()
        fixed = torch.nonzero(mask).flatten()
    k = min(max(1, int(budget) - int(fixed.numel())), int(candidates.numel()))
    pick = candidates[torch.randperm(candidates.numel(), generator=generator)[:k]]
    idx = torch.cat([pick, fixed]).sort().values
    return tokens[idx.to(tokens.device)], idx


@register_reducer("random", stage="pre_llm")
class RandomReducer(PreLLMReducer):
    """Seeded random token dropping after the stock preprocessing; the budget counts ``image_newline`` tokens."""

    name = "random"
    stage = "pre_llm"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        tiles, options = take_options(options, "random", ("budget", "seed", "newlines"))
        budget = options.get("budget")
        self.config = RandomConfig(
            budget=option_int(budget, "budget", "random", allow_none=True),
            seed=option_int(options.get("seed", 0), "seed", "random"),
            newlines=str(options.get("newlines", "rankable")),
        )
        self.backbone = backbone
        self.vision = PlainVision(backbone, grid_pinpoints=tiles.grid_pinpoints(backbone))
        self.max_tiles = tiles.max_tiles

    def vision_for(
        self, image: LargeImage, doc: Mapping[str, Any] | None = None, clock: StageClock | None = None
    ) -> tuple[torch.Tensor, int, SampleRecord]:
        """A seeded random subset of the plain vision tokens, whether the budget was met, and the focus recall."""
        from lrs_plugin.reducers._cells import focus_recall, stock_cells

        vision, tiles = self.vision.get(image, clock)
        num_tokens, kept = int(vision.shape[0]), None
        budget_met = True
        if self.config.budget is not None:
            newline = self.backbone.image_newline
            if newline is None:
                is_newline = torch.zeros(vision.shape[0], dtype=torch.bool)
            else:
                is_newline = (vision == newline.to(vision.dtype)).all(dim=-1)
            gen = torch.Generator().manual_seed(self.config.seed)
            vision, kept = random_keep(
                vision, is_newline, self.config.budget, generator=gen, newlines=self.config.newlines
            )
            budget_met = int(vision.shape[0]) <= self.config.budget
        cells = stock_cells(self.backbone, image.size, self.vision.grid_pinpoints)
        recall = focus_recall(self.backbone, doc, image.size, cells, kept, num_tokens=num_tokens)
        return vision, tiles, SampleRecord(budget_met=budget_met, focus_recall=recall)
