"""In-LLM reducers (FastV, PyramidDrop): cached pruned generation against a slow from-scratch reference.

The reference shares nothing with :mod:`lrs_plugin.reducers._prefill` but the model's modules: at every decoding
step it reruns the whole pruned forward without a cache (explicit additive causal mask, positions rebuilt from each
method's convention), ranks image tokens from a full explicit attention matrix at the first step, and reuses that
dropped set afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.errors import ConfigError
from lrs_plugin.focus.attention import attention_dims
from lrs_plugin.reducers._prefill import (
    DropStage,
    check_stages,
    equivalent_tokens,
    generate_pruned,
    pruned_prefill,
    select_top,
)
from lrs_plugin.reducers.fastv import fastv_equivalent_tokens, fastv_keep, solve_fastv_keep
from lrs_plugin.reducers.pdrop import (
    parse_layer_list,
    pdrop_equivalent_tokens,
    pdrop_keeps,
    quarter_layers,
    solve_pdrop_lambda,
)
from lrs_plugin.reducers.registry import available_reducers, build_reducer, reducer_spec

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]
IDS = [f"{a}+{lm}" for a, lm in VARIANTS]
LAYERS = 8  # quarter points [2, 4, 6]; FastV K=2
QUESTION = "What color is the largest building?"
NEW_TOKENS = 10


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def checkpoints(make_tiny_checkpoint) -> dict[tuple[str, str], Path]:
    return {v: make_tiny_checkpoint(*v, text_layers=LAYERS) for v in VARIANTS}


@pytest.fixture(scope="module")
def backbones(checkpoints) -> dict[tuple[str, str, str], Backbone]:
    return {
        (*v, attn): Backbone.from_pretrained(path, dtype="float32", attn_implementation=attn)
        for v, path in checkpoints.items()
        for attn in ("sdpa", "eager")
    }


@pytest.fixture(scope="module")
def image_path(make_image_file) -> str:
    return str(make_image_file(120, 200))


def _split(backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    return backbone.split_prompt(QUESTION)


def _embeds(backbone: Backbone, image_path: str) -> tuple[torch.Tensor, slice]:
    prefix, suffix = _split(backbone)
    vision = backbone.plain_vision_embeds(Image.open(image_path).convert("RGB"))
    return backbone.assemble(prefix, vision, suffix)


# ---------------------------------------------------------------------------------------- slow reference
def _rope(layer: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return sys.modules[type(layer).__module__].apply_rotary_pos_emb(x, x, cos, sin)[0]


def _additive_causal(m: int, dtype: torch.dtype) -> torch.Tensor:
    upper = torch.ones(m, m, dtype=torch.bool).triu(1)
    return torch.zeros(m, m, dtype=dtype).masked_fill(upper, torch.finfo(dtype).min)[None, None]


def _reference_rank(lm, layer, hidden, pos, image: slice, keep: int) -> torch.Tensor:
    """Full explicit attention matrix of ``layer`` on ``hidden``; last row, mean over heads, image columns, top-k."""
    heads, kv_heads, head_dim = attention_dims(lm.config)
    m = hidden.shape[1]
    x = layer.input_layernorm(hidden)
    q = layer.self_attn.q_proj(x).view(1, m, heads, head_dim).transpose(1, 2)
    k = layer.self_attn.k_proj(x).view(1, m, kv_heads, head_dim).transpose(1, 2)
    cos, sin = lm.rotary_emb(hidden, position_ids=pos[None])
    q, k = _rope(layer, q, cos, sin), _rope(layer, k, cos, sin).repeat_interleave(heads // kv_heads, dim=1)
    logits = q @ k.transpose(-1, -2) * head_dim**-0.5 + _additive_causal(m, q.dtype)
    row = torch.softmax(logits.float(), dim=-1)[0, :, -1].mean(0)[image]
    return torch.sort(torch.topk(row, keep).indices).values


def _prompt_rows(n: int, span: slice, stages, kept: list[torch.Tensor], layer: int) -> torch.Tensor:
    """Prompt indices entering ``layer``: text always, image tokens of the last stage dropped before it."""
    image = torch.arange(span.start, span.stop)
    for stage, rows in zip(stages, kept, strict=False):
        if stage.drop_before <= layer:
            image = rows
    return torch.cat([torch.arange(span.start), image, torch.arange(span.stop, n)])


def _positions(rows: torch.Tensor, convention: str) -> torch.Tensor:
    return rows.clone() if convention == "original" else torch.arange(rows.numel())


def reference_kept(backbone, embeds, span, stages, convention) -> list[torch.Tensor]:
    """Kept image indices per stage, from full explicit attention matrices (no cache, no one-row shortcut)."""
    lm, n = backbone.language_model, embeds.shape[1]
    kept: list[torch.Tensor] = []
    pending: dict[int, torch.Tensor] = {}
    hidden, rows = embeds, torch.arange(n)
    with torch.no_grad():
        for i, layer in enumerate(lm.layers):
            for s, stage in enumerate(stages):
                image = rows[(rows >= span.start) & (rows < span.stop)]
                local = slice(span.start, span.start + image.numel())
                if stage.score_layer == i:
                    pending[s] = image[
                        _reference_rank(lm, layer, hidden, _positions(rows, convention), local, stage.keep)
                    ]
                if stage.drop_before == i:
                    kept.append(pending.pop(s))
                    new_rows = _prompt_rows(n, span, stages, kept, i)
                    hidden, rows = hidden[:, torch.searchsorted(rows, new_rows)], new_rows
            rope = lm.rotary_emb(hidden, position_ids=_positions(rows, convention)[None])
            hidden = layer(
                hidden, attention_mask=_additive_causal(rows.numel(), hidden.dtype), position_embeddings=rope
            )
    return kept


def reference_next_token(backbone, embeds, span, stages, kept, convention, ids: list[int]) -> int:
    """Argmax after rerunning the whole pruned forward over prompt + ``ids`` from scratch (no cache)."""
    lm, n = backbone.language_model, embeds.shape[1]
    gen = torch.arange(n, n + len(ids))
    final_len = _prompt_rows(n, span, stages, kept, len(lm.layers)).numel()
    gen_pos = torch.arange(len(ids)) + (n if convention == "original" else final_len)
    with torch.no_grad():
        extra = lm.get_input_embeddings()(torch.tensor([ids], dtype=torch.long)) if ids else embeds[:, :0]
        hidden, rows = torch.cat([embeds, extra], dim=1), torch.arange(n + len(ids))
        for i, layer in enumerate(lm.layers):
            prompt = _prompt_rows(n, span, stages, kept, i)
            new_rows = torch.cat([prompt, gen])
            hidden, rows = hidden[:, torch.searchsorted(rows, new_rows)], new_rows
            pos = torch.cat([_positions(prompt, convention), gen_pos])
            rope = lm.rotary_emb(hidden, position_ids=pos[None])
            hidden = layer(
                hidden, attention_mask=_additive_causal(rows.numel(), hidden.dtype), position_embeddings=rope
            )
        return int(backbone.lm_head(lm.norm(hidden)[:, -1]).argmax(-1)[0])


def reference_generate(
    backbone, embeds, span, stages, convention, max_new: int
) -> tuple[list[torch.Tensor], list[int]]:
    """The slow reference: kept sets fixed at the first step, then ``max_new`` from-scratch greedy steps."""
    kept = reference_kept(backbone, embeds, span, stages, convention)
    ids: list[int] = []
    for _ in range(max_new):
        ids.append(reference_next_token(backbone, embeds, span, stages, kept, convention, ids))
    return kept, ids


# ----------------------------------------------------------------------------------- reference equality
CASES = [
    ("fastv", {}),
    ("fastv", {"k": 3, "r": 0.75}),
    ("pdrop", {}),
    ("pdrop", {"layer_list": "1-3-5", "lam": 0.6}),
]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_cached_generation_equals_slow_reference(backbones, image_path, variant, attn, name, options):
    backbone = backbones[(*variant, attn)]
    reducer = build_reducer(name, backbone, dict(options))
    embeds, span = _embeds(backbone, image_path)
    n_img = span.stop - span.start
    stages, _ = reducer.schedule(n_img)
    assert stages and stages[-1].keep < n_img  # something is really dropped
    out, prefill = generate_pruned(
        backbone, embeds, span, stages, positions=reducer.positions, max_new_tokens=NEW_TOKENS, eos_token_ids=[-1]
    )
    kept, ids = reference_generate(backbone, embeds, span, stages, reducer.positions, NEW_TOKENS)
    assert [k.tolist() for k in prefill.stage_kept] == [k.tolist() for k in kept]
    assert list(out.new_token_ids) == ids
    assert len(ids) == NEW_TOKENS
    expected_next = embeds.shape[1] if reducer.positions == "original" else prefill.kept_index.numel()
    assert prefill.next_position == expected_next


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_pruning_changes_the_computation(backbones, image_path, variant):
    """Guard against a reference that agrees trivially: kept sets differ between methods and from 'keep all'."""
    backbone = backbones[(*variant, "sdpa")]
    embeds, span = _embeds(backbone, image_path)
    n_img = span.stop - span.start
    stages = [DropStage(score_layer=1, drop_before=2, keep=n_img // 4)]
    pruned = pruned_prefill(backbone.language_model, embeds, span, stages, positions="original")
    full = pruned_prefill(backbone.language_model, embeds, span, [], positions="original")
    assert not torch.allclose(pruned.last_hidden[:, -1], full.last_hidden[:, -1])


# ------------------------------------------------------------------------------------------- keep all
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize(("name", "options"), [("fastv", {"r": 0.0}), ("pdrop", {"lam": 1.0})], ids=["fastv", "pdrop"])
def test_keep_everything_equals_none(backbones, image_path, variant, attn, name, options):
    backbone = backbones[(*variant, attn)]
    reducer = build_reducer(name, backbone, options)
    plain = build_reducer("none", backbone)
    full = plain.answer(image_path, QUESTION, doc={}, max_new_tokens=16).text
    stop = full.split()[1][:2]  # a stop string that really occurs mid-answer
    for stops in (None, [stop]):
        got = reducer.answer(image_path, QUESTION, doc={}, max_new_tokens=16, stop_strings=stops)
        want = plain.answer(image_path, QUESTION, doc={}, max_new_tokens=16, stop_strings=stops)
        assert got.text == want.text
        assert got.record.new_tokens == want.record.new_tokens
    assert len(got.text) < len(full)
    assert got.record.llm_tokens_per_layer == [want.record.llm_input_len] * LAYERS
    assert got.record.in_llm.equivalent_vision_tokens == want.record.vision_tokens_to_llm

    embeds, span = _embeds(backbone, image_path)
    stages, _ = reducer.schedule(span.stop - span.start)
    prefill = pruned_prefill(backbone.language_model, embeds, span, stages, positions=reducer.positions)
    logits = backbone.lm_head(prefill.last_hidden)
    torch.testing.assert_close(logits, backbone.logits(embeds), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------- stats, budget
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_stats_and_accounting(backbones, image_path, variant):
    from lrs_plugin.flops.accounting import ModelDims, sample_tflops

    backbone = backbones[(*variant, "sdpa")]
    for name in ("fastv", "pdrop"):
        assert reducer_spec(name).stage == "in_llm"
        out = build_reducer(name, backbone).answer(image_path, QUESTION, doc={}, max_new_tokens=4)
        s = out.record
        n_img, n = s.vision_tokens_to_llm, s.llm_input_len
        assert len(s.llm_tokens_per_layer) == LAYERS == len(s.in_llm.vision_tokens_per_layer)
        assert s.llm_tokens_per_layer[0] == n and s.in_llm.vision_tokens_per_layer[0] == n_img
        assert [t - v for t, v in zip(s.llm_tokens_per_layer, s.in_llm.vision_tokens_per_layer, strict=True)] == [
            n - n_img
        ] * LAYERS
        assert s.in_llm.equivalent_vision_tokens == pytest.approx(sum(s.in_llm.vision_tokens_per_layer) / LAYERS)
        assert 0 < s.in_llm.equivalent_vision_tokens < n_img
        assert sample_tflops(s, ModelDims.from_config(backbone.config))["llm_prefill"] > 0
        for key in ("tiles_encoded", "vision_tokens_encoded", "new_tokens", "focus_passes"):
            assert key in s.to_dict()
    fastv = build_reducer("fastv", backbone).answer(image_path, QUESTION, doc={}, max_new_tokens=2).record
    assert fastv.in_llm.vision_tokens_per_layer[2:] == [fastv_keep(fastv.vision_tokens_to_llm, 0.5)] * (LAYERS - 2)
    pdrop = build_reducer("pdrop", backbone).answer(image_path, QUESTION, doc={}, max_new_tokens=2).record
    n_img = pdrop.vision_tokens_to_llm
    assert pdrop.in_llm.vision_tokens_per_layer == [n_img] * 2 + sum(([k] * 2 for k in pdrop_keeps(n_img, 0.5, 3)), [])
    # what the run did is what the FLOPs schedules count
    from lrs_plugin.flops.terms import fastv_tokens_per_layer, pdrop_tokens_per_layer

    assert fastv.in_llm.vision_tokens_per_layer == fastv_tokens_per_layer(fastv.vision_tokens_to_llm, LAYERS, 2, 0.5)
    assert pdrop.in_llm.vision_tokens_per_layer == pdrop_tokens_per_layer(n_img, LAYERS, [2, 4, 6], [0.5, 0.25, 0.125])


@pytest.mark.parametrize("name", ["fastv", "pdrop"])
def test_budget_is_respected(backbones, image_path, name):
    backbone = backbones[("llava_next", "qwen2", "sdpa")]
    for budget in (40, 25.5, 20):
        s = (
            build_reducer(name, backbone, {"budget": budget})
            .answer(image_path, QUESTION, doc={}, max_new_tokens=2)
            .record
        )
        assert s.budget_met and s.in_llm.equivalent_vision_tokens <= budget
        assert s.in_llm.equivalent_vision_tokens > budget - s.vision_tokens_to_llm / 2  # solved, not just minimal
    # Out of reach (the first layers see every token): the minimum is used and flagged.
    s = build_reducer(name, backbone, {"budget": 1}).answer(image_path, QUESTION, doc={}, max_new_tokens=2).record
    assert not s.budget_met and min(s.in_llm.vision_tokens_per_layer) == 1


# -------------------------------------------------------------------------------------- pure functions
def test_select_top_sorted_and_never_empty():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.0])
    assert select_top(scores, 2).tolist() == [1, 3]
    assert select_top(scores, 5).tolist() == [0, 1, 2, 3, 4]
    for bad in (0, 6, True):
        with pytest.raises(ConfigError, match="keep="):
            select_top(scores, bad)


def test_fastv_counts_match_the_papers():
    # baselines.md §1.1: K=2, R=50% on 576 tokens of a 32-layer LLaMA -> 306; K=3 -> 315.
    assert fastv_keep(576, 0.5) == 288 and fastv_keep(576, 0.75) == 144 and fastv_keep(3, 0.99) == 1
    assert fastv_equivalent_tokens(576, 288, 2, 32) == 306 and fastv_equivalent_tokens(576, 288, 3, 32) == 315
    assert solve_fastv_keep(576, 306, 2, 32) == 288
    assert solve_fastv_keep(576, 305.99, 2, 32) == 287
    assert solve_fastv_keep(576, 1000, 2, 32) == 576 and solve_fastv_keep(576, 10, 2, 32) == 1


def test_pdrop_counts_match_the_papers():
    assert quarter_layers(32) == (8, 16, 24) and quarter_layers(28) == (7, 14, 21)
    assert quarter_layers(2) == (1,) and quarter_layers(4) == (1, 2, 3) and quarter_layers(8) == (2, 4, 6)
    assert pdrop_keeps(576, 0.5, 3) == [288, 144, 72] and pdrop_keeps(4, 0.1, 2) == [1, 1]
    # baselines.md §1.1: [8,16,24], λ=0.5 on 576 tokens -> 270.
    assert pdrop_equivalent_tokens(576, [288, 144, 72], (8, 16, 24), 32) == 270
    lam = solve_pdrop_lambda(576, 270, (8, 16, 24), 32)
    assert pdrop_keeps(576, lam, 3) == [288, 144, 72]
    assert solve_pdrop_lambda(576, 576, (8, 16, 24), 32) == 1.0 and solve_pdrop_lambda(576, 100, (8, 16, 24), 32) == 0
    assert (
        parse_layer_list("7-14-21") == (7, 14, 21) == parse_layer_list("[7;14;21]") == parse_layer_list([7, 14.0, 21])
    )
    assert parse_layer_list(7) == (7,) == parse_layer_list(7.0) and parse_layer_list(None) is None
    with pytest.raises(ConfigError, match="7-14-21"):
        parse_layer_list("seven")


def test_equivalent_tokens_and_stage_checks():
    assert equivalent_tokens([10, 10, 4, 4]) == 7
    check_stages([DropStage(1, 2, 5), DropStage(3, 3, 2)], 8, 10)
    bad = [
        [DropStage(0, 2, 5)],  # scored two layers early
        [DropStage(2, 2, 11)],  # more than the image holds
        [DropStage(2, 2, 0)],  # zero tokens
        [DropStage(3, 3, 5), DropStage(3, 3, 2)],  # not increasing
        [DropStage(2, 2, 5), DropStage(4, 4, 6)],  # grows back
        [DropStage(8, 8, 5)],  # past the last layer
    ]
    for stages in bad:
        with pytest.raises(ConfigError):
            check_stages(stages, 8, 10)


# ----------------------------------------------------------------------------------------- config errors
def test_registered_and_configs_refuse_bad_values(backbones):
    assert {"fastv", "pdrop"} <= set(available_reducers())
    backbone = backbones[("llava", "llama", "sdpa")]
    with pytest.raises(
        ConfigError, match=r"unknown options \['ratio'\]; valid: \['budget', 'k', 'max_tiles', 'pinpoints', 'r'\]"
    ):
        build_reducer("fastv", backbone, {"ratio": 0.5})
    with pytest.raises(ConfigError, match=r"k=8 must lie in \[1, 7\]"):
        build_reducer("fastv", backbone, {"k": 8})
    with pytest.raises(ConfigError, match="r=1.0"):
        build_reducer("fastv", backbone, {"r": 1.0})
    with pytest.raises(ConfigError, match="budget=0"):
        build_reducer("fastv", backbone, {"budget": 0})
    with pytest.raises(
        ConfigError,
        match=r"unknown options \['ratios'\]; valid: \['budget', 'lam', 'layer_list', 'max_tiles', 'pinpoints'\]",
    ):
        build_reducer("pdrop", backbone, {"ratios": [0.5]})
    with pytest.raises(ConfigError, match=r"layer_list=\[2, 9\] must lie in \[1, 7\]"):
        build_reducer("pdrop", backbone, {"layer_list": "2-9"})
    with pytest.raises(ConfigError, match="increasing"):
        build_reducer("pdrop", backbone, {"layer_list": "4-2"})
    with pytest.raises(ConfigError, match="lam=0"):
        build_reducer("pdrop", backbone, {"lam": 0})
    assert build_reducer("fastv", backbone, {"k": 3.0}).k == 3
