"""Prefix reuse: the KV cache of a question-independent prompt prefix, computed once and extended per question.

LRS-VQA asks several questions about each image. For a reducer whose vision tokens do not depend on the question,
the LLM input of every question on an image starts with the same tokens: the chat template's system text and
``USER:`` header, then the image tokens (``prefix_ids`` + vision of :meth:`Backbone.assemble
<lrs_plugin.backbone.language.LanguageMixin.assemble>`). :class:`PrefixCache` runs the decoder over that prefix
once, keeps its per-layer keys and values in a transformers :class:`~transformers.DynamicCache`, and hands it to
``generate`` for each question, which computes only the question's tokens and the answer on top of it.

The shared cache is never left changed: ``DynamicCache`` grows a layer by concatenation (new tensors; the prefix
positions are copied bit for bit), and after each question every layer is cropped back to the prefix length
(:func:`crop_to`), which restores exactly what was there. If that cannot be done the prefix is dropped and computed
again for the next question. One prefix is kept at a time (questions come grouped by image).

A hit is decided by content, not by name: the new prefix embeddings must equal the kept ones exactly
(``torch.equal``), so a reducer whose tokens changed, another image, or another prompt template never reuses a stale
cache. Positions and masks are those of a whole-prompt forward: the prefix runs at positions ``0 .. P-1`` with the
causal mask; ``generate`` continues at ``P`` with an all-ones attention mask over the whole prompt (batch size 1, no
padding). The numbers are those of a split prefill (same keys, values and positions; floating-point rounding may
differ in the last bits, as with any change of kernel shapes).

Only full-attention decoders qualify (:func:`supports_prefix_reuse`): a sliding-window layer forgets the prefix it
would have to be cropped back to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.harness.costs import StageClock

__all__ = ["PrefixCache", "PrefixHit", "crop_to", "prefill_prefix", "supports_prefix_reuse"]


def supports_prefix_reuse(text_config: Any) -> bool:
    """Whether every decoder layer of ``text_config`` is full attention (its cache can be cropped back exactly)."""
    types = getattr(text_config, "layer_types", None)
    return not types or all(t == "full_attention" for t in types)


def prefill_prefix(lm: Any, prefix_embeds: torch.Tensor) -> Any:
    """Run the decoder over a prompt prefix and return its filled cache.

    Args:
        lm: The decoder (``LlamaModel`` / ``Qwen2Model``), as :attr:`Backbone.language_model` gives it.
        prefix_embeds: ``[1, P, C]`` embeddings of the prefix, at positions ``0 .. P-1`` (causal, no padding).

    Returns:
        A :class:`~transformers.DynamicCache` holding ``P`` keys / values per layer.
    """
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.config)
    with torch.no_grad():
        lm(inputs_embeds=prefix_embeds, cache=cache, use_cache=True)
    return cache


def crop_to(cache: Any, length: int) -> bool:
    """Crop every layer of ``cache`` back to its first ``length`` positions; ``True`` when all now hold exactly that.

    A layer that holds fewer positions (a failure mid-forward cannot shrink one, but a foreign cache might) makes the
    result ``False``: the caller must not reuse that cache.
    """
    ok = True
    for layer in cache.layers:
        extra = layer.get_seq_length() - length
        if extra > 0:
            layer.crop(-extra)
        ok = ok and layer.get_seq_length() == length
    return ok


@dataclass(frozen=True)
class PrefixHit:
    """The cache a question extends, and whether it was reused.

    Attributes:
        cache: A :class:`~transformers.DynamicCache` holding the prefix; pass it to ``generate`` (which extends it).
        length: Prefix positions it holds when handed out (``P``).
        reused: ``True`` when the prefix was computed for an earlier question; ``False`` when computed now.
    """

    cache: Any
    length: int
    reused: bool


class PrefixCache:
    """The KV cache of the last prompt prefix, for the next question that starts with the same embeddings.

    Args:
        backbone: The loaded backbone whose decoder computes the prefix.

    Raises:
        ConfigError: the decoder has sliding-window layers (:func:`supports_prefix_reuse`).
    """

    def __init__(self, backbone: Backbone) -> None:
        lm = backbone.language_model
        if not supports_prefix_reuse(lm.config):
            raise ConfigError(
                f"prefix reuse needs full-attention layers; this decoder has layer_types {lm.config.layer_types!r} "
                "(set reuse=false)"
            )
        self.backbone = backbone
        self._embeds: torch.Tensor | None = None
        self._cache: Any = None

    @contextlib.contextmanager
    def extend(
        self, inputs_embeds: torch.Tensor, prefix_len: int, clock: StageClock | None = None
    ) -> Iterator[PrefixHit]:
        """The cache of ``inputs_embeds[:, :prefix_len]``, computed now or reused, for one question's generation.

        The block extends the cache (``generate(inputs_embeds, cache=hit.cache)`` computes positions ``prefix_len``
        on); when it ends, however it ends, the cache is cropped back to the prefix.

        Args:
            inputs_embeds: ``[1, L, C]`` the question's whole LLM input.
            prefix_len: Leading positions that do not depend on the question, ``1 <= prefix_len < L``.
            clock: Charges computing the prefix (a miss) to its ``llm_prefill`` stage.

        Yields:
            The :class:`PrefixHit`.

        Raises:
            ConfigError: ``inputs_embeds`` is not ``[1, L, C]`` or ``prefix_len`` is outside ``[1, L - 1]``.
        """
        import torch

        if inputs_embeds.ndim != 3 or inputs_embeds.shape[0] != 1:
            raise ConfigError(f"inputs_embeds must be [1, L, C]; got {list(inputs_embeds.shape)}")
        length = int(inputs_embeds.shape[1])
        if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or not 1 <= prefix_len < length:
            raise ConfigError(f"prefix_len={prefix_len!r} must be an int in [1, {length - 1}] (L={length})")
        prefix = inputs_embeds[:, :prefix_len]
        reused = (
            self._embeds is not None
            and self._embeds.shape == prefix.shape
            and self._embeds.device == prefix.device
            and torch.equal(self._embeds, prefix)
        )
        if not reused:
            self.clear()  # release the previous prefix before computing the next one
            with contextlib.nullcontext() if clock is None else clock.stage("llm_prefill"):
                self._cache = prefill_prefix(self.backbone.language_model, prefix)
            self._embeds = prefix.detach().clone()
        try:
            yield PrefixHit(cache=self._cache, length=prefix_len, reused=reused)
        finally:
            if self._cache is not None and not crop_to(self._cache, prefix_len):
                self.clear()

    @property
    def length(self) -> int:
        """Positions of the kept prefix (``0`` when none is kept)."""
        return 0 if self._embeds is None else int(self._embeds.shape[1])

    def clear(self) -> None:
        """Forget the kept prefix and its cache."""
        self._embeds = None
        self._cache = None
