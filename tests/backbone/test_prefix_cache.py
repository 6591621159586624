"""Prefix reuse on tiny random checkpoints: the shared cache is never left changed, positions and masks are those of a
whole-prompt forward, a changed prefix is computed again, and bad inputs are refused naming the value."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.prefix_cache import PrefixCache, crop_to, prefill_prefix, supports_prefix_reuse
from lrs_plugin.errors import ConfigError

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]
ATTN = ["sdpa", "eager"]
QUESTIONS = (
    "What color is the largest building?",
    "How many ships are docked in the harbor?\nAnswer the question using a single word or phrase.",
)


@pytest.fixture(scope="module")
def load(make_tiny_checkpoint):
    """``load(variant, attn) -> Backbone`` (float32), each loaded once per module."""
    loaded: dict[tuple, Backbone] = {}

    def get(variant: tuple[str, str], attn: str = "sdpa") -> Backbone:
        if (variant, attn) not in loaded:
            loaded[(variant, attn)] = Backbone.from_pretrained(
                make_tiny_checkpoint(*variant), dtype="float32", attn_implementation=attn
            )
        return loaded[(variant, attn)]

    return get


@pytest.fixture(scope="module")
def image(make_image) -> Image.Image:
    return make_image(90, 130)


def _inputs(bb: Backbone, image: Image.Image, question: str) -> tuple[torch.Tensor, int]:
    """``(inputs_embeds [1, L, C], P)``: the whole prompt and the length of its question-independent prefix."""
    embeds, span = bb.assemble(*_split(bb, question, image))
    return embeds, span.stop


def _split(bb: Backbone, question: str, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prefix, suffix = bb.split_prompt(question)
    return prefix, bb.plain_vision_embeds(image), suffix


def _snapshot(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


class _LayerInputs:
    """Position ids and attention mask handed to decoder layer 0 at every call (prefill chunks and decode steps)."""

    def __init__(self, bb: Backbone) -> None:
        self.calls: list[tuple[torch.Tensor, Any]] = []

        def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            mask = kwargs.get("attention_mask")
            self.calls.append((kwargs["position_ids"].clone(), None if mask is None else mask.clone()))

        self.handle = bb.language_model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)

    def positions(self) -> list[int]:
        return [int(p) for ids, _ in self.calls for p in ids.flatten()]


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(v))
def test_positions_and_masks_are_those_of_a_whole_prompt_forward(load, image, variant, attn):
    bb = load(variant, attn)
    embeds, p = _inputs(bb, image, QUESTIONS[0])
    length = int(embeds.shape[1])
    whole = _LayerInputs(bb)
    try:
        ref = bb.generate(embeds, max_new_tokens=5)
    finally:
        whole.handle.remove()
    cache = PrefixCache(bb)
    with cache.extend(embeds, p) as hit:  # computes the prefix: one forward over positions 0 .. P-1
        pass
    split = _LayerInputs(bb)
    try:
        with cache.extend(embeds, p) as hit:
            out = bb.generate(embeds, max_new_tokens=5, cache=hit.cache)
    finally:
        split.handle.remove()
    assert hit.reused and out.new_token_ids == ref.new_token_ids
    n_new = ref.num_new_tokens
    # RoPE positions: the whole prompt 0 .. L-1 then L, L+1, ...; with reuse the question starts at P.
    assert whole.positions() == list(range(length + n_new - 1))
    assert split.positions() == list(range(p, length + n_new - 1))
    assert [int(ids.shape[-1]) for ids, _ in split.calls] == [length - p] + [1] * (n_new - 1)
    # Masks: the question's rows are the whole prompt's causal rows P .. L-1 (SDPA's whole prompt runs causal with no
    # mask: tril); each decode step sees every earlier position.
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    assert torch.equal(_allowed(whole.calls[0][1], causal), causal)
    assert torch.equal(_allowed(split.calls[0][1], causal[p:]), causal[p:])
    for step, ((_, a), (_, b)) in enumerate(zip(whole.calls[1:], split.calls[1:], strict=True)):
        row = torch.ones(1, length + step + 1, dtype=torch.bool)
        assert torch.equal(_allowed(a, row), row) and torch.equal(_allowed(b, row), row)


def _allowed(mask: Any, default: torch.Tensor) -> torch.Tensor:
    """``[q, k]`` bool: which keys each query may see (``mask`` boolean or additive ``[1, 1, q, k]``; ``None``:
    ``default``, what the kernel does without one)."""
    if mask is None:
        return default
    mask = mask[0, 0]
    return mask if mask.dtype == torch.bool else mask == 0


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(v))
def test_each_question_extends_the_shared_prefix_and_leaves_it_bit_for_bit(load, image, variant):
    bb = load(variant)
    cache = PrefixCache(bb)
    answers = []
    before = None
    for question in QUESTIONS + QUESTIONS:
        embeds, p = _inputs(bb, image, question)
        with cache.extend(embeds, p) as hit:
            if before is None:
                before = _snapshot(hit.cache)
            else:
                assert hit.reused and hit.length == p == cache.length
            assert hit.cache.get_seq_length() == p
            answers.append(bb.generate(embeds, max_new_tokens=4, cache=hit.cache).new_token_ids)
            assert hit.cache.get_seq_length() > p  # generate extended it
        after = _snapshot(hit.cache)
        assert all(
            torch.equal(k0, k1) and torch.equal(v0, v1) for (k0, v0), (k1, v1) in zip(before, after, strict=True)
        )
    fresh = [bb.generate(_inputs(bb, image, q)[0], max_new_tokens=4).new_token_ids for q in QUESTIONS]
    assert answers == fresh + fresh


def test_a_failure_inside_the_block_leaves_the_prefix_as_it_was(load, image):
    bb = load(VARIANTS[1])
    cache = PrefixCache(bb)
    embeds, p = _inputs(bb, image, QUESTIONS[0])
    with pytest.raises(RuntimeError, match="boom"), cache.extend(embeds, p) as hit:
        before = _snapshot(hit.cache)
        k, v = hit.cache.layers[0].keys, hit.cache.layers[0].values
        hit.cache.layers[0].update(torch.randn_like(k[..., :3, :]), torch.randn_like(v[..., :3, :]))  # a half-done step
        raise RuntimeError("boom")
    with cache.extend(embeds, p) as hit:
        assert hit.reused and hit.cache.get_seq_length() == p
        assert all(
            torch.equal(a, b)
            for pair in zip(before, _snapshot(hit.cache), strict=True)
            for a, b in zip(*pair, strict=True)
        )


def test_another_prefix_is_computed_again_and_replaces_the_kept_one(load, image, make_image):
    bb = load(VARIANTS[0])
    cache = PrefixCache(bb)
    embeds, p = _inputs(bb, image, QUESTIONS[0])
    with cache.extend(embeds, p) as first:
        assert not first.reused
    changed = embeds.clone()
    changed[0, p - 1, 0] += 1e-3  # one value of the last image token
    with cache.extend(changed, p) as hit:
        assert not hit.reused
    other, q = _inputs(bb, make_image(90, 130, seed=1), QUESTIONS[0])
    with cache.extend(other, q) as hit:
        assert not hit.reused
    with cache.extend(other, q) as hit:
        assert hit.reused
    cache.clear()
    assert cache.length == 0
    with cache.extend(other, q) as hit:
        assert not hit.reused


def test_prefill_prefix_and_crop_to(load, image):
    bb = load(VARIANTS[0])
    embeds, p = _inputs(bb, image, QUESTIONS[0])
    cache = prefill_prefix(bb.language_model, embeds[:, :p])
    assert cache.get_seq_length() == p and len(cache.layers) == bb.num_layers
    assert crop_to(cache, p)  # nothing to crop
    assert not crop_to(cache, p + 1)  # cannot grow: the caller must drop it


@pytest.mark.parametrize(
    ("prefix_len", "message"),
    [(0, r"prefix_len=0 must be an int in \[1, "), (10_000, r"prefix_len=10000 must be"), (2.0, r"prefix_len=2.0")],
)
def test_a_bad_prefix_length_is_refused_naming_it(load, image, prefix_len, message):
    bb = load(VARIANTS[0])
    embeds, _ = _inputs(bb, image, QUESTIONS[0])
    with pytest.raises(ConfigError, match=message), PrefixCache(bb).extend(embeds, prefix_len):
        pass


def test_bad_embeddings_and_a_cache_as_long_as_the_prompt_are_refused(load, image):
    bb = load(VARIANTS[0])
    embeds, p = _inputs(bb, image, QUESTIONS[0])
    with pytest.raises(ConfigError, match=r"inputs_embeds must be \[1, L, C\]; got \[2, "):
        with PrefixCache(bb).extend(embeds.expand(2, -1, -1), p):
            pass
    whole = prefill_prefix(bb.language_model, embeds)
    with pytest.raises(ConfigError, match=rf"cache holds {embeds.shape[1]} positions; it must hold a prefix"):
        bb.generate(embeds, max_new_tokens=2, cache=whole)


def test_sliding_window_decoders_are_refused(load):
    bb = load(VARIANTS[1])
    config = bb.language_model.config
    assert supports_prefix_reuse(config)
    saved = getattr(config, "layer_types", None)
    try:
        config.layer_types = ["sliding_attention"] * bb.num_layers
        assert not supports_prefix_reuse(config)
        with pytest.raises(
            ConfigError, match=r"full-attention layers; this decoder has layer_types \['sliding_attention'"
        ):
            PrefixCache(bb)
    finally:
        config.layer_types = saved
