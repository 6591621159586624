"""Focus scorers on tiny random checkpoints: registry, attention equivalence with the slow way, RFM weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.errors import ConfigError
from lrs_plugin.focus import scorers as focus
from lrs_plugin.focus.scorers import FocusContext, FocusScorer, build_focus, register_focus, save_rfm_original_layout

VARIANTS = [("llava_next", "qwen2"), ("llava", "llama")]
IDS = [f"{a}+{lm}" for a, lm in VARIANTS]
QUESTION = "Is there a bridge over the river?"
N_GRID = 30
TEXT_LAYERS = 3  # so that the default llm_attention layer K = 2 exists


@pytest.fixture(scope="module")
def ckpts(make_tiny_checkpoint) -> dict[tuple[str, str], Path]:
    return {v: make_tiny_checkpoint(*v, text_layers=TEXT_LAYERS) for v in VARIANTS}


@pytest.fixture(scope="module")
def backbones(ckpts) -> dict[tuple[str, str], Backbone]:
    return {v: Backbone.from_pretrained(p, dtype="float32") for v, p in ckpts.items()}


def _sequence(bb: Backbone, *, seed: int = 0, holes: bool = False):
    """A prefix | N_GRID random vision tokens | suffix sequence, optionally with zero placeholders masked out."""
    gen = torch.Generator().manual_seed(seed)
    vision = torch.randn(N_GRID, bb.hidden_size, generator=gen)
    key_mask = None
    pre, suf = bb.split_prompt(QUESTION)
    if holes:
        hole = torch.rand(N_GRID, generator=gen) < 0.4
        vision[hole] = 0.0
    embeds, span = bb.assemble(pre, vision, suf)
    if holes:
        key_mask = torch.ones(embeds.shape[1], dtype=torch.bool)
        key_mask[span] = ~hole
    return embeds, span, key_mask


# ------------------------------------------------------------------------------------------------------ registry
def test_registry_lists_the_four_scorers():
    assert focus.available_focus() == ["llm_attention", "oracle", "rfm", "uniform"]


def test_unknown_name_lists_registered(backbones):
    with pytest.raises(ConfigError, match=r"unknown focus scorer 'attn'; registered: llm_attention, oracle, rfm"):
        build_focus("attn", backbones[VARIANTS[0]])


def test_unknown_knob_lists_valid_knobs(backbones):
    with pytest.raises(ConfigError, match=r"no knob\(s\) \['depth'\]; valid knobs: layer, masked_key_mode"):
        build_focus("llm_attention", backbones[VARIANTS[0]], {"depth": 3})


def test_duplicate_registration_fails(monkeypatch):
    monkeypatch.setattr(focus, "_REGISTRY", dict(focus._REGISTRY))
    with pytest.raises(ConfigError, match="'uniform' is already registered"):
        register_focus("uniform")(focus.UniformScorer)
    register_focus("mine")(focus.UniformScorer)
    assert "mine" in focus.available_focus()


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"layer": 3}, r"layer=3 must be an int in \[0, 3\)"),
        ({"layer": True}, r"layer=True must be an int"),
        ({"masked_key_mode": "ignore"}, r"masked_key_mode='ignore' is not supported; valid choices: faithful, exclude"),
    ],
)
def test_llm_attention_knob_validation(backbones, knobs, message):
    with pytest.raises(ConfigError, match=message):
        build_focus("llm_attention", backbones[VARIANTS[0]], knobs)


@pytest.mark.parametrize("name", ["llm_attention", "oracle", "rfm", "uniform"])
def test_every_scorer_honours_the_contract(backbones, name):
    bb = backbones[VARIANTS[0]]
    knobs = {"rfm": {"llm_layer_list": [1, 2], "rfm_init": "backbone"}}.get(name, {})
    scorer = build_focus(name, bb, knobs)
    assert isinstance(scorer, FocusScorer) and scorer.name == name
    embeds, span, key_mask = _sequence(bb, holes=True)
    boxes = torch.tensor([[i * 10.0, 0.0, i * 10.0 + 10.0, 10.0] for i in range(N_GRID)])
    ctx = FocusContext(box=(0.0, 0.0, 55.0, 10.0), image_wh=(300, 10), token_boxes=boxes)
    scores = scorer.score(embeds, grid_span=span, query_index=embeds.shape[1] - 1, key_mask=key_mask, context=ctx)
    assert scores.shape == (N_GRID,) and scores.dtype == torch.float32 and bool(torch.isfinite(scores).all())


# ------------------------------------------------------------------------------- llm_attention == the slow way
def _eager_reference(eager: Backbone, embeds, span, key_mask, layer: int) -> torch.Tensor:
    """Layer-K attention of the last token from the eager model's full matrix, renormalised over the grid slice.

    The eager model returns ``softmax_j(z_j + m_j)`` over ALL keys (``m_j = finfo.min`` for masked keys and future
    positions). For grid keys ``p_j / sum_{i in grid} p_i = exp(z_j) / sum_{i in grid, valid} exp(z_i)``: the common
    normaliser cancels, masked keys contribute exactly 0. That is the scorer's softmax over the grid slice with
    masked keys excluded, so the two must agree to float32 rounding (the only difference is the summation order).
    """
    lm = eager.language_model
    length = embeds.shape[1]
    mask = None if key_mask is None else key_mask.long().unsqueeze(0)
    with torch.no_grad():
        out = lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=torch.arange(length).unsqueeze(0),
            output_attentions=True,
        )
    row = out.attentions[layer][0, :, length - 1, span].float()  # [heads, N]
    return (row / row.sum(dim=-1, keepdim=True)).mean(dim=0)


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Textbook rotate-half RoPE, written out independently of transformers."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    angles = positions.float().unsqueeze(-1) * inv_freq
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _handmade_faithful(eager: Backbone, embeds, span, key_mask, layer: int) -> torch.Tensor:
    """The faithful quirk by hand: eager hidden states into layer K, own RMSNorm/q/k/RoPE, +1 on masked logits."""
    lm = eager.language_model
    cfg = lm.config
    length = embeds.shape[1]
    with torch.no_grad():
        hidden = lm(
            inputs_embeds=embeds,
            attention_mask=key_mask.long().unsqueeze(0),
            position_ids=torch.arange(length).unsqueeze(0),
            output_hidden_states=True,
        ).hidden_states[layer][0]
        block = lm.layers[layer]
        norm = block.input_layernorm
        x = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
        heads, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
        q = block.self_attn.q_proj(x[length - 1]).view(heads, d)
        k = block.self_attn.k_proj(x[span]).view(-1, kv, d).transpose(0, 1)  # [kv, N, d]
        theta = cfg.rope_parameters["rope_theta"]
        q = _rope(q, torch.full((heads,), length - 1), theta)
        k = _rope(k, torch.arange(span.start, span.stop).expand(kv, -1), theta)
        k = torch.stack([k[h // (heads // kv)] for h in range(heads)])
        logits = (k @ q.unsqueeze(-1)).squeeze(-1) / d**0.5 + (~key_mask[span]).float()
        return torch.softmax(logits, dim=-1).mean(0)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize("holes", [False, True], ids=["no-mask", "key-mask"])
def test_llm_attention_equals_eager_attention(ckpts, backbones, variant, layer, holes):
    eager = Backbone.from_pretrained(ckpts[variant], dtype="float32", attn_implementation="eager")
    sdpa = backbones[variant]
    assert sdpa.language_model.config._attn_implementation == "sdpa"
    embeds, span, key_mask = _sequence(sdpa, seed=layer, holes=holes)
    scorer = build_focus("llm_attention", sdpa, {"layer": layer, "masked_key_mode": "exclude"})
    got = scorer.score(embeds, grid_span=span, query_index=embeds.shape[1] - 1, key_mask=key_mask, context=None)
    want = _eager_reference(eager, embeds, span, key_mask, layer)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if holes:
        assert float(got[~key_mask[span]].abs().max()) == 0.0
        faithful = scorer.score(
            embeds,
            grid_span=span,
            query_index=embeds.shape[1] - 1,
            key_mask=key_mask,
            context=FocusContext(masked_key_mode="faithful"),
        )
        torch.testing.assert_close(
            faithful, _handmade_faithful(eager, embeds, span, key_mask, layer), atol=1e-5, rtol=0
        )
        assert float(faithful[~key_mask[span]].min()) > 0.0  # the quirk: placeholders share the softmax


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_excluded_placeholders_are_left_out_with_the_same_scores(backbones, variant, monkeypatch):
    """``exclude``: the kept tokens alone, at their own RoPE positions, give the full sequence's scores."""
    from lrs_plugin.focus import attention

    bb = backbones[variant]
    lm = bb.language_model
    embeds, span, key_mask = _sequence(bb, seed=5, holes=True)
    lengths = []
    real = attention.run_layers

    def counting(layers, hidden, **kw):
        lengths.append(hidden.shape[1])
        return real(layers, hidden, **kw)

    monkeypatch.setattr(attention, "run_layers", counting)
    kw = {
        "config": lm.config,
        "rotary_emb": lm.rotary_emb,
        "grid_span": span,
        "query_index": embeds.shape[1] - 1,
        "key_mask": key_mask,
        "masked_key_mode": "exclude",
    }
    with torch.no_grad():
        full = attention.focus_row_scores(lm.layers[:2], lm.layers[2], embeds, compact=False, **kw)
        compact = attention.focus_row_scores(lm.layers[:2], lm.layers[2], embeds, **kw)
        faithful = attention.focus_row_scores(lm.layers[:2], lm.layers[2], embeds, **{**kw, "masked_key_mode": "faithful"})
    torch.testing.assert_close(compact, full, atol=1e-6, rtol=0)
    assert lengths == [embeds.shape[1], int(key_mask.sum()), embeds.shape[1]]  # faithful needs the placeholders
    assert float(compact[~key_mask[span]].abs().max()) == 0.0
    assert float(faithful[~key_mask[span]].min()) > 0.0
    every = torch.zeros_like(key_mask)
    every[: span.start] = True
    with pytest.raises(ConfigError, match="every grid key is masked"):
        attention.focus_row_scores(lm.layers[:2], lm.layers[2], embeds, **{**kw, "key_mask": every})


