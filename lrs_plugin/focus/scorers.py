"""Region-focus scorers: which grid tokens matter for the question, behind one protocol and a registry.

A scorer maps the multimodal sequence of one coarse-to-fine pass (method.md §3.2) to one score per grid token.
Registered names (the key users type in ``focus=...``):

* ``llm_attention`` (training-free): the backbone's own first ``layer`` decoder layers, then the text-to-vision
  attention row of layer ``layer`` computed from its q/k. This is the teacher the RFM was distilled from (§6).
* ``rfm``: the trained Region Focus Module (§3.1) loaded from a checkpoint in the released key layout, or
  initialised from the backbone's layers when asked to (``rfm_init="backbone"``, logged).
* ``oracle``: 1 for grid tokens whose source-pixel cell overlaps the document's ground-truth box, else 0.
* ``uniform``: all tokens equal (ties resolve to raster order downstream).

Build one with :func:`build_focus`; add one with :func:`register_focus`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from lrs_plugin.errors import ConfigError
from lrs_plugin.focus.attention import (
    check_full_attention,
    check_masked_key_mode,
    check_span,
    focus_row_scores,
)

if TYPE_CHECKING:
    import torch

    from lrs_plugin.backbone.adapter import Backbone

__all__ = [
    "FocusContext",
    "FocusScorer",
    "LLMAttentionScorer",
    "OracleScorer",
    "RFMScorer",
    "UniformScorer",
    "available_focus",
    "build_focus",
    "register_focus",
    "save_rfm_original_layout",
]


@dataclass(frozen=True)
class FocusContext:
    """Per-sample extras a scorer may need besides the sequence.

    Attributes:
        box: The document's ground-truth box ``(x1, y1, x2, y2)`` in source pixels (LRS-VQA ``hbox``), or ``None``.
        image_wh: Source image size ``(W, H)``, used to clip ``box``.
        token_boxes: ``[N, 4]`` float source-pixel cell ``(x1, y1, x2, y2)`` of every grid position (NaN rows for
            newline tokens), or ``None``.
        masked_key_mode: Overrides the scorer's own ``masked_key_mode`` for this call when not ``None``.

    """

    box: tuple[float, float, float, float] | None = None
    image_wh: tuple[int, int] | None = None
    token_boxes: torch.Tensor | None = None
    masked_key_mode: str | None = None


@runtime_checkable
class FocusScorer(Protocol):
    """One score per grid token for a multimodal sequence.

    Attributes:
        name: The registry key.
        decoder_layers_per_pass: Full decoder layers run per :meth:`score` call (for FLOPs accounting; the
            scoring layer's q/k projections come on top).

    """

    name: str
    decoder_layers_per_pass: int

    def score(
        self,
        inputs_embeds: torch.Tensor,
        *,
        grid_span: slice,
        query_index: int,
        key_mask: torch.Tensor | None,
        context: FocusContext | None,
    ) -> torch.Tensor:
        """Score the grid tokens.

        Args:
            inputs_embeds: ``[1, L, C]`` the whole sequence (prefix, thumbnail, separator, grid, suffix).
            grid_span: Positions of the ``N`` grid tokens in the sequence.
            query_index: Position of the query token (the last prompt token).
            key_mask: ``[L]`` bool, ``False`` at placeholder positions that must not act as keys; ``None``: none.
            context: Per-sample extras (box, geometry, overrides).

        Returns:
            ``[N]`` float32 scores, higher = more relevant.

        """
        ...


_REGISTRY: dict[str, Callable[..., FocusScorer]] = {}


def register_focus(name: str) -> Callable[[Callable[..., FocusScorer]], Callable[..., FocusScorer]]:
    """Register a scorer factory ``factory(backbone, **knobs) -> FocusScorer`` under ``name``.

    Args:
        name: The key users type (``focus=<name>``).

    Returns:
        A decorator returning the factory unchanged.

    Raises:
        ConfigError: ``name`` is already registered.

    """

    def decorator(factory: Callable[..., FocusScorer]) -> Callable[..., FocusScorer]:
        if name in _REGISTRY:
            raise ConfigError(f"focus scorer {name!r} is already registered by {_REGISTRY[name]!r}")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_focus() -> list[str]:
    """Sorted names of the registered scorers."""
    return sorted(_REGISTRY)


def build_focus(name: str, backbone: Backbone, config: Mapping[str, Any] | None = None) -> FocusScorer:
    """Build a registered scorer.

    Args:
        name: Registry key (see :func:`available_focus`).
        backbone: The loaded backbone the scorer works with.
        config: Scorer knobs (keyword arguments of the factory), e.g. ``{"layer": 2}``.

    Returns:
        The scorer.

    Raises:
        ConfigError: unknown ``name`` (the registered names are listed), unknown knob (the valid knobs are
            listed), or an invalid knob value.

    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown focus scorer {name!r}; registered: {', '.join(available_focus())}")
    factory = _REGISTRY[name]
    knobs = dict(config or {})
    params = inspect.signature(factory).parameters
    valid = [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(knobs) - set(valid))
    if unknown:
        raise ConfigError(f"focus {name!r} has no knob(s) {unknown}; valid knobs: {', '.join(valid) or '(none)'}")
    return factory(backbone, **knobs)


def _mode(context: FocusContext | None, default: str) -> str:
    return check_masked_key_mode(context.masked_key_mode if context and context.masked_key_mode else default)


@register_focus("llm_attention")
class LLMAttentionScorer:
    """Training-free focus: the backbone LLM's own text-to-vision attention at decoder layer ``layer``.

    Runs LLM layers ``0 .. layer-1`` (the model's attention implementation, sdpa / flash / eager), then rebuilds the
    query row of layer ``layer`` from its q/k (:func:`lrs_plugin.focus.attention.query_row_scores`).
    """

    name = "llm_attention"

    def __init__(self, backbone: Backbone, *, layer: int = 2, masked_key_mode: str = "exclude") -> None:
        """Create the scorer.

        Args:
            backbone: The loaded backbone.
            layer: ``K``, the decoder layer whose attention is read (default 2: FastV's layer, shallow enough to be
                cheap, deep enough for text-to-image attention to be informative); ``0 <= K < num_layers``.
            masked_key_mode: ``"exclude"`` (default: placeholder keys get no attention, the intended behaviour) or
                ``"faithful"`` (the released code's ``+1`` quirk, method.md §3.4.2).

        Raises:
            ConfigError: ``layer`` out of range, a sliding-window layer, or an unknown mode.

        """
        n = backbone.num_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise ConfigError(f"layer={layer!r} must be an int in [0, {n}) (the backbone LLM has {n} layers)")
        self.backbone = backbone
        self.layer = layer
        self.masked_key_mode = check_masked_key_mode(masked_key_mode)
        self.decoder_layers_per_pass = layer
        check_full_attention(backbone.language_model.config, range(layer + 1))

    def score(
        self,
        inputs_embeds: torch.Tensor,
        *,
        grid_span: slice,
        query_index: int,
        key_mask: torch.Tensor | None,
        context: FocusContext | None,
    ) -> torch.Tensor:
        """See :meth:`FocusScorer.score`."""
        import torch

        lm = self.backbone.language_model
        with torch.no_grad():
            return focus_row_scores(
                lm.layers[: self.layer],
                lm.layers[self.layer],
                inputs_embeds.to(self.backbone.device),
                config=lm.config,
                rotary_emb=lm.rotary_emb,
                grid_span=grid_span,
                query_index=query_index,
                key_mask=key_mask,
                masked_key_mode=_mode(context, self.masked_key_mode),
            )


@register_focus("rfm")
class RFMScorer:
    """The Region Focus Module (method.md §3.1-§3.4): ``R`` decoder layers, attention read from the last one."""

    name = "rfm"

    def __init__(
        self,
        backbone: Backbone,
        *,
        llm_layer_list: object = None,
        rfm_path: str | None = None,
        rfm_init: str | None = None,
        masked_key_mode: str = "faithful",
    ) -> None:
        """Build the module and load its weights.

        Args:
            backbone: The loaded backbone (its LLM gives the layer class, the config and, with
                ``rfm_init="backbone"``, the weights).
            llm_layer_list: LLM layer indices the RFM was distilled from; ``R = len + 1``. Default: the
                checkpoint config's ``llm_layer_list`` (or ``rfm.llm_layer_list``).
            rfm_path: A ``.safetensors`` file (or folder) holding keys under ``model.mm_projector.token_pruner.``;
                default: the backbone's checkpoint folder.
            rfm_init: ``"backbone"`` copies LLM layers ``T = [l0 - 1] + llm_layer_list`` and the final norm
                (the paper's initialisation, an untrained RFM; logged as a warning). ``None`` requires weights.
            masked_key_mode: ``"faithful"`` (default, the released ``+1`` quirk) or ``"exclude"``.

        Raises:
            ConfigError: no layer list, bad knob values, weights missing (both options are explained), a stored
                layer count other than ``R``, or weights that do not fit the LLM's layer class.

        """
        from lrs_plugin.focus.rfm import load_rfm

        self.module, layer_list, self.weights_source = load_rfm(
            backbone, llm_layer_list=llm_layer_list, rfm_path=rfm_path, rfm_init=rfm_init
        )
        self.backbone = backbone
        self.llm_layer_list = layer_list
        self.masked_key_mode = check_masked_key_mode(masked_key_mode)
        self.decoder_layers_per_pass = len(layer_list)

    def score(
        self,
        inputs_embeds: torch.Tensor,
        *,
        grid_span: slice,
        query_index: int,
        key_mask: torch.Tensor | None,
        context: FocusContext | None,
    ) -> torch.Tensor:
        """See :meth:`FocusScorer.score`. Runs RFM layers ``0 .. R-2``; q/k of layer ``R-1`` (its output unused)."""
        import torch

        m = self.module
        with torch.no_grad():
            return focus_row_scores(
                m.layers[:-1],
                m.layers[-1],
                inputs_embeds.to(m.norm.weight.device, m.norm.weight.dtype),
                config=m.config,
                rotary_emb=m.rotary_emb,
                grid_span=grid_span,
                query_index=query_index,
                key_mask=key_mask,
                masked_key_mode=_mode(context, self.masked_key_mode),
            )


def save_rfm_original_layout(module: torch.nn.Module | RFMScorer, path: str | Path) -> Path:
    """Write an RFM (or an ``rfm`` scorer's module) to a safetensors file under the released key prefix.

    Args:
        module: A :class:`RFMScorer` or its ``module``.
        path: Output file.

    Returns:
        The written path.

    """
    from lrs_plugin.focus.rfm import save_rfm_original_layout as _save

    return _save(module.module if isinstance(module, RFMScorer) else module, path)


@register_focus("oracle")
class OracleScorer:
    """Upper bound for analysis: 1 for grid tokens whose source cell overlaps the ground-truth box, else 0."""

    name = "oracle"
    decoder_layers_per_pass = 0

    def __init__(self, backbone: Backbone, *, missing_box: str = "error") -> None:
        """Create the scorer.

        Args:
            backbone: Unused (kept for the factory signature).
            missing_box: ``"error"`` (default) raises for documents without a box (LRS-VQA ``count`` rows have
                none); ``"uniform"`` scores such documents uniformly.

        Raises:
            ConfigError: an unknown ``missing_box``.

        """
        if missing_box not in ("error", "uniform"):
            raise ConfigError(f"missing_box={missing_box!r} is not supported; valid choices: error, uniform")
        self.missing_box = missing_box

    def score(
        self,
        inputs_embeds: torch.Tensor,
        *,
        grid_span: slice,
        query_index: int,
        key_mask: torch.Tensor | None,
        context: FocusContext | None,
    ) -> torch.Tensor:
        """See :meth:`FocusScorer.score`. Needs ``context.token_boxes`` (and ``context.box``)."""
        import torch

        start, stop = check_span(inputs_embeds.shape[1], grid_span, query_index)
        n = stop - start
        if context is None or context.token_boxes is None or context.token_boxes.shape != (n, 4):
            raise ConfigError(f"focus 'oracle' needs context.token_boxes of shape [{n}, 4] (the grid's geometry)")
        if context.box is None:
            if self.missing_box == "uniform":
                return torch.full((n,), 1.0 / n, dtype=torch.float32)
            raise ConfigError("focus 'oracle' needs the document's box (hbox); set missing_box='uniform' to allow none")
        box = context.box
        if context.image_wh is not None:
            from lrs_plugin.data.lrs_vqa import clip_box

            box = clip_box(box, context.image_wh, whole_pixels=False)
            if box is None:  # nothing of the box inside the image: no cell overlaps it
                return torch.zeros(n, dtype=torch.float32)
        x1, y1, x2, y2 = (float(v) for v in box)
        cells = context.token_boxes.to(torch.float32)
        hit = (cells[:, 0] < x2) & (cells[:, 2] > x1) & (cells[:, 1] < y2) & (cells[:, 3] > y1)  # NaN rows -> False
        return hit.to(torch.float32)


@register_focus("uniform")
class UniformScorer:
    """All grid tokens score the same; stable selection then keeps the first ones in raster order."""

    name = "uniform"
    decoder_layers_per_pass = 0

    def __init__(self, backbone: Backbone) -> None:
        """Create the scorer (``backbone`` unused)."""

    def score(
        self,
        inputs_embeds: torch.Tensor,
        *,
        grid_span: slice,
        query_index: int,
        key_mask: torch.Tensor | None,
        context: FocusContext | None,
    ) -> torch.Tensor:
        """See :meth:`FocusScorer.score`: ``1 / N`` everywhere."""
        import torch

        start, stop = check_span(inputs_embeds.shape[1], grid_span, query_index)
        return torch.full((stop - start,), 1.0 / (stop - start), dtype=torch.float32)
