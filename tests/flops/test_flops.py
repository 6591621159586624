"""FLOPs accounting: the paper's efficiency table, hand-computed terms, config loading, schedules, bad inputs."""

from __future__ import annotations

import itertools
import json

import pytest
import transformers

from lrs_plugin import flops
from lrs_plugin.errors import ConfigError
from lrs_plugin.flops.paper import format_paper_table, paper_table
from lrs_plugin.flops.terms import (
    CLIP_VIT_L_336,
    QWEN2_7B,
    LMDims,
    VisionDims,
    equivalent_tokens,
    fastv_tokens_per_layer,
    focus_flops,
    llm_decode_flops,
    llm_prefill_flops,
    load_config_dims,
    paper_c2f_tflops,
    paper_layer_macs,
    paper_llm_tflops,
    pdrop_tokens_per_layer,
    projector_flops,
    uniform_tokens_per_layer,
    vision_layers_used,
    vision_tower_flops,
)

# Tiny dimensions for hand-computed checks: L=2, d=4, m=8, H=2, G=1 (GQA), e=2, V=10.
TINY = LMDims(num_layers=2, hidden=4, intermediate=8, num_heads=2, num_kv_heads=1, head_dim=2, vocab=10)
# Tiny ViT: 2 layers, h=4, i=8, 2-px patches on a 4-px tile (N=4 patches, t=5 tokens with CLS), c=3.
TINY_VIT = VisionDims(num_layers=2, hidden=4, intermediate=8, patch=2, image_size=4, num_heads=2, num_channels=3)

# The paper's efficiency table (shared/reference/paper_efficiency.csv), copied here on purpose.
PAPER = {
    "anyres-p144": (83520, 21312, 243.37),
    "anyres-p144 w/ PruMerge++": (83520, 5328, 43.75),
    "anyres-p144 w/ VisionZip": (83520, 9280, 83.56),
    "anyres-p144 w/ FastV": (83520, 21312, 109.21),
    "anyres-p144 w/ PDrop": (83520, 21312, 101.62),
    "anyres-p144 w/ prune (Ours)": (83520, 5760, 82.56),
    "DIP-4layer w/ prune (Ours)": (55296, 2376, 36.61),
}


# ------------------------------------------------------------------------------------------ the paper's table


def test_paper_table_reproduces_every_row_to_0_01():
    table = paper_table()
    assert [row["setting"] for row in table] == list(PAPER)
    for row in table:
        total, to_llm, paper = PAPER[row["setting"]]
        assert (row["vis_tokens_total"], row["vis_tokens_to_llm"], row["paper_tflops"]) == (total, to_llm, paper)
        assert row["tflops"] is not None and abs(row["tflops"] - paper) < 0.005, row
        assert row["note"]


def test_five_baseline_rows_from_the_helpers():
    L = QWEN2_7B.num_layers
    assert round(paper_llm_tflops(uniform_tokens_per_layer(21312, L), QWEN2_7B), 2) == 243.37
    assert round(paper_llm_tflops(uniform_tokens_per_layer(9280, L), QWEN2_7B), 2) == 83.56
    assert round(paper_llm_tflops(uniform_tokens_per_layer(5328, L), QWEN2_7B), 2) == 43.75
    fastv = fastv_tokens_per_layer(21312, L, k=2, r=0.5)
    assert fastv == [21312] * 2 + [10656] * 26
    assert round(paper_llm_tflops(fastv, QWEN2_7B), 2) == 109.21
    pdrop = pdrop_tokens_per_layer(21312, L, [7, 14, 21], [0.5, 0.25, 0.125])
    assert pdrop == [21312] * 7 + [10656] * 7 + [5328] * 7 + [2664] * 7
    assert round(paper_llm_tflops(pdrop, QWEN2_7B), 2) == 101.62


