"""PruMerge / PruMerge+ against a literal re-statement of the official code (42Shawn/LLaVA-PruMerge), on tiny backbones.

The reference functions below follow ``token_prune_merge_advanced`` / ``token_prune_merge_advanced_plus`` step by step
(batched ``topk`` / ``gather``, ``complement_idx``, the per-token Python double loop, numpy quartiles), from the hooked
``q_proj`` / ``k_proj`` outputs of the layer after the feature layer; the reducer under test uses neither. Only
``k=32`` becomes ``min(32, rest)`` so that the 16-patch tiny towers can run it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.vision_probe import encoder_layers, next_layer_index, probe_next_layer
from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers.prumerge import (
    PruMergeConfig,
    prumerge_merge,
    prumerge_outlier_ratio,
    prumerge_select,
    prumerge_tile,
)
from lrs_plugin.reducers.registry import build_reducer

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]


# ------------------------------------------------------------------------------------------------ references
def ref_complement_idx(idx, dim):
    """Official ``complement_idx``."""
    a = torch.arange(dim, device=idx.device)
    ndim = idx.ndim
    dims = idx.shape
    n_idx = dims[-1]
    dims = dims[:-1] + (-1,)
    for _ in range(1, ndim):
        a = a.unsqueeze(0)
    a = a.expand(*dims)
    masked = torch.scatter(a, -1, idx, 0)
    compl, _ = torch.sort(masked, dim=-1, descending=False)
    compl = compl.permute(-1, *tuple(range(ndim - 1)))
    compl = compl[n_idx:].permute(*(tuple(range(1, ndim)) + (0,)))
    return compl


def ref_outlier_dectection(attn):
    """Official ``outlier_dectection``."""
    attn_np = attn.to(dtype=torch.float32).cpu().numpy().flatten()
    q1 = np.percentile(attn_np, 25)
    q3 = np.percentile(attn_np, 75)
    iqr = q3 - q1
    upper_bound = q3 + 1.5 * iqr
    outlier_indices = np.where(attn_np > upper_bound)[0]
    return len(outlier_indices) / len(attn_np)


def ref_prune_merge(image_features, desired_layer_q, desired_layer_k, *, plus, if_adaptive, reduction_ratio):
    """Official ``token_prune_merge_advanced(_plus)`` after the tower: features [B,N,C], hooked q/k [B,N+1,C]."""
    B, N, C = image_features.shape
    attn = (desired_layer_q @ desired_layer_k.transpose(-2, -1)) * C**-0.5
    attn = F.softmax(attn, dim=-1)
    cls_attn = attn[:, 0, 1:]
    if if_adaptive:
        reduction_ratio = ref_outlier_dectection(cls_attn)
    _, idx = torch.topk(cls_attn, int(N * reduction_ratio), dim=1, largest=True)
    if plus and if_adaptive:
        step_length = int(1 / reduction_ratio)
        arithmetic_sequence = torch.arange(0, N - 1, int(step_length / 3))  # official: 575
        original_tensor_1d = idx.flatten()
        filtered_sequence = torch.tensor([x for x in arithmetic_sequence if x not in original_tensor_1d])
        idx = torch.cat((idx, filtered_sequence.unsqueeze(0).to(idx.dtype)), dim=1)
    elif plus:
        step_length = int(1 / reduction_ratio)
        new_idx = torch.zeros((idx.size(0), idx.size(1) * 2), dtype=torch.long)
        for i in range(idx.size(0)):
            arithmetic_sequence = torch.arange(int(step_length / 2), N - 1, int(step_length))  # official: 575
            original_tensor_1d = idx[i].flatten()
            filtered_sequence = arithmetic_sequence
            concatenated_tensor = torch.cat((original_tensor_1d, filtered_sequence), dim=0)
            new_idx[i] = concatenated_tensor
        idx = new_idx
    index = idx.unsqueeze(-1).expand(-1, -1, C)
    Key_wo_cls = desired_layer_k[:, 1:]
    x_others = torch.gather(image_features, dim=1, index=index)
    x_others_attn = torch.gather(cls_attn, dim=1, index=idx)
    Key_others = torch.gather(Key_wo_cls, dim=1, index=index)
    compl = ref_complement_idx(idx, N)
    non_topk = torch.gather(image_features, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, C))
    non_topk_Key = torch.gather(Key_wo_cls, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, C))
    non_topk_attn = torch.gather(cls_attn, dim=1, index=compl)
    Key_others_norm = F.normalize(Key_others, p=2, dim=-1)
    non_topk_Key_norm = F.normalize(non_topk_Key, p=2, dim=-1)
    B, left_tokens, C = x_others.size()
    updated_x_others = torch.zeros_like(x_others)
    for b in range(B):
        for i in range(left_tokens):
            key_others_norm = Key_others_norm[b, i, :].unsqueeze(0).unsqueeze(0)
            before_i_Key = Key_others_norm[b, :i, :].unsqueeze(0)
            after_i_Key = Key_others_norm[b, i + 1 :, :].unsqueeze(0)
            before_i_x_others = x_others[b, :i, :].unsqueeze(0)
            after_i_x_others = x_others[b, i + 1 :, :].unsqueeze(0)
            rest_x_others = torch.cat([before_i_x_others, after_i_x_others, non_topk[b, :, :].unsqueeze(0)], dim=1)
            before_i_x_others_attn = x_others_attn[b, :i].unsqueeze(0)
            after_i_x_others_attn = x_others_attn[b, i + 1 :].unsqueeze(0)
            rest_x_others_attn = torch.cat(
                [before_i_x_others_attn, after_i_x_others_attn, non_topk_attn[b, :].unsqueeze(0)], dim=1
            )
            rest_Keys = torch.cat([before_i_Key, after_i_Key, non_topk_Key_norm[b, :, :].unsqueeze(0)], dim=1)
            cos_sim_matrix = torch.bmm(key_others_norm, rest_Keys.transpose(1, 2))
            k = min(32, rest_Keys.shape[1])  # official: k=int(32)
            _, cluster_indices = torch.topk(cos_sim_matrix, k=k, dim=2, largest=True)
            cluster_tokens = rest_x_others[:, cluster_indices[0, 0], :]  # official: .squeeze() (same for k > 1)
            weights = rest_x_others_attn[:, cluster_indices[0, 0]].unsqueeze(-1)
            weighted_avg = torch.sum(cluster_tokens * weights, dim=1)
            updated_center = x_others[b, i, :] + weighted_avg
            updated_x_others[b, i, :] = updated_center
    extra_one_token = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)
    return torch.cat([updated_x_others, extra_one_token], dim=1), cls_attn


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image(make_image_file, make_image) -> tuple[str, Image.Image]:
    return str(make_image_file(150, 230, seed=3, high=255)), make_image(150, 230, seed=3, high=255)


@pytest.fixture(scope="module")
def eager_backbones(make_tiny_checkpoint) -> dict[tuple[str, str], Backbone]:
    """Eager float64 copies: the tiny towers' peaked softmax makes float32 rounding visible in merged tokens."""
    out = {}
    for v in VARIANTS:
        bb = Backbone.from_pretrained(make_tiny_checkpoint(*v), dtype="float32", attn_implementation="eager")
        bb.model.double()
        out[v] = bb
    return out


