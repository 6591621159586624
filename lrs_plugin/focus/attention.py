"""Text-to-vision attention rows computed explicitly from one decoder layer's queries and keys.

Shared plumbing of the ``llm_attention`` and ``rfm`` focus scorers (:mod:`lrs_plugin.focus.scorers`). Nothing here asks
a model for ``output_attentions``: the decoder layers that precede the scoring layer run with whatever attention
implementation their config names (``sdpa``, ``flash_attention_2``, ``eager``), and the single attention row the
scorer needs is rebuilt from the scoring layer's ``input_layernorm``, ``q_proj``, ``k_proj`` and RoPE, exactly as the
layer computes it internally (method.md §3.2).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

__all__ = [
    "MASKED_KEY_MODES",
    "attention_dims",
    "check_full_attention",
    "check_masked_key_mode",
    "check_span",
    "focus_row_scores",
    "query_logits",
    "query_row_scores",
    "run_layers",
]

MASKED_KEY_MODES = ("faithful", "exclude")
"""How masked grid keys enter the scoring softmax: ``faithful`` adds ``+1`` to their logits (the released code's
boolean-mask quirk, method.md §3.4.2), ``exclude`` removes them (logit ``-inf``)."""


def check_masked_key_mode(value: object) -> str:
    """Return ``value`` if it is a valid masked-key mode, else raise :class:`ConfigError` naming the choices."""
    if value not in MASKED_KEY_MODES:
        raise ConfigError(f"masked_key_mode={value!r} is not supported; valid choices: {', '.join(MASKED_KEY_MODES)}")
    return str(value)


def attention_dims(config: Any) -> tuple[int, int, int]:
    """Read ``(num_attention_heads, num_key_value_heads, head_dim)`` from a text config (never hard-coded).

    Args:
        config: A Llama / Qwen2 text config.

    Returns:
        The head counts and the per-head width (``config.head_dim`` when set, else ``hidden_size // heads``).

    """
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv_heads, head_dim


def check_full_attention(config: Any, layer_indices: Sequence[int]) -> None:
    """Refuse sliding-window layers: the scorers rebuild full causal attention only.

    Args:
        config: The text config whose ``layer_types`` (if any) describe each layer.
        layer_indices: Layers the scorer runs or reads q/k from.

    Raises:
        ConfigError: one of the layers is a sliding-window layer.

    """
    types = getattr(config, "layer_types", None)
    if not types:
        return
    sliding = [i for i in layer_indices if i < len(types) and types[i] != "full_attention"]
    if sliding:
        raise ConfigError(
            f"layers {sliding} use {types[sliding[0]]!r}; focus scorers support full-attention layers only "
            "(disable use_sliding_window in the text config)"
        )


def check_span(length: int, grid_span: slice, query_index: int) -> tuple[int, int]:
    """Validate the grid span and the query position of a length-``length`` sequence.

    Args:
        length: Sequence length ``L``.
        grid_span: ``slice(start, stop)`` with ``0 <= start < stop <= L`` (no step).
        query_index: Query position, at or after the last grid token (causal scoring) and ``< L``.

    Returns:
        ``(start, stop)``.

    Raises:
        ConfigError: the span is empty, stepped or out of range, or the query precedes grid keys.

    """
    start, stop, step = grid_span.start, grid_span.stop, grid_span.step
    if not (isinstance(start, int) and isinstance(stop, int) and step in (None, 1) and 0 <= start < stop <= length):
        raise ConfigError(f"grid_span={grid_span!r} must be a non-empty slice(start, stop) inside [0, {length}]")
    if not stop - 1 <= query_index < length:
        raise ConfigError(
            f"query_index={query_index} must lie in [{stop - 1}, {length - 1}] (at or after the last grid key)"
        )
    return start, stop


def _position_ids(length: int, device: torch.device) -> torch.Tensor:
    import torch

    return torch.arange(length, device=device).unsqueeze(0)


def run_layers(
    layers: Sequence[torch.nn.Module],
    hidden: torch.Tensor,
    *,
    config: Any,
    rotary_emb: torch.nn.Module,
    key_mask: torch.Tensor | None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run decoder layers over a whole sequence with RoPE positions ``0 .. L-1`` and a causal + key-padding mask.

    Positions count every token, masked placeholders included, so kept tokens keep grid-consistent positions
    (method.md §3.3.11). The mask comes from transformers' own :func:`create_causal_mask` for the attention
    implementation in ``config`` (a 4-D additive mask for eager, a 4-D boolean one for sdpa, the 2-D padding mask
    for flash attention); ``key_mask=None`` gives plain causal attention.

    Args:
        layers: Decoder layers (``LlamaDecoderLayer`` / ``Qwen2DecoderLayer``), run in order.
        hidden: ``[1, L, C]`` input hidden states.
        config: Text config whose ``_attn_implementation`` the layers use.
        rotary_emb: The model's rotary embedding module (``cos, sin = rotary_emb(x, position_ids)``).
        key_mask: ``[L]`` bool, ``True`` for tokens other tokens may attend to; ``None`` for all.
        positions: ``[L]`` increasing RoPE positions of the rows (a sequence with placeholders left out keeps
            its gaps); ``None``: ``0 .. L-1``.

    Returns:
        ``[1, L, C]`` hidden states after the last layer.

    """
    import torch
    from transformers.masking_utils import create_causal_mask

    if not layers:
        return hidden
    if positions is None:
        position_ids = _position_ids(hidden.shape[1], hidden.device)
    else:
        position_ids = positions.to(hidden.device, torch.long).reshape(1, -1)
        if key_mask is None:  # an explicit mask: without one, transformers reads gaps as packed sequences
            key_mask = torch.ones(hidden.shape[1], dtype=torch.bool, device=hidden.device)
    mask_2d = None if key_mask is None else key_mask.to(hidden.device, torch.bool).unsqueeze(0)
    mask = create_causal_mask(
        config=config, inputs_embeds=hidden, attention_mask=mask_2d, cache=None, position_ids=position_ids
    )
    position_embeddings = rotary_emb(hidden, position_ids=position_ids)
    for layer in layers:
        out = layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _rotate(layer: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to ``x [1, h, n, d]`` with the ``apply_rotary_pos_emb`` of the layer's own modeling module."""
    module = sys.modules[type(layer).__module__]
    rotated, _ = module.apply_rotary_pos_emb(x, x, cos, sin)
    return rotated


def query_logits(
    layer: torch.nn.Module,
    hidden: torch.Tensor,
    *,
    config: Any,
    rotary_emb: torch.nn.Module,
    keys: slice,
    query_index: int,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw per-head attention logits of one query over a span of keys, from ``layer``'s own q/k (method.md §3.2).

    ``layer.input_layernorm`` -> ``q_proj`` (query row) / ``k_proj`` (the keys; biases included when the layer has
    them) -> heads -> RoPE at absolute positions -> K repeated over GQA groups -> ``q . k * scaling``. No mask, no
    softmax; differentiable (the RFM distillation trains through it).

    Args:
        layer: A decoder layer (its attention is never run).
        hidden: ``[1, L, C]`` input of ``layer``.
        config: Text config giving the head counts and width.
        rotary_emb: Rotary embedding module of the model.
        keys: Key rows ``start:stop`` (step 1) inside ``[0, L)``.
        query_index: Row of the query token.
        positions: ``[L]`` RoPE position of every row; ``None``: the row index.

    Returns:
        ``[heads, stop - start]`` float32 logits.

    """
    import torch

    heads, kv_heads, head_dim = attention_dims(config)
    start, stop = keys.start or 0, keys.stop
    attn = layer.self_attn
    scaling = float(getattr(attn, "scaling", head_dim**-0.5))
    normed = layer.input_layernorm(hidden)
    q = attn.q_proj(normed[:, query_index : query_index + 1]).view(1, 1, heads, head_dim).transpose(1, 2)
    k = attn.k_proj(normed[:, start:stop]).view(1, stop - start, kv_heads, head_dim).transpose(1, 2)
    if positions is None:
        q_pos = torch.tensor([[query_index]], device=hidden.device)
        k_pos = torch.arange(start, stop, device=hidden.device).unsqueeze(0)
    else:
        rows = positions.to(hidden.device, torch.long)
        q_pos, k_pos = rows[query_index].reshape(1, 1), rows[start:stop].unsqueeze(0)
    q = _rotate(layer, q, *rotary_emb(hidden, position_ids=q_pos))
    k = _rotate(layer, k, *rotary_emb(hidden, position_ids=k_pos))
    k = k.repeat_interleave(heads // kv_heads, dim=1)  # head h reads kv head h // groups, as repeat_kv does
    return torch.einsum("hd,hnd->hn", q[0, :, 0].float(), k[0].float()) * scaling  # [heads, N]


def query_row_scores(
    layer: torch.nn.Module,
    hidden: torch.Tensor,
    *,
    config: Any,
    rotary_emb: torch.nn.Module,
    grid_span: slice,
    query_index: int,
    key_mask: torch.Tensor | None,
    masked_key_mode: str,
) -> torch.Tensor:
    """Head-averaged attention of one query over the grid keys, from ``layer``'s own q/k (method.md §3.2).

    Computes ``layer.input_layernorm`` -> ``q_proj`` (query row only) / ``k_proj`` (grid keys only, biases
    included when the layer has them) -> heads from the config -> RoPE at the tokens' absolute positions -> K
    repeated over GQA groups -> ``z_h = q_h . k_h / sqrt(head_dim)`` (the layer's ``scaling``) -> masked keys
    (``faithful``: ``+1``; ``exclude``: ``-inf``) -> softmax over the grid slice per head, in float32 -> mean over
    heads. Logits are float32 too (the released code keeps them in fp16; see docs/c2f.md).

    Args:
        layer: The scoring decoder layer (its attention is never run).
        hidden: ``[1, L, C]`` input of ``layer`` (output of the layers before it).
        config: Text config giving the head counts and width.
        rotary_emb: Rotary embedding module of the model.
        grid_span: Positions of the grid keys, ``grid_span.stop <= query_index + 1``.
        query_index: Absolute position of the query token.
        key_mask: ``[L]`` bool (``True`` = valid key) or ``None``.
        masked_key_mode: ``"faithful"`` or ``"exclude"``.

    Returns:
        ``[N]`` float32 scores over the grid positions, ``N = len(grid_span)``; each sums over the valid keys to
        at most 1 (exactly 1 with ``exclude`` or without masked keys).

    Raises:
        ConfigError: bad span or query index (see :func:`check_span`), unknown mode, or every grid key masked
            with ``exclude``.

    """
    import torch

    check_masked_key_mode(masked_key_mode)
    start, stop = check_span(hidden.shape[1], grid_span, query_index)
    logits = query_logits(
        layer, hidden, config=config, rotary_emb=rotary_emb, keys=slice(start, stop), query_index=query_index
    )
    if key_mask is not None:
        masked = ~key_mask.to(logits.device, torch.bool)[start:stop]
        if masked_key_mode == "faithful":
            logits = logits + masked.float()
        else:
            if bool(masked.all()):
                raise ConfigError("every grid key is masked; nothing to score with masked_key_mode='exclude'")
            logits = logits.masked_fill(masked, float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=0)


def focus_row_scores(
    layers: Sequence[torch.nn.Module],
    score_layer: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    *,
    config: Any,
    rotary_emb: torch.nn.Module,
    grid_span: slice,
    query_index: int,
    key_mask: torch.Tensor | None,
    masked_key_mode: str,
    compact: bool = True,
) -> torch.Tensor:
    """One focus pass: ``layers`` over the sequence up to the query, then :func:`query_row_scores` of ``score_layer``.

    With ``masked_key_mode="exclude"`` a masked placeholder is never attended to by any token, so no kept token
    depends on it: ``compact=True`` (default) leaves the placeholders out of the computation, the kept tokens
    keeping their RoPE positions (gaps included), and gives the same scores (0 at masked keys) at a cost that
    follows the kept tokens rather than the whole level grid (a zoomed level is mostly placeholders). ``faithful``
    needs the placeholders' own hidden states (their keys enter the softmax, method.md §3.4.2): always the full
    sequence.

    Args:
        layers: Decoder layers run before the scoring layer.
        score_layer: Layer whose q/k give the attention row.
        inputs_embeds: ``[1, L, C]`` sequence (tokens after ``query_index`` are ignored: causal).
        config: Text config of the layers.
        rotary_emb: Rotary embedding module.
        grid_span: Positions of the grid keys.
        query_index: Position of the query token.
        key_mask: ``[L]`` bool (``True`` = valid key) or ``None``.
        masked_key_mode: ``"faithful"`` or ``"exclude"``.
        compact: Leave excluded placeholders out (``exclude`` only; the result is the same).

    Returns:
        ``[N]`` float32 scores over the grid positions (see :func:`query_row_scores`).

    """
    import torch

    check_masked_key_mode(masked_key_mode)
    start, stop = check_span(inputs_embeds.shape[1], grid_span, query_index)
    end = query_index + 1  # later tokens cannot influence the query row (causal)
    hidden = inputs_embeds[:, :end]
    mask = None if key_mask is None else key_mask[:end].to(torch.bool)
    if not (compact and masked_key_mode == "exclude" and mask is not None and not bool(mask.all())):
        hidden = run_layers(layers, hidden, config=config, rotary_emb=rotary_emb, key_mask=mask)
        return query_row_scores(
            score_layer,
            hidden,
            config=config,
            rotary_emb=rotary_emb,
            grid_span=grid_span,
            query_index=query_index,
            key_mask=mask,
            masked_key_mode=masked_key_mode,
        )
    mask = mask.to(hidden.device).clone()
    mask[query_index] = True
    if not bool(mask[start:stop].any()):
        raise ConfigError("every grid key is masked; nothing to score with masked_key_mode='exclude'")
    rows = mask.nonzero().flatten()
    hidden = run_layers(layers, hidden[:, rows], config=config, rotary_emb=rotary_emb, key_mask=None, positions=rows)
    first = int(mask[:start].sum())
    kept = int(mask[start:stop].sum())
    logits = query_logits(
        score_layer,
        hidden,
        config=config,
        rotary_emb=rotary_emb,
        keys=slice(first, first + kept),
        query_index=rows.numel() - 1,
        positions=rows,
    )
    scores = torch.zeros(stop - start, dtype=torch.float32, device=logits.device)
    scores[mask[start:stop].to(logits.device)] = torch.softmax(logits, dim=-1).mean(dim=0)
    return scores
