"""``random``: keep a seeded random subset of the plain vision tokens (a trivial baseline, baselines.md §7)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers import ReducerOutput, register_reducer
from lrs_plugin.reducers.none import PlainVision, answer_plain

if TYPE_CHECKING:
    from lrs_plugin.backbone import Backbone

__all__ = ["RandomConfig", "RandomReducer", "random_keep"]


@dataclass(frozen=True)
class RandomConfig:
    """Knobs of the ``random`` reducer."""

    budget: int | None = None  # vision tokens (non-newline) kept; None keeps all; >= 1
    seed: int = 0  # seed of the per-call generator; >= 0

    def __post_init__(self) -> None:
        if self.budget is not None and (isinstance(self.budget, bool) or int(self.budget) < 1):
            raise ConfigError(f"random: budget must be an int >= 1 or None; got {self.budget!r}")
        if int(self.seed) < 0:
            raise ConfigError(f"random: seed must be an int >= 0; got {self.seed!r}")


def random_keep(
    tokens: torch.Tensor, is_fixed: torch.Tensor, budget: int, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``budget`` random non-fixed tokens plus every fixed (newline) token, in their original order.

    Args:
        tokens: Vision tokens ``[N, C]``.
        is_fixed: Bool mask ``[N]`` of tokens always kept (``image_newline``).
        budget: Non-fixed tokens to keep (clipped to the available count, at least 1).
        generator: CPU generator that draws the subset.

    Returns:
        ``(kept [K, C], indices [K])`` with indices sorted ascending.
    """
    candidates = torch.nonzero(~is_fixed.cpu()).flatten()
    k = max(1, min(int(budget), int(candidates.numel())))
    pick = candidates[torch.randperm(candidates.numel(), generator=generator)[:k]]
    idx = torch.cat([pick, torch.nonzero(is_fixed.cpu()).flatten()]).sort().values
    return tokens[idx.to(tokens.device)], idx


@register_reducer("random", stage="pre_llm")
class RandomReducer:
    """Seeded random token dropping after the stock preprocessing; ``image_newline`` tokens are kept as is."""

    name = "random"
    stage = "pre_llm"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        known = {"budget", "seed"}
        if set(options) - known:
            raise ConfigError(
                f"reducer 'random' got unknown options {sorted(set(options) - known)}; valid: {sorted(known)}"
            )
        budget = options.get("budget")
        self.config = RandomConfig(
            budget=None if budget in (None, "None", "") else int(budget), seed=int(options.get("seed", 0))
        )
        self.backbone = backbone
        self.vision = PlainVision(backbone)

    def answer(
        self,
        image_path: str,
        question: str,
        *,
        doc: Mapping[str, Any],
        max_new_tokens: int,
        stop_strings: list[str] | None = None,
    ) -> ReducerOutput:
        """Answer with a random subset of the plain vision tokens."""
        vision, tiles = self.vision.get(image_path)
        newline = self.backbone.image_newline
        if newline is None:
            is_fixed = torch.zeros(vision.shape[0], dtype=torch.bool)
        else:
            is_fixed = (vision == newline.to(vision.dtype)).all(dim=-1)
        if self.config.budget is not None:
            gen = torch.Generator().manual_seed(self.config.seed)
            vision, _ = random_keep(vision, is_fixed, self.config.budget, generator=gen)
        return answer_plain(
            self.backbone, vision, tiles, question, max_new_tokens=max_new_tokens, stop_strings=stop_strings
        )

    def close(self) -> None:
        """Forget the last image's vision tokens."""
        self.vision.clear()
