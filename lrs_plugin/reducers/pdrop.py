"""``pdrop``: PyramidDrop (CVPR 2025), baselines.md §3.

The LLM is split into stages at ``layer_list``. Before layer ``l_s`` (the ``s``-th entry, ``s = 1..S``) the current
hidden states go through layer ``l_s``'s own ``input_layernorm``, ``q_proj``, ``k_proj`` and RoPE; the **last prompt
token**'s softmax row over all keys, averaged over heads, ranks the image tokens still present; the top
``int(N·λ^s)`` (a fraction of the **original** image count ``N``, at least 1) are kept, sorted, and the rest are
dropped for every later layer and for decoding. Position ids are **renumbered** ``0 .. n-1`` after each drop and
decoding continues at the final pruned length (PyramidDrop's convention). As the authors do on LLaVA-NeXT, the whole
visual block (base image, tiles, ``image_newline`` tokens) is one pool: newlines are ranked like image tokens.

Default ``layer_list``: the released ``[8, 16, 24]`` is the quarter points of 32-layer LLaMA; for ``L`` layers we use
``[L/4, L/2, 3L/4]`` rounded half up (``[7, 14, 21]`` for 28-layer Qwen2, the C2F paper's PDrop row), clipped into
``[1, L-1]`` with duplicates removed (shallow test models: ``[1]`` for 2 layers, ``[1, 2, 3]`` for 4).

Budget (baselines.md §1.1; the author's recipe, PyramidDrop issues #10/#29): the layer-averaged vision tokens are
``T_eq(λ) = (l_1·N + Σ_s (l_{s+1} - l_s)·max(1, int(N·λ^s))) / L`` with ``l_{S+1} = L``, a non-decreasing step
function of ``λ``. ``budget=B`` solves ``λ`` per sample by bisection (60 halvings of ``[0, 1]``) for the largest
``λ`` with ``T_eq(λ) <= B``; when even one kept token per stage exceeds ``B`` the record says ``budget_met: False``.

Deviations: the dropped set is fixed at prefill (no re-ranking while decoding, as PDrop's inference code).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.flops.terms import equivalent_tokens, pdrop_keeps, staged_tokens_per_layer
from lrs_plugin.harness.record import PDropKnobs, SampleRecord
from lrs_plugin.reducers._in_llm import InLLMReducer
from lrs_plugin.reducers._prefill import DropStage
from lrs_plugin.reducers._tiles import is_finite_number, take_options
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone

# pdrop_keeps (the keep rule) is owned by lrs_plugin.flops.terms, which counts PDrop's FLOPs with it; re-exported here.
__all__ = [
    "PDropConfig",
    "PDropReducer",
    "parse_layer_list",
    "pdrop_equivalent_tokens",
    "pdrop_keeps",
    "quarter_layers",
    "solve_pdrop_lambda",
]


@dataclass(frozen=True)
class PDropConfig:
    """PyramidDrop's knobs; defaults are the released ones (4 stages, λ = 0.5) at the model's quarter points."""

    # Layers that rank (with their own q/k) and first run on the shortened sequence, increasing, in [1, L-1].
    # None: the quarter points [L/4, L/2, 3L/4] rounded (module doc).
    layer_list: tuple[int, ...] | None = None
    # λ in (0, 1]: stage s keeps int(N·λ^s) of the N original image tokens. Ignored when budget is set.
    lam: float = 0.5
    # Target layer-averaged vision tokens T_eq (> 0); when set, λ is solved per sample (module doc). None: use lam.
    budget: float | None = None

    def __post_init__(self) -> None:
        if self.layer_list is not None:
            items = self.layer_list
            ok = isinstance(items, tuple) and len(items) > 0
            ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in items)
            if not ok or list(items) != sorted(set(items)):
                raise ConfigError(
                    f"PDropConfig.layer_list={items!r} is invalid; valid: None or a non-empty tuple of increasing "
                    "ints >= 1"
                )
        if not is_finite_number(self.lam) or not 0 < self.lam <= 1:
            raise ConfigError(f"PDropConfig.lam={self.lam!r} is invalid; valid: a number with 0 < lam <= 1")
        if self.budget is not None and (not is_finite_number(self.budget) or self.budget <= 0):
            raise ConfigError(f"PDropConfig.budget={self.budget!r} is invalid; valid: None or a number > 0")


def parse_layer_list(value: Any) -> tuple[int, ...] | None:
    """``--model_args`` form of ``layer_list``: ``None``, an int, a sequence of ints, or a string like ``"7-14-21"``.

    ``--model_args`` splits on commas, so the string form separates layers with ``-``, ``;``, ``/`` or spaces
    (brackets allowed: ``"[7;14;21]"``).

    Raises:
        ConfigError: a string holding something other than non-negative integers.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # lmms-eval turns "7" into 7
        return (int(value) if float(value).is_integer() else value,)
    if isinstance(value, str):
        parts = [p for p in re.split(r"[-;/\s,]+", value.strip().strip("[]()")) if p]
        if not parts or not all(p.isdigit() for p in parts):
            raise ConfigError(f"layer_list={value!r} is invalid; write layers like '7-14-21'")
        return tuple(int(p) for p in parts)
    if isinstance(value, Sequence):
        return tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in value)
    return value


