"""``vision_dtype``: the CLIP tower in its own precision (the C2F seed: fp32 CLIP under an fp16 LLM, method.md 7.3).

CPU runs use ``dtype="bfloat16", vision_dtype="float32"`` (fp16 matmuls may be unsupported or slow on the CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.anyres import grid_shape, pack_anyres
from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.settings import parse_model_args
from lrs_plugin.reducers.registry import available_reducers, build_reducer, reducer_spec

VARIANTS = [("llava", "llama"), ("llava_next", "qwen2")]
IDS = [f"{a}+{lm}" for a, lm in VARIANTS]
SIZES = [(56, 56), (70, 100), (100, 40)]
# Small options per reducer; a reducer not listed runs with its defaults.
OPTIONS: dict[str, dict] = {"c2f": {"focus_options": {"layer": 1}}, "visionzip": {"dominant": 3, "contextual": 1}}


@pytest.fixture(scope="module")
def ckpts(make_tiny_checkpoint) -> dict[tuple[str, str], Path]:
    return {(a, lm): make_tiny_checkpoint(a, lm) for a, lm in VARIANTS}


@pytest.fixture(scope="module")
def mixed(ckpts) -> dict[tuple[str, str], Backbone]:
    """bf16 LLM / projector / newline, fp32 vision tower."""
    return {k: Backbone.from_pretrained(p, dtype="bfloat16", vision_dtype="float32") for k, p in ckpts.items()}


@pytest.fixture(scope="module")
def uniform(ckpts) -> dict[tuple[str, str], Backbone]:
    """bf16 everywhere, loaded without the option (today's behaviour)."""
    return {k: Backbone.from_pretrained(p, dtype="bfloat16") for k, p in ckpts.items()}


@pytest.fixture(scope="module")
def image_path(make_image_file) -> str:
    return str(make_image_file(150, 230, high=255))


def _hand_reference(bb: Backbone, image: Image.Image) -> torch.Tensor:
    """fp32 tower -> feature layer -> drop CLS -> cast to the projector dtype -> projector (-> anyres packing)."""
    inner = bb.model.model
    s = bb.tile_size
    pixels = bb.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"].reshape(-1, 3, s, s)
    grid = None
    if bb.arch == "llava_next":
        grid = grid_shape((image.height, image.width), bb.config.image_grid_pinpoints, s)
        pixels = pixels[: 1 + grid[0] * grid[1]]
    assert bb.config.vision_feature_select_strategy == "default"
    with torch.no_grad():
        states = inner.vision_tower(pixels.to(torch.float32), output_hidden_states=True).hidden_states
        feats = states[bb.config.vision_feature_layer][:, 1:]
        assert feats.dtype == torch.float32
        tiles = inner.multi_modal_projector(feats.to(torch.bfloat16))
        if grid is None:
            return tiles[0]
        return pack_anyres(tiles[0], tiles[1:], grid, (image.height, image.width), inner.image_newline)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_only_the_tower_is_cast(mixed, uniform, variant):
    bb = mixed[variant]
    inner = bb.model.model
    assert {p.dtype for p in inner.vision_tower.parameters()} == {torch.float32}
    others = {p.dtype for n, p in bb.model.named_parameters() if not n.startswith("model.vision_tower.")}
    assert others == {torch.bfloat16}
    assert {p.dtype for p in bb.language_model.parameters()} == {torch.bfloat16}
    assert bb.dtype == torch.bfloat16  # the LLM's, not the first parameter's
    assert bb.vision_dtype == torch.float32
    assert bb.projector_dtype == torch.bfloat16
    if bb.image_newline is not None:
        assert bb.image_newline.dtype == torch.bfloat16
    plain = uniform[variant]
    assert plain.dtype == plain.vision_dtype == plain.projector_dtype == torch.bfloat16


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_plain_vision_embeds_equals_hand_reference(mixed, uniform, ckpts, variant, size, make_image):
    bb = mixed[variant]
    image = make_image(*size, seed=sum(size))
    ours = bb.plain_vision_embeds(image)
    ref = _hand_reference(bb, image)
    assert ours.dtype == torch.bfloat16 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    # Same layout as the stock all-fp32 model, equal to bf16 precision (the tiny model's tokens are ~1e2 large, so
    # compare relative norms), and closer to it than the all-bf16 model: the tower really ran in fp32.
    full = Backbone.from_pretrained(ckpts[variant], dtype="float32").plain_vision_embeds(image)
    low = uniform[variant].plain_vision_embeds(image)
    assert full.shape == ours.shape == low.shape
    err_mixed = float((ours.float() - full).norm() / full.norm())
    err_bf16 = float((low.float() - full).norm() / full.norm())
    assert err_mixed < 0.05
    assert err_mixed < err_bf16


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_encode_tiles_casts_features_for_the_projector(mixed, variant):
    bb = mixed[variant]
    pixels = bb.normalize_tiles(np.random.default_rng(1).integers(0, 256, (3, 56, 56, 3), dtype=np.uint8))
    feats = bb.encode_tiles(pixels)
    assert feats.dtype == torch.bfloat16 and feats.shape == (3, bb.tokens_per_tile, bb.hidden_size)
    inner = bb.model.model
    with torch.no_grad():
        states = inner.vision_tower(pixels, output_hidden_states=True).hidden_states
        ref = inner.multi_modal_projector(states[bb.config.vision_feature_layer][:, 1:].to(torch.bfloat16))
    torch.testing.assert_close(feats, ref, atol=0, rtol=0)
    empty = bb.encode_tiles(pixels[:0])
    assert empty.shape == (0, bb.tokens_per_tile, bb.hidden_size) and empty.dtype == torch.bfloat16


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_vision_dtype_none_keeps_todays_behaviour(ckpts, uniform, variant, image_path, make_image):
    bb = uniform[variant]
    same = Backbone.from_pretrained(ckpts[variant], dtype="bfloat16", vision_dtype=None)
    explicit = Backbone.from_pretrained(ckpts[variant], dtype="bfloat16", vision_dtype="bfloat16")
    image = make_image(70, 100)
    ref = bb.plain_vision_embeds(image)
    # The stock transformers path is still the one used when the dtypes agree.
    inputs = bb.processor(images=[image], text=["<image>"], return_tensors="pt")
    kwargs = {"pixel_values": inputs["pixel_values"].to(torch.bfloat16)}
    if "image_sizes" in inputs:
        kwargs["image_sizes"] = inputs["image_sizes"]
    with torch.no_grad():
        stock = bb.model.model.get_image_features(**kwargs, return_dict=True).pooler_output
    assert torch.equal(ref, torch.cat(list(stock), dim=0))
    for other in (same, explicit):
        assert other.vision_dtype == torch.bfloat16
        assert torch.equal(other.plain_vision_embeds(image), ref)
    answers = []
    for backbone in (bb, same):
        reducer = build_reducer("none", backbone, {})
        out = reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=4)
        reducer.close()
        answers.append((out.text, out.record.llm_input_len, out.record.new_tokens))
    assert answers[0] == answers[1]