def test_c2f_rows_are_four_rfm_layers_per_pass_plus_the_llm():
    # anyres-p144 w/ prune: one RFM pass (4 layers) over thumbnail 576 + 144 tiles x 144 = 21,312, LLM on 5,760.
    assert paper_c2f_tflops([21312], 4, [5760] * 28, QWEN2_7B) == pytest.approx(82.562676, abs=1e-6)
    # DIP-4layer: passes over level 0 (9 tiles), level 1 (36 tiles), level 2 (50 tiles), each with the thumbnail.
    passes = [576 + 9 * 144, 576 + 36 * 144, 576 + 50 * 144]
    assert passes == [1872, 5760, 7776]
    assert paper_c2f_tflops(passes, 4, [2376] * 28, QWEN2_7B) == pytest.approx(36.607755, abs=1e-6)
    # Token bookkeeping of those schedules: 145 and 96 tiles of 576; 25 % of the last grid plus the thumbnail.
    assert 145 * 576 == 83520 and (1 + 9 + 36 + 50) * 576 == 55296
    assert 576 + 144 * 144 // 4 == 5760 and 576 + 50 * 144 // 4 == 2376
    # What does not fit: replacing the first 5 LLM layers (shared/research/baselines.md §1.3) gives 82.72.
    assert round(paper_llm_tflops([21312] * 5 + [5760] * 23, QWEN2_7B), 2) == 82.72


def _c2f_candidates():
    """The searched schedules: (description, rfm_layers, rfm pass tokens, LLM layers)."""
    single = {"thumb+grid": 21312, "grid": 20736, "grid+newlines": 20880, "thumb+grid+newlines": 21456}
    lvl0 = {"L0 grid": 1296, "L0 thumb+grid": 1872, "L0 grid+nl": 1332, "L0 thumb+grid+nl": 1908}
    lvl1 = {"L1 grid": 5184, "L1 thumb+grid": 5760, "L1 grid+nl": 5256, "L1 thumb+grid+nl": 5832}
    lvl2 = {  # 50 selected tiles, or the whole 12x12 grid with zero placeholders (as the release runs them)
        "L2 50 tiles": 7200,
        "L2 thumb+50 tiles": 7776,
        "L2 full grid": 20736,
        "L2 thumb+full grid": 21312,
        "L2 full grid+nl": 20880,
        "L2 thumb+full grid+nl": 21456,
    }
    for r in range(1, 7):
        for llm_layers in (28, 28 - r):  # the LLM pass runs all layers, or the RFM replaces its first r layers
            for name, n in single.items():
                yield "p144", f"r={r} {name} llm={llm_layers}", r, (n,), llm_layers
            for combo in itertools.product(*[[None, *lv.items()] for lv in (lvl0, lvl1, lvl2)]):
                chosen = [c for c in combo if c]
                if chosen:
                    desc = f"r={r} {[c[0] for c in chosen]} llm={llm_layers}"
                    yield "dip", desc, r, tuple(c[1] for c in chosen), llm_layers


def test_c2f_schedule_search_has_exactly_the_implemented_hit():
    targets = {"p144": (5760, 82.56), "dip": (2376, 36.61)}
    hits = {"p144": [], "dip": []}
    for row, desc, r, passes, llm_layers in _c2f_candidates():
        to_llm, paper = targets[row]
        rfm = r * sum(paper_layer_macs(n, QWEN2_7B) for n in passes)
        tflops = (rfm + llm_layers * paper_layer_macs(to_llm, QWEN2_7B)) / 1e12
        if abs(tflops - paper) < 0.005:
            hits[row].append(desc)
    assert hits == {
        "p144": ["r=4 thumb+grid llm=28"],
        "dip": ["r=4 ['L0 thumb+grid', 'L1 thumb+grid', 'L2 thumb+50 tiles'] llm=28"],
    }


def test_paper_table_subset_and_unknown_setting():
    assert [r["setting"] for r in paper_table(["anyres-p144 w/ FastV"])] == ["anyres-p144 w/ FastV"]
    with pytest.raises(ConfigError, match=r"unknown paper setting.*'nope'.*available:.*anyres-p144"):
        paper_table(["nope"])


