"""Read a CLIP layer's [CLS] attention row and keys during a normal vision-tower forward (any attention kernel).

VisionZip-style reducers rank patches by the [CLS] token's attention in the vision layer whose output LLaVA uses
(``vision_feature_layer``) and merge tokens by that layer's key similarity. Asking transformers for
``output_attentions`` would force the eager kernel on the whole tower; instead a forward pre-hook records the
layer's (layer-normed) input and the row is recomputed from that layer's own ``q_proj`` / ``k_proj``: one
``1 x S`` row per head instead of an ``S x S`` matrix.

PruMerge reads the *next* layer instead (:func:`probe_next_layer`): the layer whose input is the feature layer's
output (CLIP-L's last layer, ``layers[23]``, for ``vision_feature_layer=-2``), with one head over the full width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from lrs_plugin.backbone.adapter import Backbone

__all__ = [
    "FeatureLayerProbe",
    "NextLayerProbe",
    "encoder_layers",
    "feature_layer_index",
    "next_layer_index",
    "probe_feature_layer",
    "probe_next_layer",
]


@dataclass(frozen=True)
class FeatureLayerProbe:
    """What one vision-tower pass shows of the feature layer, for ``n`` tiles of ``S = 1 + P`` tokens.

    Attributes:
        hidden: ``[n, S, Cv]`` hidden states LLaVA takes (``hidden_states[vision_feature_layer]``), [CLS] first.
        cls_attention: ``[n, P]`` softmax attention of the [CLS] query to each patch, summed over heads.
        keys: ``[n, S, Dh]`` the layer's keys (before scaling), averaged over heads.
    """

    hidden: torch.Tensor
    cls_attention: torch.Tensor
    keys: torch.Tensor


@dataclass(frozen=True)
class NextLayerProbe:
    """The feature layer and the single-head [CLS] attention of the layer after it, for ``n`` tiles of ``S = 1 + P``.

    Attributes:
        hidden: ``[n, S, Cv]`` hidden states LLaVA takes (``hidden_states[vision_feature_layer]``), [CLS] first.
        cls_attention: ``[n, P]`` ``softmax(q_cls . k^T * Cv^-1/2)`` over all ``S`` tokens, [CLS] column dropped
            afterwards; ``q`` / ``k`` are the next layer's full-width ``q_proj`` / ``k_proj`` outputs (one head).
        keys: ``[n, S, Cv]`` that layer's full-width ``k_proj`` outputs (bias included, unscaled).
    """

    hidden: torch.Tensor
    cls_attention: torch.Tensor
    keys: torch.Tensor


def encoder_layers(tower: Any) -> Any:
    """The ``ModuleList`` of encoder layers of a CLIP-like vision tower.

    Raises:
        ConfigError: the tower has no ``encoder.layers`` with a ``self_attn`` holding ``q_proj`` / ``k_proj``.
    """
    import torch.nn as nn

    for name, module in tower.named_modules():
        if name.endswith("encoder.layers") and isinstance(module, nn.ModuleList) and len(module):
            attn = getattr(module[0], "self_attn", None)
            if attn is not None and hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
                return module
    raise ConfigError(f"vision tower {type(tower).__name__} has no encoder.layers[*].self_attn.q_proj/k_proj")


def feature_layer_index(vision_feature_layer: object, num_layers: int) -> int:
    """The encoder layer whose output is ``hidden_states[vision_feature_layer]`` (0-based).

    ``hidden_states`` holds ``num_layers + 1`` entries (the embeddings first), so ``-2`` is the output of layer
    ``num_layers - 2``, and index ``i > 0`` is the output of layer ``i - 1``.

    Raises:
        ConfigError: a list of feature layers, or the embeddings (index 0), which no attention produces.
    """
    if isinstance(vision_feature_layer, bool) or not isinstance(vision_feature_layer, int):
        raise ConfigError(
            f"vision_feature_layer={vision_feature_layer!r}: a single int layer is needed (multi-layer features have "
            "no single [CLS] attention to rank by)"
        )
    if not -(num_layers + 1) <= vision_feature_layer <= num_layers:
        raise ConfigError(f"vision_feature_layer={vision_feature_layer} is outside a {num_layers}-layer tower")
    index = vision_feature_layer % (num_layers + 1)
    if index == 0:
        raise ConfigError("vision_feature_layer selects the patch embeddings; no attention layer produced them")
    return index - 1


def _cls_row_and_keys(attn: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n, P] [CLS]->patch attention summed over heads, [n, S, Dh] keys averaged over heads)`` from input ``x``."""
    import torch

    n, s, _ = x.shape
    heads, dh = int(attn.num_heads), int(attn.head_dim)
    q = attn.q_proj(x[:, :1]).view(n, 1, heads, dh).transpose(1, 2).float()  # [n, H, 1, Dh]
    k = attn.k_proj(x).view(n, s, heads, dh).transpose(1, 2).float()  # [n, H, S, Dh]
    probs = torch.softmax((q @ k.transpose(-1, -2)) * float(attn.scale), dim=-1)  # [n, H, 1, S]
    return probs[:, :, 0, 1:].sum(dim=1), k.mean(dim=1)