def quarter_layers(num_layers: int) -> tuple[int, ...]:
    """``[L/4, L/2, 3L/4]`` rounded half up, clipped into ``[1, L-1]``, duplicates removed (``L >= 2``)."""
    points = (min(max(math.floor(num_layers * q / 4 + 0.5), 1), num_layers - 1) for q in (1, 2, 3))
    return tuple(sorted(set(points)))


def pdrop_equivalent_tokens(num_image: int, keeps: Sequence[int], layer_list: Sequence[int], num_layers: int) -> float:
    """Layer-averaged vision tokens ``(l_1·N + Σ_s (l_{s+1} - l_s)·keep_s) / L`` with ``l_{S+1} = L``.

    The layout and average the FLOPs use (:func:`lrs_plugin.flops.terms.staged_tokens_per_layer`).
    """
    return equivalent_tokens(staged_tokens_per_layer(num_image, num_layers, zip(layer_list, keeps, strict=True)))


def solve_pdrop_lambda(num_image: int, budget: float, layer_list: Sequence[int], num_layers: int) -> float:
    """Largest ``λ`` in ``[0, 1]`` (to 2^-60) whose ``T_eq`` is ``<= budget``; ``0`` when none is (1 token/stage)."""

    def t_eq(lam: float) -> float:
        return pdrop_equivalent_tokens(num_image, pdrop_keeps(num_image, lam, len(layer_list)), layer_list, num_layers)

    if t_eq(1.0) <= budget:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_eq(mid) <= budget else (lo, mid)
    return lo


@register_reducer("pdrop", stage="in_llm")
class PDropReducer(InLLMReducer):
    """PyramidDrop on the stock vision tokens (see the module doc).

    Args:
        backbone: The loaded backbone.
        **options: Fields of :class:`PDropConfig` (``layer_list``, ``lam``, ``budget``).

    Raises:
        ConfigError: an unknown option, a bad value, or a layer outside ``[1, L-1]``.
    """

    name = "pdrop"
    positions = "renumber"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        tiles, options = take_options(options, "pdrop", [f.name for f in fields(PDropConfig)])
        if "layer_list" in options:
            options["layer_list"] = parse_layer_list(options["layer_list"])
        super().__init__(backbone, tiles=tiles)
        self.config = PDropConfig(**options)
        num_layers = backbone.num_layers
        if num_layers < 2:
            raise ConfigError(f"pdrop needs at least 2 decoder layers; the model has {num_layers}")
        self.layer_list = self.config.layer_list or quarter_layers(num_layers)
        if self.layer_list[-1] > num_layers - 1:
            raise ConfigError(
                f"pdrop: layer_list={list(self.layer_list)} must lie in [1, {num_layers - 1}] for a "
                f"{num_layers}-layer model"
            )

    def schedule(self, num_image: int) -> tuple[list[DropStage], SampleRecord]:
        """One drop per entry of ``layer_list``, each ranked with that layer's q/k."""
        num_layers = self.backbone.num_layers
        lam = self.config.lam
        if self.config.budget is not None:
            lam = solve_pdrop_lambda(num_image, self.config.budget, self.layer_list, num_layers)
        keeps = pdrop_keeps(num_image, lam, len(self.layer_list))
        budget_met = None
        if self.config.budget is not None:
            budget_met = pdrop_equivalent_tokens(num_image, keeps, self.layer_list, num_layers) <= self.config.budget
        knobs = PDropKnobs(layer_list=list(self.layer_list), lam=lam, keeps=list(keeps), budget=self.config.budget)
        stages = [
            DropStage(score_layer=layer, drop_before=layer, keep=n)
            for layer, n in zip(self.layer_list, keeps, strict=True)
        ]
        return stages, SampleRecord(pdrop=knobs, budget_met=budget_met)