def test_format_paper_table_aligned_with_diff_column():
    text = format_paper_table(paper_table())
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["setting", "vis", "tokens", "to", "LLM", "TFLOPs"]
    assert "diff" in lines[0] and set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + len(PAPER)
    assert all("+0.00" in line for line in lines[2:])
    assert "DIP-4layer w/ prune (Ours)" in lines[-1] and "55,296" in lines[-1] and "36.61" in lines[-1]
    diff_end = lines[0].index("diff") + len("diff")  # right-aligned numeric columns
    assert all(line.index("+0.00") + len("+0.00") == diff_end for line in lines[2:])
    missing = dict(paper_table(["anyres-p144"])[0], tflops=None)
    assert "n/a" in format_paper_table([missing]).splitlines()[-1]


# ---------------------------------------------------------------------------------------- schedule helpers


def test_fastv_and_pdrop_layer_averages_on_576_tokens():
    # baselines.md §1.1: (2·576 + 30·288)/32 = 306; K=3: 315; PDrop (8·576 + 8·288 + 8·144 + 8·72)/32 = 270.
    assert equivalent_tokens(fastv_tokens_per_layer(576, 32, k=2, r=0.5)) == 306
    assert equivalent_tokens(fastv_tokens_per_layer(576, 32, k=3, r=0.5)) == 315
    assert equivalent_tokens(pdrop_tokens_per_layer(576, 32, [8, 16, 24], [0.5, 0.25, 0.125])) == 270
    assert uniform_tokens_per_layer(7, 3) == [7, 7, 7]
    assert fastv_tokens_per_layer(10, 3, k=0, r=0.25) == [8, 8, 8]  # round(7.5) = 8 (banker's rounding)
    assert pdrop_tokens_per_layer(10, 4, [], []) == [10] * 4


