"""``fastv``: FastV (ECCV 2024, "An Image is Worth 1/2 Tokens After Layer 2"), baselines.md §2.

Layers ``0 .. K-1`` run on the whole sequence. Layer ``K-1``'s attention row of the **last prompt token** (computed
from that layer's own q/k for that single query: softmax over all keys, mean over heads) is read on the image span;
the top ``round(N·(1-R))`` image tokens are kept (indices sorted) and the others are discarded for layers ``>= K``
and for decoding. Kept tokens keep their **original** RoPE positions and decoding continues at the original length
(FastV's ``position_ids = keep_indexs``). As the authors do on LLaVA-NeXT, the whole visual block (base image, tiles,
``image_newline`` tokens) is one pool: newline tokens are ranked like image tokens and may be dropped. Text tokens
are always kept.

Budget (baselines.md §1.1): FastV's layer-averaged vision tokens are ``T_eq = (K·N + (L-K)·k) / L`` with ``k`` the
kept count. ``budget=B`` solves the method's own knob ``R`` per sample: ``k = floor((B·L - K·N) / (L-K))`` clipped to
``[1, N]`` (the largest ``k`` with ``T_eq <= B``), ``R = 1 - k/N``. When ``B < (K·N + L-K) / L`` no ``R`` reaches it
(the first ``K`` layers see every token); one token is kept and the record says ``budget_met: False``.

Deviations: the attention row is rebuilt from q/k instead of ``output_attentions`` (same numbers, any kernel);
the dropped set is fixed at prefill (FastV's KV-cache variant); on models with fewer than 3 layers the default ``K``
is ``L - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.flops.terms import equivalent_tokens, fastv_keep, staged_tokens_per_layer
from lrs_plugin.harness.record import FastVKnobs, SampleRecord
from lrs_plugin.reducers._in_llm import InLLMReducer
from lrs_plugin.reducers._prefill import DropStage
from lrs_plugin.reducers._tiles import is_finite_number, take_options
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone

# fastv_keep (the keep rule) is owned by lrs_plugin.flops.terms, which counts FastV's FLOPs with it; re-exported here.
__all__ = ["FastVConfig", "FastVReducer", "fastv_equivalent_tokens", "fastv_keep", "solve_fastv_keep"]


@dataclass(frozen=True)
class FastVConfig:
    """FastV's knobs; defaults are the paper's main setting (K=2, R=50%), the C2F paper's FastV row."""

    # K: layers 0..K-1 see every token, layers >= K only the kept ones (1 <= K <= L-1). None: 2, or L-1 if L < 3.
    k: int | None = None
    # R: fraction of the image tokens dropped, 0 <= R < 1; k = round(N·(1-R)) are kept. Ignored when budget is set.
    r: float = 0.5
    # Target layer-averaged vision tokens T_eq (> 0); when set, R is solved per sample (module doc). None: use r.
    budget: float | None = None

    def __post_init__(self) -> None:
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ConfigError(f"FastVConfig.k={self.k!r} is invalid; valid: None or an int >= 1")
        if not is_finite_number(self.r) or not 0 <= self.r < 1:
            raise ConfigError(f"FastVConfig.r={self.r!r} is invalid; valid: a number with 0 <= r < 1")
        if self.budget is not None and (not is_finite_number(self.budget) or self.budget <= 0):
            raise ConfigError(f"FastVConfig.budget={self.budget!r} is invalid; valid: None or a number > 0")


def fastv_equivalent_tokens(num_image: int, keep: int, k: int, num_layers: int) -> float:
    """Layer-averaged vision tokens ``(K·N + (L-K)·keep) / L`` (the layout and average the FLOPs use)."""
    return equivalent_tokens(staged_tokens_per_layer(num_image, num_layers, [(k, keep)]))


def solve_fastv_keep(num_image: int, budget: float, k: int, num_layers: int) -> int:
    """Largest kept count whose layer-averaged vision tokens are ``<= budget``, clipped to ``[1, N]``.

    Args:
        num_image: Image tokens ``N`` entering layer 0.
        budget: Target ``T_eq``.
        k: FastV's ``K``.
        num_layers: Decoder layers ``L`` (``> K``).

    Returns:
        ``floor((B·L - K·N) / (L-K))`` clipped to ``[1, N]`` (1 when the budget is out of reach).
    """
    exact = (budget * num_layers - k * num_image) / (num_layers - k)
    return max(1, min(num_image, math.floor(exact + 1e-9)))


def _as_int(value: Any) -> Any:
    """lmms-eval hands ``2`` over as ``2`` or ``2.0``: accept integral floats for int knobs."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@register_reducer("fastv", stage="in_llm")
class FastVReducer(InLLMReducer):
    """FastV on the stock vision tokens (see the module doc).

    Args:
        backbone: The loaded backbone.
        **options: Fields of :class:`FastVConfig` (``k``, ``r``, ``budget``).

    Raises:
        ConfigError: an unknown option, a bad value, or ``K`` not below the model's depth.
    """

    name = "fastv"
    positions = "original"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        tiles, options = take_options(options, "fastv", [f.name for f in fields(FastVConfig)])
        if "k" in options:
            options["k"] = _as_int(options["k"])
        super().__init__(backbone, tiles=tiles)
        self.config = FastVConfig(**options)
        num_layers = backbone.num_layers
        self.k = self.config.k if self.config.k is not None else min(2, num_layers - 1)
        if not 1 <= self.k <= num_layers - 1:
            raise ConfigError(f"fastv: k={self.k} must lie in [1, {num_layers - 1}] for a {num_layers}-layer model")

    def schedule(self, num_image: int) -> tuple[list[DropStage], SampleRecord]:
        """One drop before layer ``K``, ranked with layer ``K-1``'s q/k."""
        num_layers = self.backbone.num_layers
        if self.config.budget is None:
            keep = fastv_keep(num_image, self.config.r)
        else:
            keep = solve_fastv_keep(num_image, self.config.budget, self.k, num_layers)
        budget_met = None
        if self.config.budget is not None:
            budget_met = fastv_equivalent_tokens(num_image, keep, self.k, num_layers) <= self.config.budget
        knobs = FastVKnobs(k=self.k, r=1 - keep / num_image, keep=keep, budget=self.config.budget)
        record = SampleRecord(fastv=knobs, budget_met=budget_met)
        return [DropStage(score_layer=self.k - 1, drop_before=self.k, keep=keep)], record
