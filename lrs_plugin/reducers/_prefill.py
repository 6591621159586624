"""Plumbing of the in-LLM reducers (FastV, PyramidDrop): a prefill that drops image tokens between decoder layers.

:func:`pruned_prefill` runs the text model's own decoder layers one by one over ``inputs_embeds`` (transformers'
classes, never patched). Before chosen layers it ranks the image tokens still in the sequence by the attention of the
**last prompt token**, computed from one layer's own ``q_proj`` / ``k_proj`` and RoPE for that single query row
(:func:`lrs_plugin.focus.attention.query_row_scores`, softmax over *all* keys of the row, mean over heads, then the
image columns), keeps the top ones and drops the rest from every later layer. Each layer writes the keys and values
of the tokens it saw into a :class:`~transformers.DynamicCache`, so the cache of later layers is shorter.
:func:`greedy_decode` then decodes one token at a time with that cache ("static" pruning: the dropped set is fixed
at prefill, as in every in-LLM method's KV-cache code, baselines.md §1.5).

Position ids (baselines.md §1.4) follow one of two conventions:

* ``"original"`` (FastV): kept tokens keep their original RoPE positions; decoding continues at the original length.
* ``"renumber"`` (PyramidDrop): positions are ``0 .. n-1`` over the shortened sequence after each drop; decoding
  continues at the final (pruned) length, for every layer.

Attention runs through whatever kernel the config names (``sdpa``, ``eager``, ``flash_attention_2``): each segment
between drops gets transformers' own causal mask for its length; single-token decoding steps need none. Position ids
are passed to the layers only through ``position_embeddings`` (kernels never see the gaps of ``"original"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.flops.terms import equivalent_tokens  # re-exported: the one layer average

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.backbone.language import GenerationOutput
    from lrs_plugin.harness.costs import StageClock

__all__ = [
    "POSITION_MODES",
    "DropStage",
    "PrefillResult",
    "check_stages",
    "equivalent_tokens",
    "generate_pruned",
    "greedy_decode",
    "image_scores",
    "pruned_prefill",
    "select_top",
]

POSITION_MODES = ("original", "renumber")
"""Position-id conventions after a drop: FastV's ``original`` and PyramidDrop's ``renumber`` (see module doc)."""


@dataclass(frozen=True)
class DropStage:
    """One drop of image tokens inside the LLM.

    Attributes:
        score_layer: Layer whose ``q_proj`` / ``k_proj`` (applied to that layer's *input* hidden states) give the
            ranking row: ``drop_before - 1`` for FastV (layer K-1's attention), ``drop_before`` for PyramidDrop
            (the next layer's projections).
        drop_before: First layer that runs on the shortened sequence.
        keep: Image tokens kept (absolute count, ``>= 1``).
    """

    score_layer: int
    drop_before: int
    keep: int


@dataclass
class PrefillResult:
    """What a pruned prefill leaves for decoding and accounting.

    Attributes:
        cache: Per-layer keys / values (layer ``l`` holds ``tokens_per_layer[l]`` positions).
        last_hidden: ``[1, n_last, C]`` output of the final norm over the tokens that reached the last layer.
        kept_index: ``[n_last]`` long, indices into the input sequence of those tokens (increasing).
        stage_kept: Per stage, ``[keep_s]`` long indices into the *input* sequence of the image tokens kept.
        tokens_per_layer: Sequence length entering each decoder layer (``L`` ints).
        vision_tokens_per_layer: Image tokens entering each decoder layer (``L`` ints).
        next_position: RoPE position of the first generated token.
    """

    cache: Any
    last_hidden: torch.Tensor
    kept_index: torch.Tensor
    stage_kept: list[torch.Tensor]
    tokens_per_layer: list[int]
    vision_tokens_per_layer: list[int]
    next_position: int


# ----------------------------------------------------------------------------------------------- pure helpers
def select_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, sorted increasingly (ties: ``torch.topk``'s order).

    Args:
        scores: ``[n]`` scores, ``n >= 1``.
        keep: Tokens to keep, ``1 <= keep <= n``.

    Returns:
        ``[keep]`` long indices into ``scores``, increasing.

    Raises:
        ConfigError: ``keep`` outside ``[1, n]``.
    """
    import torch

    n = int(scores.shape[0])
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
        raise ConfigError(f"keep={keep!r} must be an int in [1, {n}] (never zero tokens)")
    return torch.sort(torch.topk(scores, keep).indices).values


def check_stages(stages: Sequence[DropStage], num_layers: int, num_image: int) -> None:
    """Validate a drop schedule against a model depth and an image-token count.

    Rules: ``0 <= score_layer <= drop_before <= num_layers - 1``, ``score_layer >= drop_before - 1``; drops in
    strictly increasing layers, each scored at or after the previous drop; ``1 <= keep`` and keeps non-increasing,
    the first ``<= num_image``.

    Raises:
        ConfigError: the first rule broken, with the offending stage.
    """
    previous: DropStage | None = None
    for s in stages:
        if not 0 <= s.score_layer <= s.drop_before <= num_layers - 1 or s.score_layer < s.drop_before - 1:
            raise ConfigError(
                f"{s}: need 0 <= score_layer <= drop_before <= {num_layers - 1} and score_layer >= drop_before - 1"
            )
        if previous is not None and (s.drop_before <= previous.drop_before or s.score_layer < previous.drop_before):
            raise ConfigError(f"{s}: drops must be in increasing layers, each scored after the previous drop")
        limit = num_image if previous is None else previous.keep
        if isinstance(s.keep, bool) or not isinstance(s.keep, int) or not 1 <= s.keep <= limit:
            raise ConfigError(f"{s}: keep must be an int in [1, {limit}] (never zero, never more than before)")
        previous = s


def image_scores(
    layer: torch.nn.Module, hidden: torch.Tensor, *, config: Any, rotary_emb: torch.nn.Module, image_span: slice
) -> torch.Tensor:
    """Head-averaged attention of the last token over the image span, from ``layer``'s own q/k.

    The softmax runs over every key of the last row (text and image, as in the methods' code), then the image
    columns are taken. RoPE uses positions ``0 .. n-1`` (the index), which is what the sequence carries whenever a
    schedule scores (see :func:`pruned_prefill`).

    Args:
        layer: The decoder layer whose ``input_layernorm``, ``q_proj``, ``k_proj`` are used (its attention is not run).
        hidden: ``[1, n, C]`` input hidden states of ``layer``.
        config: Text config (head counts).
        rotary_emb: The model's rotary embedding.
        image_span: ``slice(start, stop)`` of the image tokens, ``stop <= n``.

    Returns:
        ``[stop - start]`` float32 scores.
    """
    from lrs_plugin.focus.attention import query_row_scores

    n = int(hidden.shape[1])
    row = query_row_scores(
        layer,
        hidden,
        config=config,
        rotary_emb=rotary_emb,
        grid_span=slice(0, n),
        query_index=n - 1,
        key_mask=None,
        masked_key_mode="exclude",
    )
    return row[image_span]


# --------------------------------------------------------------------------------------------------- prefill
def _run_layer(layer: torch.nn.Module, hidden: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _segment_inputs(lm: Any, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[Any, Any]:
    """Causal mask for the whole segment (transformers' own, for the configured kernel) and RoPE ``(cos, sin)``."""
    from transformers.masking_utils import create_causal_mask

    # position_ids=None: the mask is causal by index; gapped positions must not be read as packed sequences.
    mask = create_causal_mask(config=lm.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    return mask, lm.rotary_emb(hidden, position_ids=positions.unsqueeze(0))


def pruned_prefill(
    lm: Any,
    inputs_embeds: torch.Tensor,
    image_span: slice,
    stages: Sequence[DropStage],
    *,
    positions: str,
) -> PrefillResult:
    """Run every decoder layer over the prompt, dropping image tokens before the stages' layers, filling a cache.

    Args:
        lm: The decoder (``LlamaModel`` / ``Qwen2Model``: ``layers``, ``norm``, ``rotary_emb``, ``config``).
        inputs_embeds: ``[1, n, C]`` prompt embeddings (prefix, image tokens, suffix; the last token is the query).
        image_span: ``slice(start, stop)`` of the image tokens, ``stop < n``.
        stages: The drop schedule (validated by :func:`check_stages`); empty = the stock forward.
        positions: ``"original"`` or ``"renumber"`` (:data:`POSITION_MODES`).

    Returns:
        The filled cache, final hidden states, kept indices and per-layer counts.

    Raises:
        ConfigError: a bad schedule, span or position mode, a sliding-window layer, or ``"original"`` positions with
            more than one stage (the ranking row assumes positions equal indices, true before the first drop).
    """
    import torch
    from transformers import DynamicCache

    from lrs_plugin.focus.attention import check_full_attention

    if positions not in POSITION_MODES:
        raise ConfigError(f"positions={positions!r} is not supported; valid: {', '.join(POSITION_MODES)}")
    n, num_layers = int(inputs_embeds.shape[1]), len(lm.layers)
    start, stop = image_span.start, image_span.stop
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop < n):
        raise ConfigError(f"image_span={image_span!r} must be a non-empty slice inside [0, {n - 1})")
    check_stages(stages, num_layers, stop - start)
    check_full_attention(lm.config, range(num_layers))
    if positions == "original" and len(stages) > 1:
        raise ConfigError("positions='original' supports one drop stage (ranking assumes positions == indices)")

    device = inputs_embeds.device
    cache = DynamicCache(config=lm.config)
    hidden = inputs_embeds
    index = torch.arange(n, device=device)  # input index of every token still in the sequence
    pos = index.clone()
    n_img = stop - start
    mask, rope = _segment_inputs(lm, hidden, pos)
    pending: dict[int, torch.Tensor] = {}
    stage_kept: list[torch.Tensor] = []
    tokens_per_layer: list[int] = []
    vision_per_layer: list[int] = []
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            for s_idx, stage in enumerate(stages):
                if stage.score_layer == i and stage.keep < n_img:
                    span = slice(start, start + n_img)
                    pending[s_idx] = image_scores(
                        layer, hidden, config=lm.config, rotary_emb=lm.rotary_emb, image_span=span
                    )
                if stage.drop_before == i and stage.keep < n_img:
                    rel = select_top(pending.pop(s_idx), stage.keep)
                    after = torch.arange(start + n_img, hidden.shape[1], device=device)
                    keep = torch.cat([torch.arange(start, device=device), start + rel.to(device), after])
                    hidden, index = hidden[:, keep], index[keep]
                    n_img = stage.keep
                    pos = index.clone() if positions == "original" else torch.arange(index.numel(), device=device)
                    mask, rope = _segment_inputs(lm, hidden, pos)
                if stage.drop_before == i:
                    stage_kept.append(index[start : start + n_img].clone())
            tokens_per_layer.append(int(hidden.shape[1]))
            vision_per_layer.append(n_img)
            hidden = _run_layer(
                layer, hidden, attention_mask=mask, position_embeddings=rope, cache=cache, use_cache=True
            )
        last_hidden = lm.norm(hidden)
    next_position = n if positions == "original" else int(index.numel())
    return PrefillResult(
        cache=cache,
        last_hidden=last_hidden,
        kept_index=index,
        stage_kept=stage_kept,
        tokens_per_layer=tokens_per_layer,
        vision_tokens_per_layer=vision_per_layer,
        next_position=next_position,
    )


# --------------------------------------------------------------------------------------------------- decoding
def greedy_decode(
    lm: Any,
    lm_head: torch.nn.Module,
    prefill: PrefillResult,
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    should_stop: Callable[[list[int]], bool] | None = None,
    on_first_token: Callable[[], None] | None = None,
) -> list[int]:
    """Greedy decoding from a pruned prefill with its per-layer cache (mutated in place).

    Generated token ``t`` (0-based; token 0 comes from the prefill's last hidden state) is fed back at RoPE position
    ``prefill.next_position + t``. Every layer appends one key / value per step to its own cache.

    Args:
        lm: The decoder the prefill ran on.
        lm_head: The output projection ``C -> vocab``.
        prefill: Result of :func:`pruned_prefill`.
        max_new_tokens: Upper bound on generated tokens (``>= 1``).
        eos_token_ids: Generation stops after emitting one of these (it is included in the result).
        should_stop: Optional predicate on the ids generated so far; generation stops after the first token for which
            it holds (it is included), e.g. :func:`lrs_plugin.backbone.stops.stop_criterion`.
        on_first_token: Called once token 0 (the prefill's) is known, before any decoding step.

    Returns:
        The generated ids.
    """
    import torch

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an int >= 1")
    eos = {int(e) for e in eos_token_ids}
    embed = lm.get_input_embeddings()
    device = prefill.last_hidden.device
    out: list[int] = []
    with torch.no_grad():
        token = int(lm_head(prefill.last_hidden[:, -1]).argmax(dim=-1)[0])
        if on_first_token is not None:
            on_first_token()
        for step in range(max_new_tokens):
            out.append(token)
            if token in eos or (should_stop is not None and should_stop(out)) or step == max_new_tokens - 1:
                break
            hidden = embed(torch.tensor([[token]], device=device))
            position = torch.tensor([[prefill.next_position + step]], device=device)
            rope = lm.rotary_emb(hidden, position_ids=position)
            for layer in lm.layers:
                hidden = _run_layer(
                    layer, hidden, attention_mask=None, position_embeddings=rope, cache=prefill.cache, use_cache=True
                )
            token = int(lm_head(lm.norm(hidden)[:, -1]).argmax(dim=-1)[0])
    return out


def generate_pruned(
    backbone: Backbone,
    inputs_embeds: torch.Tensor,
    image_span: slice,
    stages: Sequence[DropStage],
    *,
    positions: str,
    max_new_tokens: int,
    stop_strings: Sequence[str] | None = None,
    eos_token_ids: Sequence[int] | None = None,
    clock: StageClock | None = None,
) -> tuple[GenerationOutput, PrefillResult]:
    """Pruned prefill + greedy decoding on ``backbone``, finished like :meth:`Backbone.generate`.

    Stop strings end decoding after the token with which the answer first contains one, by the criterion
    :meth:`Backbone.generate` hands to ``generate`` (:func:`~lrs_plugin.backbone.stops.stop_criterion`); the text is
    cut before it (:func:`~lrs_plugin.backbone.stops.cut_at_stop`).

    Args:
        backbone: The loaded backbone.
        inputs_embeds: ``[1, n, C]`` from :meth:`Backbone.assemble`.
        image_span: Its image span.
        stages: Drop schedule.
        positions: ``"original"`` or ``"renumber"``.
        max_new_tokens: Upper bound on generated tokens.
        stop_strings: Strings that end generation (the task's ``until``).
        eos_token_ids: Stop ids; default the backbone's (``[tokenizer.eos_token_id]``, as ``generate``).
        clock: Times the prefill (the drops included) up to the first token and the decoding after it, and measures
            the pruned cache at the end of the prefill.

    Returns:
        ``(answer, prefill)``; the prefill's cache holds the decoded tokens too.
    """
    from lrs_plugin.backbone.language import GenerationOutput
    from lrs_plugin.backbone.stops import cut_at_stop, stop_criterion
    from lrs_plugin.harness.costs import StageClock

    eos = list(eos_token_ids) if eos_token_ids else backbone._default_eos_ids()
    tokenizer = backbone.tokenizer
    lm = backbone.language_model
    clock = clock or StageClock()
    with clock.generation():
        prefill = pruned_prefill(lm, inputs_embeds, image_span, stages, positions=positions)
        ids = greedy_decode(
            lm,
            backbone.lm_head,
            prefill,
            max_new_tokens=max_new_tokens,
            eos_token_ids=eos,
            should_stop=stop_criterion(tokenizer, stop_strings),
            on_first_token=lambda: clock.first_token(prefill.cache),
        )
    text = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop_strings)
    return GenerationOutput(text=text, new_token_ids=tuple(ids), num_new_tokens=len(ids)), prefill