def test_the_reducers_use_the_flops_schedules():
    # One owner: the fastv / pdrop reducers keep, lay out and average tokens with these functions.
    from lrs_plugin.reducers import _prefill, fastv, pdrop

    assert fastv.fastv_keep is flops.fastv_keep and pdrop.pdrop_keeps is flops.pdrop_keeps
    assert _prefill.equivalent_tokens is flops.equivalent_tokens
    for n, layers, k, r in ((576, 32, 2, 0.5), (21312, 28, 2, 0.5), (3, 4, 1, 0.99), (10, 3, 0, 0.25)):
        keep = fastv.fastv_keep(n, r)
        assert fastv_tokens_per_layer(n, layers, k, r) == [n] * k + [keep] * (layers - k)
        assert fastv.fastv_equivalent_tokens(n, keep, k, layers) == equivalent_tokens(
            fastv_tokens_per_layer(n, layers, k, r)
        )
    for n, layers, bounds in ((576, 32, [8, 16, 24]), (21312, 28, [7, 14, 21]), (4, 8, [2, 4, 6])):
        keeps = pdrop.pdrop_keeps(n, 0.5, 3)
        per_layer = pdrop_tokens_per_layer(n, layers, bounds, [0.5, 0.25, 0.125])
        assert per_layer == flops.staged_tokens_per_layer(n, layers, zip(bounds, keeps, strict=True))
        assert pdrop.pdrop_equivalent_tokens(n, keeps, bounds, layers) == equivalent_tokens(per_layer)
    assert fastv_tokens_per_layer(0, 3, k=1, r=0.5) == [0, 0, 0]  # no image, nothing kept


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fastv_tokens_per_layer(576, 32, k=33, r=0.5), "FastV k"),
        (lambda: fastv_tokens_per_layer(576, 32, k=2, r=1.0), "FastV r"),
        (lambda: fastv_tokens_per_layer(-1, 32, k=2, r=0.5), "n must be"),
        (lambda: pdrop_tokens_per_layer(576, 32, [8, 8, 24], [0.5, 0.25, 0.125]), "increase strictly"),
        (lambda: pdrop_tokens_per_layer(576, 32, [8, 16, 32], [0.5, 0.25, 0.125]), "increase strictly"),
        (lambda: pdrop_tokens_per_layer(576, 32, [8, 16], [0.5, 0.25, 0.125]), "ratios has 3"),
        (lambda: pdrop_tokens_per_layer(576, 32, [8], [0.0]), "ratios must be"),
        (lambda: paper_llm_tflops([576] * 27, QWEN2_7B), "27 entries, the model has 28"),
        (lambda: paper_llm_tflops([576] * 27 + [1.5], QWEN2_7B), r"tokens_per_layer\[27\]"),
        (lambda: paper_c2f_tflops([100], 0, [1] * 28, QWEN2_7B), "rfm_layers"),
        (lambda: equivalent_tokens([]), "empty"),
        (lambda: vision_tower_flops(1, TINY_VIT, num_layers_used=3), "exceeds"),
        (lambda: vision_tower_flops(-1, TINY_VIT), "num_tiles"),
        (lambda: projector_flops(1, 0, 4), "in_dim"),
        (lambda: llm_decode_flops([3], 1, TINY), "1 entries, the model has 2"),
        (lambda: focus_flops(0, TINY, 2), "seq_len"),
        (lambda: vision_layers_used(-26, 24), "select_layer"),
    ],
)
def test_bad_inputs_raise_config_error_naming_the_value(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# ------------------------------------------------------------------------------------- hand-computed terms


def test_paper_layer_macs_by_hand():
    # n=3, d=4, m=8: 4·3·16 + 2·9·4 + 3·3·4·8 = 192 + 72 + 288 = 552; n=2: 128 + 32 + 192 = 352.
    assert paper_layer_macs(3, TINY) == 552
    assert paper_layer_macs(2, TINY) == 352
    assert paper_llm_tflops([3, 2], TINY) == pytest.approx(904e-12)
    # C2F: 2 RFM layers over 3 tokens + LLM [2, 2]: 2·552 + 2·352 = 1808.
    assert paper_c2f_tflops([3], 2, [2, 2], TINY) == pytest.approx(1808e-12)


def test_vision_tower_flops_by_hand():
    # Per tile: conv N·c·p²·h = 4·3·4·4 = 192; per layer (t=5): 4·5·16 + 2·25·4 + 2·5·4·8 = 320 + 200 + 320 = 840.
    # 2 layers: 192 + 1680 = 1872 MACs = 3744 FLOPs per tile; 1 layer: 1032 MACs = 2064 FLOPs.
    assert TINY_VIT.num_patches == 4
    assert vision_tower_flops(1, TINY_VIT) == 3744
    assert vision_tower_flops(2, TINY_VIT) == 7488
    assert vision_tower_flops(1, TINY_VIT, num_layers_used=1) == 2064
    assert vision_tower_flops(0, TINY_VIT) == 0


def test_vision_layers_used():
    assert vision_layers_used(-2, 24) == 23
    assert vision_layers_used(-1, 24) == 24
    assert vision_layers_used(0, 24) == 0
    assert vision_layers_used(5, 24) == 5


def test_projector_flops_by_hand():
    # n=3, 2 -> 4 -> 4: 3·(2·4 + 4·4) = 72 MACs = 144 FLOPs.
    assert projector_flops(3, 2, 4) == 144


def test_llm_prefill_flops_by_hand():
    # n=3: q 3·4·4=48, k+v 2·3·4·(1·2)=48, o 48 -> 144; causal pairs 3·4/2=6 -> 2·H·e·6 = 48; MLP 3·3·4·8 = 288.
    # layer = 480; 2 layers = 960; LM head for 1 token 4·10 = 40 -> 1000 MACs = 2000 FLOPs.
    assert llm_prefill_flops([3, 3], TINY) == 2000
    # Full attention: pairs 9 -> 72, layer 504 -> 1008 + 40 = 1048 MACs.
    assert llm_prefill_flops([3, 3], TINY, causal=False) == 2096
    assert llm_prefill_flops([3, 3], TINY, lm_head_tokens=0) == 1920
    # n=2 layer: projections 96, pairs 3 -> 24, MLP 192 -> 312; [3, 2]: 480 + 312 + 40 = 832 MACs.
    assert llm_prefill_flops([3, 2], TINY) == 1664


def test_llm_decode_flops_by_hand():
    # Per layer per step: q 16 + k,v 16 + o 16 + MLP 96 = 144, attention 2·H·e·keys = 8·keys; LM head 40.
    # Cache 3: step 0 has 4 keys -> 2·(144+32) + 40 = 392; step 1 has 5 keys -> 2·(144+40) + 40 = 408. 800 MACs.
    assert llm_decode_flops(3, 2, TINY) == 1600
    assert llm_decode_flops(3, 0, TINY) == 0
    # Per-layer cache [3, 1] (pruned after layer 0), one step: (144+32) + (144+16) + 40 = 376 MACs.
    assert llm_decode_flops([3, 1], 1, TINY) == 752


def test_focus_flops_by_hand():
    # R=2 over 3 tokens, 1 query: layer 0 = 480; scoring: k 3·4·2 = 24, q 1·4·4 = 16, logits 2·2·1·3 = 12 -> 532.
    assert focus_flops(3, TINY, 2) == 1064
    assert focus_flops(3, TINY, 2, run_last=True) == 1064 + 2 * 480
    assert focus_flops(3, TINY, 1) == 104
    # 2 queries: q 32, logits 24 -> 24 + 32 + 24 = 80 scoring MACs.
    assert focus_flops(3, TINY, 2, num_queries=2) == 2 * (480 + 80)


def test_full_convention_reduces_to_twice_the_paper_one():
    # No GQA, H·e = d, full attention, no LM head: 2·(4nd² + 2n²d + 3ndm) per layer.
    dims = LMDims(num_layers=3, hidden=8, intermediate=20, num_heads=2, num_kv_heads=2, head_dim=4, vocab=5)
    tokens = [7, 5, 2]
    paper_macs = sum(paper_layer_macs(n, dims) for n in tokens)
    assert llm_prefill_flops(tokens, dims, causal=False, lm_head_tokens=0) == 2 * paper_macs


def test_clip_l_336_per_tile_order_of_magnitude():
    # ~0.38 TFLOPs per 336-px tile for all 24 layers (~191 GMACs, the usual figure for ViT-L/14 at 336 px).
    assert 0.3e12 < vision_tower_flops(1, CLIP_VIT_L_336) < 0.4e12


# ------------------------------------------------------------------------------------------- configs


def test_dims_from_llama_config():
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2
    )
    assert LMDims.from_config(cfg) == LMDims(3, 64, 96, 8, 2, 8, cfg.vocab_size)