def test_scores_ignore_tokens_after_the_query(backbones):
    bb = backbones[VARIANTS[0]]
    embeds, span, _ = _sequence(bb)
    scorer = build_focus("llm_attention", bb)
    q = embeds.shape[1] - 3
    a = scorer.score(embeds, grid_span=span, query_index=q, key_mask=None, context=None)
    b = scorer.score(embeds[:, : q + 1], grid_span=span, query_index=q, key_mask=None, context=None)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match=r"query_index=3 must lie in \[52, "):
        scorer.score(embeds, grid_span=span, query_index=3, key_mask=None, context=None)


# ------------------------------------------------------------------------------------------------------ rfm
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_rfm_from_backbone_matches_llm_attention(backbones, variant):
    """T = [l0 - 1] + list = [0, 1, 2]: RFM layers 0..1 then q/k of layer 2 are the LLM's layers 0..1 and 2."""
    bb = backbones[variant]
    rfm = build_focus("rfm", bb, {"llm_layer_list": "[1, 2]", "rfm_init": "backbone", "masked_key_mode": "exclude"})
    assert rfm.decoder_layers_per_pass == 2 and rfm.module.config._attn_implementation == "sdpa"
    llm = build_focus("llm_attention", bb, {"layer": 2})
    embeds, span, key_mask = _sequence(bb, seed=3, holes=True)
    kw = {"grid_span": span, "query_index": embeds.shape[1] - 1, "key_mask": key_mask, "context": None}
    torch.testing.assert_close(rfm.score(embeds, **kw), llm.score(embeds, **kw), atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_rfm_round_trip_through_the_original_key_layout(ckpts, backbones, variant, tmp_path):
    bb = backbones[variant]
    built = build_focus("rfm", bb, {"llm_layer_list": [1, 2], "rfm_init": "backbone"})
    path = save_rfm_original_layout(built, tmp_path / "rfm.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "model.mm_projector.token_pruner.norm.weight" in keys
    assert "model.mm_projector.token_pruner.layers.2.self_attn.q_proj.weight" in keys
    assert ("model.mm_projector.token_pruner.layers.0.self_attn.q_proj.bias" in keys) == (variant[1] == "qwen2")
    loaded = build_focus("rfm", bb, {"llm_layer_list": [1, 2], "rfm_path": str(path)})
    embeds, span, key_mask = _sequence(bb, seed=5, holes=True)
    kw = {"grid_span": span, "query_index": embeds.shape[1] - 1, "key_mask": key_mask, "context": None}
    assert torch.equal(built.score(embeds, **kw), loaded.score(embeds, **kw))

    # The same file inside a checkpoint folder whose config.json names llm_layer_list: no knobs needed.
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpts[variant], folder)
    shutil.copy(path, folder / "rfm.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "llm_layer_list": [1, 2]}))
    from_ckpt = build_focus("rfm", Backbone.from_pretrained(folder, dtype="float32"))
    assert from_ckpt.weights_source == str(folder)
    assert torch.equal(built.score(embeds, **kw), from_ckpt.score(embeds, **kw))


def test_rfm_wrong_layer_count_is_refused(backbones, tmp_path):
    bb = backbones[VARIANTS[0]]
    path = save_rfm_original_layout(
        build_focus("rfm", bb, {"llm_layer_list": [1, 2], "rfm_init": "backbone"}), tmp_path / "r.st"
    )
    with pytest.raises(ConfigError, match=r"holds 3 token_pruner layers, but llm_layer_list=\[2\] implies R = .* = 2"):
        build_focus("rfm", bb, {"llm_layer_list": [2], "rfm_path": str(path)})


def test_rfm_missing_weights_explain_both_options(backbones):
    bb = backbones[VARIANTS[0]]
    with pytest.raises(ConfigError, match=r"no RFM weights .* rfm_path .* rfm_init='backbone'"):
        build_focus("rfm", bb, {"llm_layer_list": [1, 2]})
    with pytest.raises(ConfigError, match="needs llm_layer_list"):
        build_focus("rfm", bb, {"rfm_init": "backbone"})


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"llm_layer_list": [0, 2], "rfm_init": "backbone"}, r"first entry >= 1"),
        ({"llm_layer_list": [1, 3], "rfm_init": "backbone"}, r"indices in \[0, 3\)"),
        ({"llm_layer_list": "a,b", "rfm_init": "backbone"}, r"non-empty list of layer indices"),
        ({"llm_layer_list": [1], "rfm_init": "llm"}, r"rfm_init='llm' is not supported"),
        ({"llm_layer_list": [1], "rfm_init": "backbone", "rfm_path": "x"}, r"not both"),
    ],
)
def test_rfm_knob_validation(backbones, knobs, message):
    with pytest.raises(ConfigError, match=message):
        build_focus("rfm", backbones[VARIANTS[0]], knobs)


