"""The language half of :class:`~lrs_plugin.backbone.adapter.Backbone`: prompt, LLM input, greedy generation.

The prompt as lmms-eval's ``llava_hf`` builds it (chat template, ``<image>`` placeholder, the released runners'
chunked tokenization), ``inputs_embeds`` assembled from prompt and vision tokens, one forward pass, and greedy
decoding with transformers' ``generate`` where the task's stop strings end generation (:mod:`.stops`).
:class:`LanguageMixin` is mixed into ``Backbone`` and reads its ``model``, ``tokenizer`` and dimensions; it holds no
state of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from lrs_plugin.harness.costs import StageClock

__all__ = ["IMAGE_TOKEN", "VICUNA_CHAT_TEMPLATE", "GenerationOutput", "LanguageMixin"]

IMAGE_TOKEN = "<image>"
"""Image placeholder in prompts, as lmms-eval's ``llava_hf`` writes it."""

# lmms-eval 0.7.3 ``models/simple/llava_hf.py``: the template it installs when the tokenizer has none.
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.index0 == 0 %}A chat between a curious user and an artificial "
    "intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. "
    "USER: {{ message['content'] }} {% elif message['role'] == 'user' %}USER: {{ message['content'] }} {% else %} "
    "ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class GenerationOutput:
    """One greedy answer.

    Attributes:
        text: Decoded new tokens (special tokens skipped), cut before the first stop string if any, stripped.
        new_token_ids: Generated token ids, the EOS or the token completing a stop string included (none after it).
        num_new_tokens: ``len(new_token_ids)``.

    """

    text: str
    new_token_ids: tuple[int, ...]
    num_new_tokens: int