def test_dims_from_qwen2_config_match_the_paper_constant():
    cfg = transformers.Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    )
    assert LMDims.from_config(cfg) == QWEN2_7B  # head_dim is None in the config: hidden // heads = 128


def test_dims_from_clip_vision_config():
    cfg = transformers.CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    assert VisionDims.from_config(cfg) == CLIP_VIT_L_336
    assert CLIP_VIT_L_336.num_patches == 576


def _tiny_text(kind):
    kwargs = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=99)
    return getattr(transformers, kind)(num_key_value_heads=2, **kwargs)


@pytest.mark.parametrize(
    ("llava", "text"), [("LlavaConfig", "LlamaConfig"), ("LlavaNextConfig", "Qwen2Config")], ids=["llava", "next"]
)
def test_dims_from_saved_llava_config_json(tmp_path, llava, text):
    vision = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = getattr(transformers, llava)(text_config=_tiny_text(text).to_dict(), vision_config=vision.to_dict())
    config.save_pretrained(tmp_path)
    lm, vis = load_config_dims(tmp_path)
    assert lm == LMDims(2, 32, 48, 4, 2, 8, 99)
    assert vis == VisionDims(2, 16, 24, 14, 28, 2, 3)
    assert load_config_dims(tmp_path / "config.json") == (lm, vis)
    assert LMDims.from_config(config) == lm and VisionDims.from_config(config) == vis