def _hooked_tower(bb: Backbone, pixel_values: torch.Tensor):
    """The official hooks: ``q_proj`` / ``k_proj`` outputs of the layer after the feature layer, plus hidden states."""
    layers = encoder_layers(bb.model.model.vision_tower)
    attn = layers[next_layer_index(bb.config.vision_feature_layer, len(layers))].self_attn
    outputs = {}
    hk = attn.k_proj.register_forward_hook(lambda m, i, o: outputs.__setitem__("k", o))
    hq = attn.q_proj.register_forward_hook(lambda m, i, o: outputs.__setitem__("q", o))
    try:
        with torch.no_grad():
            out = bb.model.model.vision_tower(pixel_values.to(bb.vision_dtype), output_hidden_states=True)
    finally:
        hk.remove()
        hq.remove()
    return out.hidden_states[bb.config.vision_feature_layer], outputs["q"], outputs["k"]


def _random(b, n, c, seed, *, peak=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, n, c, generator=g, dtype=dtype)
    q = torch.randn(b, n + 1, c, generator=g, dtype=dtype) * peak
    k = torch.randn(b, n + 1, c, generator=g, dtype=dtype)
    return feats, q, k


def _mine(feats, q, k, **kw):
    """Our pure functions per tile, from the same q / k (single head, full width)."""
    c = feats.shape[-1]
    out = []
    for i in range(feats.shape[0]):
        row = torch.softmax((q[i, :1] @ k[i].T) * c**-0.5, dim=-1)[0, 1:]
        keep = prumerge_select(row, **kw)
        out.append(prumerge_merge(feats[i], k[i, 1:], row, keep))
    return out