def test_rfm_backbone_init_is_logged(backbones):
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        build_focus("rfm", backbones[VARIANTS[0]], {"llm_layer_list": [1], "rfm_init": "backbone"})
    finally:
        logger.remove(sink)
    assert any("rfm_init='backbone'" in m and "[0, 1]" in m for m in messages)


# --------------------------------------------------------------------------------------------- oracle / uniform
def test_oracle_marks_cells_overlapping_the_clipped_box(backbones):
    bb = backbones[VARIANTS[0]]
    scorer = build_focus("oracle", bb)
    embeds = torch.zeros(1, 8, bb.hidden_size)
    cells = torch.tensor(
        [[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [float("nan")] * 4, [0, 10, 10, 20], [10, 10, 20, 20]],
        dtype=torch.float32,
    )
    ctx = FocusContext(box=(12.0, 5.0, 99.0, 10.0), image_wh=(30, 20), token_boxes=cells)
    got = scorer.score(embeds, grid_span=slice(1, 7), query_index=7, key_mask=None, context=ctx)
    assert got.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # touching edges do not count; newline (NaN) is 0
    with pytest.raises(ConfigError, match="needs the document's box"):
        scorer.score(
            embeds, grid_span=slice(1, 7), query_index=7, key_mask=None, context=FocusContext(token_boxes=cells)
        )
    lenient = build_focus("oracle", bb, {"missing_box": "uniform"})
    flat = lenient.score(
        embeds, grid_span=slice(1, 7), query_index=7, key_mask=None, context=FocusContext(token_boxes=cells)
    )
    assert torch.equal(flat, torch.full((6,), 1 / 6))


def test_uniform_is_flat(backbones):
    bb = backbones[VARIANTS[0]]
    got = build_focus("uniform", bb).score(
        torch.zeros(1, 9, bb.hidden_size), grid_span=slice(2, 6), query_index=8, key_mask=None, context=None
    )
    assert got.tolist() == [0.25] * 4
