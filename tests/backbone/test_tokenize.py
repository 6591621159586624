"""Prompt ids around ``<image>`` equal the released chunked tokenization, on SentencePiece tokenizers with either
``legacy`` setting and on the tiny checkpoints' byte-level BPE tokenizers."""

from __future__ import annotations

import json

import pytest

from lrs_plugin.backbone.adapter import VICUNA_CHAT_TEMPLATE
from lrs_plugin.backbone.prompt import chunked_image_ids
from lrs_plugin.errors import ConfigError

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What color is the largest building? ASSISTANT: red",
    "How many ships are docked in the harbor? Answer the question using a single word or phrase.",
    "(A) yes (B) no. Is the image rural or urban?",
]
QUESTIONS = [
    "<image>\nWhat color is the largest building?",
    "How many ships? <image> Answer with one word.",
    "<image>\n(A) yes (B) no\n  Is it urban?",
    "<image>\n?! leading punctuation",
]


def released_ids(tokenizer, prompt: str, image_index: int) -> list[int]:
    """Restatement of the released ``tokenizer_image_token`` (llava/mm_utils.py): chunks tokenized one by one, the
    first chunk's BOS kept once, the image index between chunks."""
    chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
    out, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        out.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i:
            out.append(image_index)
        out.extend(chunk[offset:])
    return out


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    sentencepiece = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("spm")
    (folder / "corpus.txt").write_text("\n".join(CORPUS * 40))
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "m"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    return folder


def _llama_tokenizer(spm_dir, legacy: bool, use_fast: bool):
    from transformers import AutoTokenizer

    folder = spm_dir / f"tok-{legacy}-{use_fast}"
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.model").write_bytes((spm_dir / "m.model").read_bytes())
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": legacy, "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "add_bos_token": True}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(folder, use_fast=use_fast)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = VICUNA_CHAT_TEMPLATE
    return tok


def _prompt(tok, question: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("use_fast", [True, False], ids=["fast", "slow"])
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "non-legacy"])
def test_sentencepiece_ids_equal_the_released_chunked_tokenization(spm_dir, legacy, use_fast):
    tok = _llama_tokenizer(spm_dir, legacy, use_fast)
    image = tok.convert_tokens_to_ids("<image>")
    whole_differs = False
    for question in QUESTIONS:
        prompt = _prompt(tok, question)
        prefix, suffix = chunked_image_ids(tok, prompt)
        assert prefix + [image] + suffix == released_ids(tok, prompt, image), (legacy, question)
        whole_differs |= tok(prompt).input_ids != prefix + [image] + suffix
    # The bug this rule fixes is real on this tokenizer: whole-prompt ids drop the "▁" after <image> without legacy.
    assert whole_differs == (not legacy)


def test_backbone_split_prompt_uses_the_chunked_rule(tiny_backbones):
    for bb in tiny_backbones.values():
        image = bb.config.image_token_id
        for question in QUESTIONS:
            prefix, suffix = bb.split_prompt(question)
            prompt = bb.build_prompt(question)
            assert prefix.tolist() + [image] + suffix.tolist() == released_ids(bb.tokenizer, prompt, image)
            # byte-level BPE: the whole-prompt tokenization (what llava_hf's processor does) is the same
            assert bb.tokenizer(prompt).input_ids == prefix.tolist() + [image] + suffix.tolist()


def test_exactly_one_placeholder_is_required(tiny_backbones):
    bb = next(iter(tiny_backbones.values()))
    with pytest.raises(ConfigError, match="exactly one <image>; found 2"):
        chunked_image_ids(bb.tokenizer, "a <image> b <image> c")
    with pytest.raises(ConfigError, match="found 0"):
        chunked_image_ids(bb.tokenizer, "no image here")