# ------------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize(
    ("n", "variant", "ratio", "peak"),
    [
        (576, "plus", 0.25, 1.0),  # the seed's commented call: 144 top + 144 uniform (overlaps kept twice)
        (576, "plus", 1 / 32, 1.0),  # 18 + 18 + 1 = 37 per tile
        (576, "plus", 0.125, 3.0),
        (576, "base", 0.125, 1.0),
        (576, "base", 1 / 576, 1.0),
        (64, "plus", 0.125, 2.0),
        (16, "plus", 0.25, 1.0),  # fewer than 32 neighbours available
        (16, "base", 1.0, 1.0),  # everything kept: no pruned token, zero summary
    ],
)
def test_non_adaptive_equals_official_batched(n, variant, ratio, peak) -> None:
    feats, q, k = _random(3, n, 24, seed=n + int(ratio * 1000), peak=peak)
    ref, _ = ref_prune_merge(feats, q, k, plus=variant == "plus", if_adaptive=False, reduction_ratio=ratio)
    mine = _mine(feats, q, k, variant=variant, adaptive=False, reduction_ratio=ratio)
    for i in range(3):
        torch.testing.assert_close(mine[i], ref[i], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("variant", ["plus", "base"])
@pytest.mark.parametrize(
    ("n", "peak", "seed"), [(576, 1.0, 0), (576, 4.0, 1), (576, 0.3, 2), (64, 2.0, 3), (16, 3.0, 4)]
)
def test_adaptive_equals_official_per_image(variant, n, peak, seed) -> None:
    # The official adaptive PruMerge+ branch runs on one image at a time (its index concat needs B == 1).
    feats, q, k = _random(2, n, 24, seed=seed, peak=peak)
    mine = _mine(feats, q, k, variant=variant, adaptive=True)
    for i in range(2):
        ref, cls_attn = ref_prune_merge(
            feats[i : i + 1], q[i : i + 1], k[i : i + 1], plus=variant == "plus", if_adaptive=True, reduction_ratio=0
        )
        assert ref_outlier_dectection(cls_attn) > 0  # (with none, the official PruMerge+ divides by zero)
        torch.testing.assert_close(mine[i], ref[0], atol=1e-10, rtol=1e-10)


def test_duplicates_and_patch_zero_follow_complement_idx() -> None:
    # Patch 0 on top, several top patches on the uniform grid: repeats drop the lowest unkept patches.
    feats, q, k = _random(1, 64, 8, seed=11)
    kw = {"plus": True, "if_adaptive": False, "reduction_ratio": 0.125}  # 8 top + samples 4, 12, ..., 60
    k = k.clone()
    k[0, [1, 5, 13, 21]] = q[0, 0] * 5  # patches 0, 4, 12, 20 attract the [CLS] query
    ref, cls_attn = ref_prune_merge(feats, q, k, **kw)
    keep = prumerge_select(cls_attn[0], variant="plus", adaptive=False, reduction_ratio=0.125)
    assert {0, 4, 12, 20} <= set(keep[:8].tolist()) and keep.numel() - keep.unique().numel() >= 3
    torch.testing.assert_close(prumerge_merge(feats[0], k[0, 1:], cls_attn[0], keep), ref[0], atol=1e-10, rtol=0)


def test_outlier_ratio_is_the_iqr_rule() -> None:
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(576, generator=g) * 0.01
    attn[torch.randperm(576, generator=g)[:20]] = 1.0
    assert prumerge_outlier_ratio(attn) == 20 / 576
    assert prumerge_outlier_ratio(attn) == ref_outlier_dectection(attn[None])
    base = prumerge_select(attn, variant="base")
    assert sorted(base.tolist()) == sorted(torch.nonzero(attn == 1.0).flatten().tolist())
    plus = prumerge_select(attn, variant="plus")
    samples = [i for i in range(0, 575, int(int(576 / 20) / 3)) if i not in base.tolist()]  # step 28 // 3 = 9
    assert plus.tolist() == base.tolist() + samples
    # Fewer outliers -> fewer top tokens and a sparser uniform grid.
    attn[attn == 1.0] = torch.tensor([1.0] * 5 + [0.001] * 15)
    assert prumerge_select(attn, variant="base").numel() == 5


def test_no_outlier_is_defined() -> None:
    flat = torch.full((16,), 1 / 16)
    assert prumerge_outlier_ratio(flat) == 0
    assert prumerge_select(flat, variant="base").numel() == 0
    assert prumerge_select(flat, variant="plus").tolist() == [0, 5, 10]  # the step of one outlier: int(16 / 3)
    feats = torch.randn(16, 4)
    out = prumerge_merge(feats, torch.randn(16, 4), flat, torch.empty(0, dtype=torch.long))
    torch.testing.assert_close(out, (feats / 16).sum(0, keepdim=True))


def test_seed_budgets_per_576_patch_tile() -> None:
    attn = torch.softmax(torch.randn(576, generator=torch.Generator().manual_seed(5)), 0)
    assert prumerge_select(attn, adaptive=False, reduction_ratio=0.25).numel() + 1 == 289
    assert prumerge_select(attn, adaptive=False, reduction_ratio=1 / 32).numel() + 1 == 37


def test_merge_keeps_dtype() -> None:
    feats = torch.randn(16, 8).to(torch.bfloat16)
    attn = torch.softmax(torch.randn(16), 0)
    out = prumerge_merge(feats, torch.randn(16, 8), attn, torch.tensor([3, 7]))
    assert out.dtype == torch.bfloat16 and out.shape == (3, 8)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
def test_probe_next_layer_equals_hooked_eager_computation(eager_backbones, tiny_backbones, image, variant) -> None:
    for bb in (eager_backbones[variant], tiny_backbones[variant]):  # eager and SDPA towers
        pixel_values, _ = bb.image_crops(image[1])
        hidden, q, k = _hooked_tower(bb, pixel_values)
        probe = probe_next_layer(bb, pixel_values)
        c = hidden.shape[-1]
        ref = torch.softmax((q @ k.transpose(-1, -2)) * c**-0.5, dim=-1)[:, 0, 1:]
        assert probe.cls_attention.shape == (pixel_values.shape[0], bb.patches_per_side**2)
        torch.testing.assert_close(probe.cls_attention, ref.to(probe.cls_attention.dtype), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(probe.keys, k.to(probe.keys.dtype), atol=1e-6, rtol=1e-5)
        assert torch.equal(probe.hidden, hidden)


def test_next_layer_must_exist(tiny_backbones, monkeypatch) -> None:
    bb = tiny_backbones[("llava", "llama")]
    monkeypatch.setattr(bb.config, "vision_feature_layer", -1)
    with pytest.raises(ConfigError, match="last layer"):
        build_reducer("prumerge", bb)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"variant": "base"},
        {"adaptive": False, "reduction_ratio": 0.25},
        {"adaptive": "false", "reduction_ratio": "0.125", "variant": "plus"},
        {"adaptive": False, "reduction_ratio": 0.5, "variant": "base"},
    ],
)
def test_reducer_tokens_equal_official_pipeline(eager_backbones, image, variant, options) -> None:
    bb = eager_backbones[variant]
    cfg = PruMergeConfig.from_options(options)
    pixel_values, _ = bb.image_crops(image[1])
    hidden, q, k = _hooked_tower(bb, pixel_values)
    kw = {"plus": cfg.variant == "plus", "if_adaptive": cfg.adaptive, "reduction_ratio": cfg.reduction_ratio}
    if cfg.adaptive:  # one image at a time (see above)
        tiles = [ref_prune_merge(hidden[i : i + 1, 1:], q[i : i + 1], k[i : i + 1], **kw)[0][0] for i in range(len(q))]
    else:
        tiles = list(ref_prune_merge(hidden[:, 1:], q, k, **kw)[0])
    with torch.no_grad():
        ref = bb.model.model.multi_modal_projector(torch.cat(tiles))  # crops concatenated: the seed's 'flat' merge
    vision, n_tiles, counts = build_reducer("prumerge", bb, options).vision_tokens(image[1])
    assert n_tiles == pixel_values.shape[0] == (1 if variant[0] == "llava" else 5)
    assert counts == [t.shape[0] for t in tiles]
    assert vision.dtype == torch.float64
    torch.testing.assert_close(vision, ref, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
def test_answer_stats(tiny_backbones, image, variant) -> None:
    bb = tiny_backbones[variant]
    reducer = build_reducer("prumerge", bb, {"adaptive": "false", "reduction_ratio": "0.25"})
    out = reducer.answer(image[0], "What is it?", doc={}, max_new_tokens=3)
    record = out.record
    tiles = 1 if variant[0] == "llava" else 5
    per_tile = 4 + 4 + 1  # 16 patches: 4 top + 4 uniform samples + the pruned-summary token
    assert record.tiles_encoded == tiles
    assert record.vision_tokens_encoded == tiles * bb.tokens_per_tile
    assert record.vision_tokens_to_llm == record.projector_tokens == tiles * per_tile
    assert record.to_dict()["prumerge"] == {
        "variant": "plus",
        "adaptive": False,
        "reduction_ratio": 0.25,
        "max_tiles": None,
        "tokens_per_tile": {"min": per_tile, "mean": per_tile, "max": per_tile},
    }
    assert "max_tiles" not in record.to_dict() and isinstance(out.text, str) and record.new_tokens >= 1
    # Accounting: the projector runs on the kept tokens only; the tower on every tile, as for ``none``.
    from lrs_plugin.flops.accounting import ModelDims, sample_tflops

    dims = ModelDims.from_config(bb.config)
    ref = build_reducer("none", bb).answer(image[0], "What is it?", doc={}, max_new_tokens=3).record
    mine, plain = sample_tflops(record, dims), sample_tflops(ref, dims)
    assert mine["vision_tower"] == plain["vision_tower"] and mine["projector"] < plain["projector"]


def test_adaptive_stats_follow_the_tiles(tiny_backbones, image) -> None:
    bb = tiny_backbones[("llava_next", "qwen2")]
    reducer = build_reducer("prumerge", bb)
    vision, tiles, counts = reducer.vision_tokens(image[1])
    probe = probe_next_layer(bb, bb.image_crops(image[1])[0])
    expected = [prumerge_select(probe.cls_attention[i]).numel() + 1 for i in range(tiles)]  # kept + summary token
    first = prumerge_tile(probe.hidden[0], probe.keys[0], probe.cls_attention[0], PruMergeConfig())
    assert first.shape[0] == expected[0]
    assert counts == expected and vision.shape[0] == sum(counts)
    record = reducer.answer(image[0], "What is it?", doc={}, max_new_tokens=2).record
    assert record.to_dict()["prumerge"]["tokens_per_tile"] == {
        "min": min(counts),
        "mean": round(sum(counts) / len(counts), 3),
        "max": max(counts),
    }


def test_max_tiles(tiny_backbones, make_image) -> None:
    bb = tiny_backbones[("llava_next", "qwen2")]
    big = make_image(400, 400, seed=1, high=255)
    reducer = build_reducer("prumerge", bb, {"adaptive": False, "reduction_ratio": 0.125, "max_tiles": "9"})
    vision, tiles, counts = reducer.vision_tokens(big)
    assert tiles == 1 + 9 and counts == [2 + 2 + 1] * 10 and vision.shape[0] == 50  # a 3x3 grid
    _, one, _ = build_reducer("prumerge", bb, {"max_tiles": 1}).vision_tokens(big)
    assert one == 2
    with pytest.raises(ConfigError, match="llava_next"):
        build_reducer("prumerge", tiny_backbones[("llava", "llama")], {"max_tiles": 4})


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"variant": "plusplus"}, r"variant='plusplus'.*valid: plus, base"),
        ({"adaptive": "maybe"}, r"adaptive='maybe'.*valid: true, false"),
        ({"adaptive": 2}, "adaptive must be true or false"),
        ({"reduction_ratio": 0}, r"reduction_ratio.*\(0, 1\]; got 0"),
        ({"reduction_ratio": 1.5}, r"reduction_ratio.*got 1.5"),
        ({"reduction_ratio": "half"}, r"reduction_ratio.*got 'half'"),
        ({"reduction_ratio": True}, "reduction_ratio"),
        ({"pinpoints": "all"}, "pinpoints"),
        ({"max_tiles": 0}, "max_tiles"),
        ({"ratio": 0.5}, "unknown options"),
    ],
)
def test_bad_options(tiny_backbones, options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_reducer("prumerge", tiny_backbones[("llava_next", "qwen2")], options)


def test_config_defaults_are_the_official_forward_call() -> None:
    cfg = PruMergeConfig()
    assert (cfg.variant, cfg.adaptive, cfg.reduction_ratio) == ("plus", True, 0.125)
