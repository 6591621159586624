"""VisionZip against a literal re-statement of the official algorithm (dvlab-research/VisionZip), on tiny backbones.

The reference functions below follow the official code's tensor operations step by step (batched masks,
``masked_select``, one-hot assignment, the zero grid of ``restore_image_features_sorted``) and use the eager attention
weights transformers returns with ``output_attentions``; the reducer under test uses neither.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.vision_probe import encoder_layers, feature_layer_index, probe_feature_layer
from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers.registry import build_reducer
from lrs_plugin.reducers.visionzip import VisionZipConfig, visionzip_next_layout, visionzip_select

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]


# ------------------------------------------------------------------------------------------------ references
def ref_select(hidden, attn, metric, dominant_num, contextual_num):
    """Official ``CLIPVisionTower_VisionZip.forward`` for a batch: hidden [B,S,C], attn [B,H,S,S], metric [B,S,Dk]."""
    cls_attention_sum = attn[:, :, 0, 1:].sum(dim=1)
    topk = cls_attention_sum.topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros((hidden.shape[0], 1), dtype=topk.dtype), topk], dim=1)
    mask = torch.ones_like(hidden[:, :, 0], dtype=torch.bool).scatter_(1, all_indices, False)
    b, s, c = hidden.shape
    dominant = hidden.masked_select(~mask.unsqueeze(-1)).view(b, dominant_num + 1, c)
    metric_f = metric[mask].view(b, s - (dominant_num + 1), metric.shape[2])
    hidden_f = hidden.masked_select(mask.unsqueeze(-1)).view(b, s - (dominant_num + 1), c)
    metric_n = metric_f / metric_f.norm(dim=-1, keepdim=True)
    step = max(1, metric_n.shape[1] // contextual_num)
    targets = torch.arange(0, metric_n.shape[1], step)[:contextual_num]
    not_target = ~torch.isin(torch.arange(metric_n.shape[1]), targets)
    sim = torch.bmm(metric_n[:, not_target], metric_n[:, targets].transpose(1, 2))
    one_hot = torch.zeros(b, int(not_target.sum()), contextual_num, dtype=hidden.dtype)
    one_hot.scatter_(2, sim.argmax(dim=2).unsqueeze(-1), 1)
    counts = one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    aggregated = torch.bmm(one_hot.transpose(1, 2), hidden_f[:, not_target]) / counts
    contextual = hidden_f[:, targets] + aggregated
    return torch.cat([dominant, contextual], dim=1), all_indices


def ref_restore(image_feature, keep_idx, width, height, g):
    """Official ``restore_image_features_sorted`` (grid tiles only), with ``g`` in place of the hard-coded 24."""
    num_img, total, dim = image_feature.shape
    num_keep = keep_idx.shape[1]
    num_extra = total - num_keep
    restore = keep_idx.sort(dim=1).values[:, 1:] - 1
    grid = torch.zeros((num_img, g * g, dim), dtype=image_feature.dtype)
    mask = torch.zeros(num_img, g * g, dtype=torch.bool)
    mask.scatter_(1, restore, True)
    grid[mask] = image_feature[:, 1:num_keep, :].reshape(-1, dim)
    grid = grid.view(height, width, g, g, dim).permute(0, 2, 1, 3, 4).reshape(height * g, width * g, dim)
    mask = mask.view(height, width, g, g).permute(0, 2, 1, 3).reshape(height * g, width * g)
    extra = image_feature[:, total - num_extra :].reshape(-1, dim)  # official: [:, -num_extra:] (never run with 0)
    return torch.cat([grid[mask], image_feature[:, 0], extra])


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image(make_image_file, make_image) -> tuple[str, Image.Image]:
    return str(make_image_file(150, 230, seed=3, high=255)), make_image(150, 230, seed=3, high=255)


@pytest.fixture(scope="module")
def eager_backbones(make_tiny_checkpoint) -> dict[tuple[str, str], Backbone]:
    return {
        v: Backbone.from_pretrained(make_tiny_checkpoint(*v), dtype="float32", attn_implementation="eager")
        for v in VARIANTS
    }


def _eager_tower(bb: Backbone, pixel_values: torch.Tensor):
    with torch.no_grad():
        return bb.model.model.vision_tower(pixel_values, output_attentions=True, output_hidden_states=True)


def _ref_keys(bb: Backbone, hidden_in: torch.Tensor, layer: int) -> torch.Tensor:
    """Keys averaged over heads, from the layer's input hidden states (independent of the probe's hook)."""
    mod = encoder_layers(bb.model.model.vision_tower)[layer]
    n, s, _ = hidden_in.shape
    with torch.no_grad():
        k = mod.self_attn.k_proj(mod.layer_norm1(hidden_in))
    return k.view(n, s, mod.self_attn.num_heads, mod.self_attn.head_dim).mean(dim=2)


# ------------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize(
    ("feature", "layers", "expected"), [(-2, 24, 22), (-1, 24, 23), (1, 24, 0), (24, 24, 23), (-2, 2, 0)]
)
def test_feature_layer_index(feature, layers, expected) -> None:
    assert feature_layer_index(feature, layers) == expected


@pytest.mark.parametrize("bad", [0, -25, 25, [-2, -1], True])
def test_feature_layer_index_rejects(bad) -> None:
    with pytest.raises(ConfigError, match="vision_feature_layer|embeddings"):
        feature_layer_index(bad, 24)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
def test_probe_on_sdpa_tower_hidden_and_keys(tiny_backbones, image, variant) -> None:
    bb = tiny_backbones[variant]  # SDPA tower: the probe must not need eager attention
    pixel_values, _ = bb.image_crops(image[1])
    probe = probe_feature_layer(bb, pixel_values)
    layer = feature_layer_index(bb.config.vision_feature_layer, len(encoder_layers(bb.model.model.vision_tower)))
    assert probe.cls_attention.shape == (pixel_values.shape[0], bb.patches_per_side**2)
    heads = bb.config.vision_config.num_attention_heads  # per head, patches get 1 - (the [CLS] self-weight)
    assert bool(((probe.cls_attention.sum(-1) > 0) & (probe.cls_attention.sum(-1) < heads)).all())
    with torch.no_grad():
        ref_hidden = bb.model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    assert torch.equal(probe.hidden, ref_hidden[bb.config.vision_feature_layer])
    torch.testing.assert_close(probe.keys, _ref_keys(bb, ref_hidden[layer], layer), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
def test_probe_attention_equals_eager_weights(eager_backbones, image, variant) -> None:
    bb = eager_backbones[variant]
    pixel_values, _ = bb.image_crops(image[1])
    probe = probe_feature_layer(bb, pixel_values)
    layer = feature_layer_index(bb.config.vision_feature_layer, len(encoder_layers(bb.model.model.vision_tower)))
    out = _eager_tower(bb, pixel_values)
    torch.testing.assert_close(probe.cls_attention, out.attentions[layer][:, :, 0, 1:].sum(1), atol=1e-6, rtol=1e-5)
    assert torch.equal(probe.hidden, out.hidden_states[bb.config.vision_feature_layer])


@pytest.mark.parametrize(
    ("s", "dominant", "contextual"),
    [(17, 5, 3), (17, 2, 4), (17, 9, 8), (26, 7, 5), (50, 12, 10), (17, 1, 3), (577, 54, 10), (577, 108, 20)],
)
def test_select_equals_official(s, dominant, contextual) -> None:
    g = torch.Generator().manual_seed(s * 100 + dominant * 10 + contextual)
    b, heads = 3, 4
    hidden = torch.randn(b, s, 24, generator=g, dtype=torch.float64)
    attn = torch.softmax(torch.randn(b, heads, s, s, generator=g, dtype=torch.float64), dim=-1)
    metric = torch.randn(b, s, 8, generator=g, dtype=torch.float64)
    ref, ref_idx = ref_select(hidden, attn, metric, dominant - 1, contextual)
    for i in range(b):
        tokens, patches = visionzip_select(hidden[i], attn[i, :, 0, 1:].sum(0), metric[i], dominant, contextual)
        torch.testing.assert_close(tokens, ref[i], atol=1e-12, rtol=1e-12)
        assert patches.tolist() == sorted((ref_idx[i, 1:] - 1).tolist())


def test_select_clips_budgets_to_the_tile() -> None:
    hidden = torch.randn(17, 6)
    tokens, patches = visionzip_select(hidden, torch.rand(16), torch.randn(17, 4), 100, 10)
    assert torch.equal(tokens, hidden) and patches.tolist() == list(range(16))  # everything, in token order
    tokens, _ = visionzip_select(hidden, torch.rand(16), torch.randn(17, 4), 12, 10)
    assert tokens.shape[0] == 12 + 5  # only 5 tokens left for contextual slots
    tokens, patches = visionzip_select(hidden, torch.rand(16), torch.randn(17, 4), 1, 0)
    assert torch.equal(tokens, hidden[:1]) and patches.numel() == 0


@pytest.mark.parametrize(("rows", "cols"), [(2, 2), (2, 3), (3, 1), (1, 1)])
def test_next_layout_equals_official_restore(rows, cols) -> None:
    g, d, c, dim = 4, 6, 3, 5
    gen = torch.Generator().manual_seed(rows * 10 + cols)
    n = 1 + rows * cols
    tokens = torch.randn(n, d + c, dim, generator=gen)
    patches = torch.stack([torch.randperm(g * g, generator=gen)[: d - 1].sort().values for _ in range(n)])
    keep_idx = torch.cat([torch.zeros(n, 1, dtype=torch.long), patches + 1], dim=1)
    ref = torch.cat([tokens[0], ref_restore(tokens[1:], keep_idx[1:], cols, rows, g)])
    assert torch.equal(visionzip_next_layout(tokens, patches, (rows, cols), g), ref)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
@pytest.mark.parametrize(("dominant", "contextual"), [(5, 3), (9, 4), (54, 10)])
def test_reducer_tokens_equal_official_pipeline(eager_backbones, image, variant, dominant, contextual) -> None:
    bb = eager_backbones[variant]
    pixel_values, grid = bb.image_crops(image[1])
    out = _eager_tower(bb, pixel_values)
    layer = feature_layer_index(bb.config.vision_feature_layer, len(encoder_layers(bb.model.model.vision_tower)))
    hidden = out.hidden_states[bb.config.vision_feature_layer]
    metric = _ref_keys(bb, out.hidden_states[layer], layer)
    s = hidden.shape[1]
    d = min(dominant - 1, s - 1)
    c = min(contextual, s - 1 - d)
    if c:
        picked, keep_idx = ref_select(hidden, out.attentions[layer], metric, d, c)
    else:
        keep_idx = torch.cat(
            [torch.zeros(hidden.shape[0], 1, dtype=torch.long), torch.arange(1, s).expand(hidden.shape[0], -1)], 1
        )
        picked = hidden
    with torch.no_grad():
        feats = bb.model.model.multi_modal_projector(picked)
    if grid is None:
        ref = feats[0]
    else:
        ref = torch.cat([feats[0], ref_restore(feats[1:], keep_idx[1:], grid[1], grid[0], bb.patches_per_side)])
    reducer = build_reducer("visionzip", bb, {"dominant": dominant, "contextual": contextual})
    vision, tiles = reducer.vision_tokens(image[1])
    assert tiles == pixel_values.shape[0]
    assert vision.shape[0] == tiles * (1 + d + c)
    torch.testing.assert_close(vision, ref, atol=1e-5, rtol=1e-5)


def test_keep_all_patches_equals_stock_tokens_plus_cls(tiny_backbones, image) -> None:
    bb = tiny_backbones[("llava", "llama")]
    n = bb.tokens_per_tile
    vision, _ = build_reducer("visionzip", bb, {"dominant": n + 1, "contextual": 0}).vision_tokens(image[1])
    stock = bb.plain_vision_embeds(image[1])
    assert vision.shape[0] == n + 1
    torch.testing.assert_close(vision[1:], stock, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
def test_answer_stats_and_budget(tiny_backbones, image, variant) -> None:
    bb = tiny_backbones[variant]
    out = build_reducer("visionzip", bb, {"dominant": "4", "contextual": "2"}).answer(
        image[0], "What is it?", doc={}, max_new_tokens=3
    )
    record = out.record
    assert record.vision_tokens_to_llm == record.tiles_encoded * 6
    assert record.vision_tokens_encoded == record.tiles_encoded * bb.tokens_per_tile
    assert record.tiles_encoded == (1 if variant[0] == "llava" else 5)
    assert record.to_dict()["visionzip"] == {"dominant": 4, "contextual": 2, "max_tiles": None}
    assert isinstance(out.text, str) and record.new_tokens >= 1
    # Accounting: the projector runs on the kept tokens only; the tower on every tile, as for ``none``.
    from lrs_plugin import flops
    from lrs_plugin.flops.accounting import ModelDims, sample_tflops

    dims = ModelDims.from_config(bb.config)
    ref = build_reducer("none", bb).answer(image[0], "What is it?", doc={}, max_new_tokens=3).record
    mine, plain = sample_tflops(record, dims), sample_tflops(ref, dims)
    assert record.projector_tokens == record.vision_tokens_to_llm
    assert mine["projector"] * 1e12 == pytest.approx(
        flops.projector_flops(record.tiles_encoded * 6, dims.projector_in, dims.lm.hidden)
    )
    assert mine["vision_tower"] == plain["vision_tower"] and mine["llm_prefill"] < plain["llm_prefill"]


def test_max_tiles_square_grid(tiny_backbones, make_image) -> None:
    bb = tiny_backbones[("llava_next", "qwen2")]
    big = make_image(400, 400, seed=1, high=255)
    reducer = build_reducer("visionzip", bb, {"dominant": 3, "contextual": 1, "max_tiles": "9"})
    vision, tiles = reducer.vision_tokens(big)
    assert tiles == 1 + 9 and vision.shape[0] == 10 * 4  # a 3x3 grid, beyond the checkpoint's 2x2 / 1x3 grids
    _, one = build_reducer("visionzip", bb, {"max_tiles": 1}).vision_tokens(big)
    assert one == 2


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dominant": 0}, "dominant"),
        ({"contextual": -1}, "contextual"),
        ({"pinpoints": "all"}, "pinpoints"),
        ({"max_tiles": 0}, "max_tiles"),
        ({"dominant": "many"}, "dominant must be an integer; got .many."),
        ({"contextual": 0.5}, "contextual must be an integer; got 0.5"),
        ({"ratio": 0.5}, "unknown options"),
    ],
)
def test_bad_options(tiny_backbones, options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_reducer("visionzip", tiny_backbones[("llava_next", "qwen2")], options)


def test_max_tiles_needs_llava_next(tiny_backbones) -> None:
    with pytest.raises(ConfigError, match="llava_next"):
        build_reducer("visionzip", tiny_backbones[("llava", "llama")], {"max_tiles": 4})


def test_config_defaults_are_the_official_readme() -> None:
    cfg = VisionZipConfig()
    assert (cfg.dominant, cfg.contextual) == (54, 10)


def test_merge_sums_in_float32_so_fp16_states_do_not_overflow() -> None:
    s = 40
    hidden = torch.zeros(s, 4, dtype=torch.float16)
    hidden[:, 0] = 30000.0  # CLIP-L has channels this large; 30 of them summed overflow fp16 (max 65504)
    keys = torch.zeros(s, 3)
    keys[:, 0] = 1.0  # every token is most similar to the first anchor
    keys[1:, 1] = torch.linspace(0.0, 0.01, s - 1)
    tokens, _ = visionzip_select(hidden, torch.rand(s - 1), keys, 2, 2)
    assert tokens.dtype == torch.float16 and bool(torch.isfinite(tokens).all())
    assert float(tokens[-2, 0]) == pytest.approx(60000.0, rel=1e-3)  # anchor 30000 + mean of its members 30000