def test_flat_llava_qwen_config_has_no_vision_dims(tmp_path):
    raw = {"model_type": "llava_qwen", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    raw |= {"num_attention_heads": 4, "vocab_size": 10, "mm_vision_tower": "openai/clip-vit-large-patch14-336"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert load_config_dims(tmp_path) == (LMDims(2, 64, 128, 4, 4, 16, 10), None)


def test_bad_configs(tmp_path):
    with pytest.raises(ConfigError, match="LMDims.num_layers must be an integer >= 1, got 0"):
        LMDims(0, 4, 8, 2, 1, 2, 10)
    with pytest.raises(ConfigError, match="LMDims.hidden must be an integer >= 1, got True"):
        LMDims(2, True, 8, 2, 1, 2, 10)
    with pytest.raises(ConfigError, match=r"LMDims.vocab .*got 1\.5"):
        LMDims(2, 4, 8, 2, 1, 2, 1.5)
    with pytest.raises(ConfigError, match="num_heads .3. must be a multiple of num_kv_heads .2."):
        LMDims(2, 4, 8, 3, 2, 2, 10)
    with pytest.raises(ConfigError, match="VisionDims.patch must be"):
        VisionDims(2, 4, 8, -2, 4, 2)
    with pytest.raises(ConfigError, match="image_size .5. must be a multiple of patch .2."):
        VisionDims(2, 4, 8, 2, 5, 2)
    with pytest.raises(ConfigError, match="config has no 'intermediate_size'"):
        LMDims.from_config({"hidden_size": 4, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 3})
    with pytest.raises(ConfigError, match="not divisible"):
        LMDims.from_config({"hidden_size": 5, "num_attention_heads": 2})
    with pytest.raises(ConfigError, match="cannot read model config"):
        load_config_dims(tmp_path / "missing.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read model config"):
        load_config_dims(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        load_config_dims(tmp_path)


def test_public_api_is_listed():
    assert all(hasattr(flops, name) for name in flops.__all__)


def test_computed_tflops_leave_out_reused_tiles_and_the_reused_prefix_only():
    from lrs_plugin.flops.accounting import ModelDims, sample_tflops, sample_tflops_computed
    from lrs_plugin.harness.record import SampleRecord

    config = transformers.LlavaNextConfig(
        text_config=_tiny_text("Qwen2Config").to_dict(),
        vision_config=transformers.CLIPVisionConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=2, image_size=56, patch_size=14
        ).to_dict(),
    )
    dims = ModelDims.from_config(config)
    cold = SampleRecord(tiles_encoded=10, vision_tokens_encoded=160, llm_input_len=300, new_tokens=3)
    stages = sample_tflops(cold, dims)
    assert sample_tflops_computed(cold, dims, stages) == stages["total"]  # nothing reused
    warm = SampleRecord(
        tiles_encoded=10,
        tiles_reused=4,
        vision_tokens_encoded=160,
        llm_input_len=300,
        new_tokens=3,
        prefix_tokens_reused=250,
    )
    assert sample_tflops(warm, dims) == stages  # the paper's convention counts every tile and position
    prefix = flops.llm_prefill_flops(flops.uniform_tokens_per_layer(250, dims.lm.num_layers), dims.lm, lm_head_tokens=0)
    expected = stages["total"] - 0.4 * (stages["vision_tower"] + stages["projector"]) - prefix / 1e12
    assert sample_tflops_computed(warm, dims, stages) == pytest.approx(expected, rel=1e-12)
    # the 50 question positions still attend to the 250 reused ones: more than a 50-token prompt alone costs
    alone = flops.llm_prefill_flops(flops.uniform_tokens_per_layer(50, dims.lm.num_layers), dims.lm) / 1e12
    assert stages["llm_prefill"] - prefix / 1e12 > alone