def test_bad_vision_dtype_is_refused(ckpts):
    path = ckpts[("llava", "llama")]
    with pytest.raises(
        ConfigError,
        match=r"vision_dtype='fp8' is not supported; valid choices: float32, float16, bfloat16 \(or None",
    ):
        Backbone.from_pretrained(path, vision_dtype="fp8")
    for bad in ("auto", torch.int8, 32):
        with pytest.raises(ConfigError, match="vision_dtype=.* valid choices"):
            Backbone.from_pretrained(path, vision_dtype=bad)
    bb = Backbone.from_pretrained(path, dtype="bfloat16", vision_dtype=torch.float32)  # a torch.dtype works too
    assert bb.vision_dtype == torch.float32 and bb.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="vision_dtype='half'"):
        Backbone(bb.model, bb.processor, vision_dtype="half")
    assert bb.vision_dtype == torch.float32  # refused before anything was cast


def _reducer_cases() -> list:
    cases = []
    for name in available_reducers():
        for variant, vid in zip(VARIANTS, IDS, strict=True):
            if variant[0] in reducer_spec(name).archs:  # refused architectures are the registry's own tests
                cases.append(pytest.param(name, variant, id=f"{name}-{vid}"))
    return cases


@pytest.mark.parametrize(("name", "variant"), _reducer_cases())
def test_every_reducer_answers_with_an_fp32_tower(mixed, image_path, name, variant):
    bb = mixed[variant]
    reducer = build_reducer(name, bb, dict(OPTIONS.get(name, {})))
    try:
        out = reducer.answer(image_path, "What is it?", doc={}, max_new_tokens=3)
    finally:
        reducer.close()
    assert isinstance(out.text, str)
    assert (out.record.vision_tokens_to_llm > 0) == (name != "blind") and out.record.new_tokens >= 1
    assert bb.vision_dtype == torch.float32 and bb.dtype == torch.bfloat16  # nothing re-cast the model


def test_every_registered_reducer_is_covered():
    covered = {c.values[0] for c in _reducer_cases()}
    assert covered == set(available_reducers())


def test_model_args_vision_dtype():
    settings = parse_model_args({"pretrained": "x", "dtype": "float16", "vision_dtype": "float32", "reducer": "none"})
    assert settings.dtype == "float16" and settings.vision_dtype == "float32"
    assert "vision_dtype" not in settings.reducer_options
    assert parse_model_args({"pretrained": "x"}).vision_dtype is None
    assert parse_model_args({"pretrained": "x", "vision_dtype": "None"}).vision_dtype is None


def test_model_class_passes_vision_dtype_to_the_backbone(ckpts, monkeypatch):
    from lrs_plugin.models.c2f_llava import C2FLlava

    seen: list[dict] = []
    real = Backbone.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.append(kwargs)
        return real(cls, path, **kwargs)

    monkeypatch.setattr(Backbone, "from_pretrained", classmethod(spy))
    model = C2FLlava(
        pretrained=str(ckpts[("llava", "llama")]),
        reducer="none",
        device="cpu",
        dtype="bfloat16",
        vision_dtype="float32",
    )
    assert seen and seen[0]["vision_dtype"] == "float32" and seen[0]["dtype"] == "bfloat16"
    assert model.backbone.vision_dtype == torch.float32 and model.backbone.dtype == torch.bfloat16