class LanguageMixin:
    """Prompt, assembly and generation methods of :class:`~lrs_plugin.backbone.adapter.Backbone`."""

    def build_prompt(self, question: str) -> str:
        r"""Return the chat-templated prompt for one image, built as lmms-eval's ``llava_hf`` builds it.

        ``<image>\n`` is prepended when the question has no placeholder; the message content is a plain string;
        the tokenizer's chat template is used, or ``llava_hf``'s Vicuna template when the tokenizer has none.

        Args:
            question: The question text (may contain one ``<image>``).

        Returns:
            The prompt, ending with the assistant header.

        """
        return self._chat_prompt(question if IMAGE_TOKEN in question else f"{IMAGE_TOKEN}\n{question}")

    def _chat_prompt(self, content: str) -> str:
        """One user turn in the tokenizer's chat template (``llava_hf``'s Vicuna template when it has none)."""
        template = self.tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=template, tokenize=False, add_generation_prompt=True
        )

    def text_prompt_ids(self, question: str) -> torch.Tensor:
        """Token ids of the prompt for a request without an image, built as ``llava_hf`` builds it for text-only docs.

        The same chat template as :meth:`build_prompt`, with no ``<image>`` line added; a placeholder written in the
        question itself is removed (there is no image to put there).

        Args:
            question: The question text.

        Returns:
            ``[L]`` LongTensor on the CPU, with no image token.
        """
        import torch

        text = self._chat_prompt(question.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, ""))
        return self.tokenizer(text, return_tensors="pt")["input_ids"][0].to(torch.long)

    def split_prompt(self, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize the prompt of :meth:`build_prompt` in two chunks around the image placeholder.

        The released runners' rule (:mod:`lrs_plugin.backbone.prompt`): equal to tokenizing the whole prompt on
        byte-level BPE tokenizers, and the ids the released model saw on SentencePiece ones whatever their ``legacy``
        setting.

        Args:
            question: The question text (at most one ``<image>``).

        Returns:
            ``(prefix_ids [P], suffix_ids [Q])`` LongTensors on the CPU: the tokens before and after the single
            ``<image>`` token (BOS, if the tokenizer adds one, is in the prefix).

        Raises:
            ConfigError: the prompt does not hold exactly one image placeholder.

        """
        import torch

        from lrs_plugin.backbone.prompt import chunked_image_ids

        prefix, suffix = chunked_image_ids(self.tokenizer, self.build_prompt(question), IMAGE_TOKEN)
        return torch.tensor(prefix, dtype=torch.long), torch.tensor(suffix, dtype=torch.long)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of the language model.

        Args:
            ids: ``[L]`` token ids.

        Returns:
            ``[L, C]`` on the model device.

        """
        import torch

        with torch.no_grad():
            return self.language_model.get_input_embeddings()(ids.to(self.device))

    def assemble(
        self, prefix_ids: torch.Tensor, vision_embeds: torch.Tensor, suffix_ids: torch.Tensor
    ) -> tuple[torch.Tensor, slice]:
        """Build the LLM input: prefix tokens, vision tokens, suffix tokens.

        Args:
            prefix_ids: ``[P]`` token ids before the image.
            vision_embeds: ``[N, C]`` vision tokens (cast to the embedding dtype, as transformers does).
            suffix_ids: ``[Q]`` token ids after the image.

        Returns:
            ``(inputs_embeds [1, P + N + Q, C], image_span)`` where ``image_span = slice(P, P + N)``.

        Raises:
            ConfigError: ``vision_embeds`` is not ``[N, C]`` with ``C`` the text hidden size.

        """
        import torch

        if vision_embeds.ndim != 2 or vision_embeds.shape[-1] != self.hidden_size:
            raise ConfigError(
                f"vision_embeds must be [N, {self.hidden_size}] (text hidden size); got {list(vision_embeds.shape)}"
            )
        prefix = self.embed_ids(prefix_ids)
        suffix = self.embed_ids(suffix_ids)
        vision = vision_embeds.to(prefix.device, prefix.dtype)
        span = slice(prefix.shape[0], prefix.shape[0] + vision.shape[0])
        return torch.cat([prefix, vision, suffix], dim=0).unsqueeze(0), span

    # --------------------------------------------------------------------------------------------- language
    def logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """One full forward pass of the language model and head.

        Args:
            inputs_embeds: ``[1, L, C]``.

        Returns:
            ``[1, L, vocab]`` logits.

        """
        import torch

        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        with torch.no_grad():
            return self.model(inputs_embeds=inputs_embeds, attention_mask=mask).logits

    def _default_eos_ids(self) -> list[int]:
        """``[tokenizer.eos_token_id]`` as ``llava_hf`` passes it; the generation config's EOS ids if it has none."""
        if self.tokenizer.eos_token_id is not None:
            return [int(self.tokenizer.eos_token_id)]
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            raise ConfigError(
                "neither the tokenizer nor the generation config defines an EOS token; pass eos_token_ids"
            )
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def generate(
        self,
        inputs_embeds: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_ids: list[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        cache: Any = None,
        clock: StageClock | None = None,
    ) -> GenerationOutput:
        """Greedy decoding from ``inputs_embeds`` with transformers' ``generate`` and its KV cache.

        Args:
            inputs_embeds: ``[1, L, C]``, e.g. from :meth:`assemble`.
            max_new_tokens: Upper bound on generated tokens.
            eos_token_ids: Stop ids; default ``[tokenizer.eos_token_id]`` (what ``llava_hf`` passes), else the
                generation config's EOS ids.
            stop_strings: Strings that end generation (the task's ``until``): ``generate`` stops after the token with
                which the answer first contains one, and the text is cut before it (:mod:`lrs_plugin.backbone.stops`).
            cache: A :class:`~transformers.DynamicCache` already holding the keys / values of the first ``P < L``
                positions of ``inputs_embeds`` (:class:`~lrs_plugin.backbone.prefix_cache.PrefixCache`): only
                positions ``P ..`` are computed, at RoPE positions ``P ..`` under an all-ones mask of length ``L``, and
                the cache is extended in place. ``None``: a fresh cache, the whole prompt computed.
            clock: Times the prefill (up to the first token) and the decoding, and measures the KV cache at the end of
                the prefill (:func:`lrs_plugin.harness.costs.measured_generation`); the tokens are the same.

        Returns:
            The decoded answer and the generated ids.

        Raises:
            ConfigError: ``max_new_tokens < 1``, a batch size other than 1, or a ``cache`` not shorter than the
                prompt.

        """
        import torch

        from lrs_plugin.backbone.stops import cut_at_stop, stopping_criteria
        from lrs_plugin.harness.costs import measured_generation

        if int(max_new_tokens) < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be >= 1")
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[0] != 1:
            raise ConfigError(f"inputs_embeds must be [1, L, C]; got {list(inputs_embeds.shape)}")
        eos = list(eos_token_ids) if eos_token_ids else self._default_eos_ids()
        kwargs: dict[str, Any] = {}
        if cache is not None:
            if not 0 < cache.get_seq_length() < inputs_embeds.shape[1]:
                raise ConfigError(
                    f"cache holds {cache.get_seq_length()} positions; it must hold a prefix of the "
                    f"{inputs_embeds.shape[1]}-position prompt (at least one position left to compute)"
                )
        criteria = stopping_criteria(self.tokenizer, stop_strings)
        if criteria is not None:
            kwargs["stopping_criteria"] = criteria
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        with torch.no_grad(), measured_generation(clock, self.model, cache) as timing:
            out = self.model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=mask,
                do_sample=False,
                num_beams=1,
                max_new_tokens=int(max_new_tokens),
                eos_token_id=eos,
                pad_token_id=eos[0],
                **kwargs,
                **timing,
            )
        new_ids = tuple(int(t) for t in out[0].tolist())
        text = cut_at_stop(self.tokenizer.decode(list(new_ids), skip_special_tokens=True), stop_strings)
        return GenerationOutput(text=text, new_token_ids=new_ids, num_new_tokens=len(new_ids))