def probe_feature_layer(backbone: Backbone, pixel_values: torch.Tensor) -> FeatureLayerProbe:
    """Run the vision tower over tiles and read the feature layer's hidden states, [CLS] attention and keys.

    Args:
        backbone: The loaded backbone (its tower needs a [CLS] token).
        pixel_values: ``[n, 3, S, S]`` normalized tiles, run in chunks of ``backbone.tile_batch_size``.

    Returns:
        The probe, tensors on the vision tower's device (attention and keys in float32).

    Raises:
        ConfigError: the tower has no [CLS] token, or the feature layer is not a single attention layer.
    """
    layers = encoder_layers(backbone.model.model.vision_tower)
    index = feature_layer_index(backbone.config.vision_feature_layer, len(layers))
    hidden, cls_attention, keys = _probe_layer(backbone, pixel_values, index, _cls_row_and_keys)
    return FeatureLayerProbe(hidden=hidden, cls_attention=cls_attention, keys=keys)


def next_layer_index(vision_feature_layer: object, num_layers: int) -> int:
    """The encoder layer whose *input* is ``hidden_states[vision_feature_layer]`` (0-based; PruMerge's layer).

    Raises:
        ConfigError: the feature layer is not a single attention layer, or it is the last layer (nothing reads it).
    """
    index = feature_layer_index(vision_feature_layer, num_layers) + 1
    if index >= num_layers:
        raise ConfigError(
            f"vision_feature_layer={vision_feature_layer} is the tower's last layer; PruMerge needs the [CLS] "
            "attention of the layer that reads the feature layer"
        )
    return index


def _single_head_cls_row(attn: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n, P] single-head [CLS] attention over the full width, [n, S, Cv] full-width keys)`` from input ``x``."""
    import torch

    dtype = torch.promote_types(x.dtype, torch.float32)
    q = attn.q_proj(x[:, :1]).to(dtype)  # [n, 1, Cv]
    k = attn.k_proj(x).to(dtype)  # [n, S, Cv]
    probs = torch.softmax((q @ k.transpose(-1, -2)) * float(k.shape[-1]) ** -0.5, dim=-1)  # [n, 1, S]
    return probs[:, 0, 1:], k


def probe_next_layer(backbone: Backbone, pixel_values: torch.Tensor) -> NextLayerProbe:
    """Run the vision tower over tiles; read the feature layer and the next layer's single-head [CLS] attention.

    This is LLaVA-PruMerge's signal: the official code hooks ``q_proj`` / ``k_proj`` of CLIP-L's ``layers[23]`` (whose
    input is ``hidden_states[-2]``) and takes ``softmax(q k^T * C^-1/2)`` with ``C`` the full width, one head.

    Args:
        backbone: The loaded backbone (its tower needs a [CLS] token).
        pixel_values: ``[n, 3, S, S]`` normalized tiles, run in chunks of ``backbone.tile_batch_size``.

    Returns:
        The probe, tensors on the vision tower's device (attention and keys in float32, or float64 for a float64
        tower).

    Raises:
        ConfigError: the tower has no [CLS] token, or no layer reads the feature layer.
    """
    layers = encoder_layers(backbone.model.model.vision_tower)
    index = next_layer_index(backbone.config.vision_feature_layer, len(layers))
    hidden, cls_attention, keys = _probe_layer(backbone, pixel_values, index, _single_head_cls_row)
    return NextLayerProbe(hidden=hidden, cls_attention=cls_attention, keys=keys)


def _probe_layer(
    backbone: Backbone, pixel_values: torch.Tensor, layer_index: int, read: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(feature-layer hidden [n, S, Cv], *read(layer's self_attn, its input))`` over tiles, in chunks."""
    import torch

    inner = backbone.model.model
    tower = inner.vision_tower
    if backbone._num_prefix_tokens != 1:
        raise ConfigError(
            f"the vision tower prepends {backbone._num_prefix_tokens} extra tokens; a single [CLS] token is needed"
        )
    attn = encoder_layers(tower)[layer_index].self_attn
    feature = backbone.config.vision_feature_layer
    captured: list[torch.Tensor] = []

    def keep_input(_module: Any, args: tuple, kwargs: dict) -> None:
        captured.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

    param = next(tower.parameters())
    hidden, rows, keys = [], [], []
    handle = attn.register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, pixel_values.shape[0], backbone.tile_batch_size):
                chunk = pixel_values[start : start + backbone.tile_batch_size].to(param.device, param.dtype)
                captured.clear()
                states = tower(chunk, output_hidden_states=True, return_dict=True).hidden_states
                if len(captured) != 1:
                    raise ConfigError(f"the probed layer's attention ran {len(captured)} times in one tower call")
                row, k = read(attn, captured[0])
                hidden.append(states[feature])
                rows.append(row)
                keys.append(k)
    finally:
        handle.remove()
    return torch.cat(hidden), torch.cat(rows), torch.cat(keys)
