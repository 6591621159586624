"""Prompt tokenization around the image placeholder, as the released LLaVA / LRS-VQA runners do it.

The released runners never tokenize ``<image>`` as a token: ``tokenizer_image_token`` (``llava/mm_utils.py``) splits
the prompt text at each ``<image>``, tokenizes every chunk on its own (with the tokenizer's special tokens, so each
chunk gets a BOS when the tokenizer adds one), keeps the BOS of the first chunk only and puts the image index
between the chunks. Tokenizing the whole prompt with ``<image>`` as a special token is not the same on SentencePiece
tokenizers loaded with ``legacy=False``: they add no ``▁`` after a special token, while a chunk tokenized on its own
starts with one, so the whole-prompt ids are one token short after the image and every later position shifts. The
chunked rule below gives the released ids whatever the ``legacy`` setting; on byte-level BPE tokenizers (which split
the text at special tokens before anything else) both ways agree.
"""

from __future__ import annotations

from typing import Any

from lrs_plugin.errors import ConfigError

__all__ = ["chunked_image_ids"]


def chunked_image_ids(tokenizer: Any, prompt: str, image_token: str = "<image>") -> tuple[list[int], list[int]]:
    """Ids before and after the one ``image_token`` of ``prompt``, each side tokenized as its own chunk.

    Args:
        tokenizer: A transformers tokenizer (called with its default ``add_special_tokens=True``).
        prompt: The full prompt text, holding ``image_token`` exactly once.
        image_token: The placeholder text.

    Returns:
        ``(prefix_ids, suffix_ids)``: the first chunk's ids (with its BOS, if any), and the second chunk's ids
        without the BOS the tokenizer put at its start (when the first chunk starts with BOS, as released).

    Raises:
        ConfigError: the prompt does not hold exactly one placeholder.
    """
    chunks = prompt.split(image_token)
    if len(chunks) != 2:
        raise ConfigError(f"the prompt must hold exactly one {image_token}; found {len(chunks) - 1}")
    first, second = (list(tokenizer(chunk)["input_ids"]) for chunk in chunks)
    bos = getattr(tokenizer, "bos_token_id", None)
    offset = 1 if first and bos is not None and first[0] == bos else 0
    return first, second[offset:]
