"""Backbone adapter on tiny random checkpoints: the plain path is the stock model, bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_plugin.backbone import adapter as backbone_mod
from lrs_plugin.backbone.adapter import Backbone, GenerationOutput
from lrs_plugin.backbone.tiny import VARIANTS
from lrs_plugin.errors import ConfigError, MissingDependencyError

IDS = [f"{arch}+{lm}" for arch, lm in VARIANTS]
SIZES = [(56, 56), (70, 100), (100, 40), (30, 170)]  # (H, W): square, landscape, portrait, thin strip
QUESTION = "What color is the largest building?\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def ckpts(make_tiny_checkpoint) -> dict[tuple[str, str], Path]:
    return {(a, lm): make_tiny_checkpoint(a, lm) for a, lm in VARIANTS}


@pytest.fixture(scope="module")
def backbones(ckpts) -> dict[tuple[str, str], Backbone]:
    return {key: Backbone.from_pretrained(path, dtype="float32") for key, path in ckpts.items()}


def _stock_inputs(bb: Backbone, image: Image.Image, question: str = QUESTION):
    return bb.processor(images=image, text=bb.build_prompt(question), return_tensors="pt")


def test_import_is_light():
    code = (
        "import sys, lrs_plugin.backbone.adapter, lrs_plugin.backbone.tiny; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_dimensions_come_from_the_config(backbones, variant):
    bb = backbones[variant]
    cfg = bb.model.config
    assert bb.arch == variant[0]
    assert (bb.tile_size, bb.patch_size, bb.patches_per_side) == (56, 14, 4)
    assert bb.tokens_per_tile == 16 and bb.hidden_size == cfg.text_config.hidden_size == 64
    assert bb.num_layers == len(bb.language_model.layers) == cfg.text_config.num_hidden_layers
    assert bb.lm_head.weight.shape == (cfg.text_config.vocab_size, 64)
    assert bb.language_model.get_input_embeddings().weight.shape[1] == 64 and hasattr(bb.language_model, "norm")
    assert bb.image_mean == tuple(bb.processor.image_processor.image_mean)
    assert bb.image_std == tuple(bb.processor.image_processor.image_std)
    assert bb.model.config._attn_implementation == "sdpa"  # default on CPU
    if variant[0] == "llava":
        assert bb.image_newline is None
    else:
        assert bb.image_newline.shape == (64,)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_encode_tiles_is_hf_image_features(backbones, variant, make_image):
    bb = backbones[variant]
    tiles = np.random.default_rng(1).integers(0, 256, (5, 56, 56, 3), dtype=np.uint8)
    pixels = bb.normalize_tiles(tiles)
    assert pixels.shape == (5, 3, 56, 56) and pixels.dtype == torch.float32
    feats = bb.encode_tiles(pixels)
    assert feats.shape == (5, bb.tokens_per_tile, bb.hidden_size)
    bb.tile_batch_size = 2
    try:
        torch.testing.assert_close(bb.encode_tiles(pixels), feats, atol=1e-4, rtol=1e-5)  # batch-size dependent BLAS
    finally:
        bb.tile_batch_size = 16
    with torch.no_grad():
        if variant[0] == "llava":
            ref = torch.stack(list(bb.model.model.get_image_features(pixel_values=pixels).pooler_output))
            assert torch.equal(feats, ref)
        else:  # LLaVA-NeXT: the first packed tokens are the base tile's
            image = make_image(70, 100)
            inputs = bb.processor(images=[image], text=["<image>"], return_tensors="pt")
            base = bb.encode_tiles(inputs["pixel_values"][0, :1])
            assert torch.equal(bb.plain_vision_embeds(image)[: bb.tokens_per_tile], base[0])


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] == "llava"], ids=lambda v: "+".join(v))
def test_normalize_tiles_is_the_processor(backbones, variant):
    bb = backbones[variant]
    tiles = np.random.default_rng(2).integers(0, 256, (3, 56, 56, 3), dtype=np.uint8)
    ref = bb.processor.image_processor(
        images=[Image.fromarray(t) for t in tiles], do_resize=False, do_center_crop=False, return_tensors="pt"
    )["pixel_values"]
    torch.testing.assert_close(bb.normalize_tiles(tiles), ref, atol=1e-6, rtol=0)


def test_normalize_and_encode_refuse_wrong_shapes(backbones):
    bb = backbones[("llava", "llama")]
    with pytest.raises(ConfigError, match=r"uint8 \[n, 56, 56, 3\]"):
        bb.normalize_tiles(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"uint8"):
        bb.normalize_tiles(np.zeros((1, 56, 56, 3), dtype=np.float32))
    with pytest.raises(ConfigError, match=r"\[n, 3, 56, 56\]"):
        bb.encode_tiles(torch.zeros(1, 3, 28, 28))


def test_pool2x2(backbones):
    bb = backbones[("llava", "llama")]
    feats = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    pooled = bb.pool2x2(feats)
    assert pooled.shape == (2, 4, 3)
    grid = feats.reshape(2, 4, 4, 3)
    torch.testing.assert_close(pooled[:, 0], grid[:, :2, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(pooled[:, 3], grid[:, 2:, 2:].mean(dim=(1, 2)))
    from lrs_plugin.backbone.anyres import pool_tiles

    assert torch.equal(pooled, pool_tiles(feats, "average"))  # one 2x2 pooling (anyres owns it)
    with pytest.raises(ConfigError, match="even square"):
        bb.pool2x2(torch.zeros(1, 17, 3))
    with pytest.raises(ConfigError, match="even square"):
        bb.pool2x2(torch.zeros(1, 9, 3))


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_split_prompt_is_the_processor_prompt(backbones, variant, make_image):
    bb = backbones[variant]
    prefix, suffix = bb.split_prompt(QUESTION)
    ids = _stock_inputs(bb, make_image(70, 100))["input_ids"][0]
    n_image = int((ids == bb.config.image_token_id).sum())
    assert torch.equal(ids[: len(prefix)], prefix)
    assert torch.equal(ids[len(prefix) + n_image :], suffix)
    assert bb.config.image_token_id not in prefix.tolist() + suffix.tolist()
    assert (prefix[0].item() == bb.tokenizer.bos_token_id) is (variant[1] == "llama")
    # An explicit placeholder is kept where the question puts it.
    pre2, suf2 = bb.split_prompt(f"Look: <image>\n{QUESTION}")
    assert len(pre2) > len(prefix)
    with pytest.raises(ConfigError, match="exactly one <image>; found 2"):
        bb.split_prompt("<image> and <image>")


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_plain_path_logits_equal_stock_forward(backbones, variant, size, make_image):
    bb = backbones[variant]
    image = make_image(*size, seed=size[0])
    inputs = _stock_inputs(bb, image)
    with torch.no_grad():
        stock = bb.model(**inputs).logits
    prefix, suffix = bb.split_prompt(QUESTION)
    vision = bb.plain_vision_embeds(image)
    embeds, span = bb.assemble(prefix, vision, suffix)
    assert span == slice(len(prefix), len(prefix) + vision.shape[0])
    assert embeds.shape == (1, inputs["input_ids"].shape[1], bb.hidden_size)
    assert torch.equal(bb.logits(embeds), stock)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_plain_path_greedy_equals_stock_generate(backbones, variant, make_image):
    bb = backbones[variant]
    for seed, size in enumerate(SIZES[1:3]):
        image = make_image(*size, seed=seed)
        inputs = _stock_inputs(bb, image)
        with torch.no_grad():
            stock = bb.model.generate(**inputs, do_sample=False, max_new_tokens=12)[0, inputs["input_ids"].shape[1] :]
        embeds, _ = bb.assemble(*_interleave(bb, image))
        out = bb.generate(embeds, max_new_tokens=12)
        assert isinstance(out, GenerationOutput)
        assert list(out.new_token_ids) == stock.tolist() and out.num_new_tokens == 12
        assert out.text == bb.tokenizer.decode(stock, skip_special_tokens=True).strip() != ""


def _interleave(bb: Backbone, image: Image.Image):
    prefix, suffix = bb.split_prompt(QUESTION)
    return prefix, bb.plain_vision_embeds(image), suffix


def test_generate_stops_on_eos_ids_and_stop_strings(backbones, make_image):
    bb = backbones[("llava_next", "qwen2")]
    embeds, _ = bb.assemble(*_interleave(bb, make_image(70, 100)))
    full = bb.generate(embeds, max_new_tokens=10)
    first = full.new_token_ids[0]
    assert bb.generate(embeds, max_new_tokens=10, eos_token_ids=[first]).new_token_ids == (first,)
    raw = bb.tokenizer.decode(list(full.new_token_ids), skip_special_tokens=True)
    stop = raw.strip()[3:5]
    cut = bb.generate(embeds, max_new_tokens=10, stop_strings=[stop])
    assert stop not in cut.text and raw.strip().startswith(cut.text)
    assert cut.num_new_tokens < full.num_new_tokens
    with pytest.raises(ConfigError, match="max_new_tokens"):
        bb.generate(embeds, max_new_tokens=0)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_assemble_refuses_mismatched_vision_tokens(backbones, variant):
    bb = backbones[variant]
    prefix, suffix = bb.split_prompt(QUESTION)
    with pytest.raises(ConfigError, match=r"vision_embeds must be \[N, 64\].*got \[16, 32\]"):
        bb.assemble(prefix, torch.zeros(16, 32), suffix)
    with pytest.raises(ConfigError, match=r"got \[1, 16, 64\]"):
        bb.assemble(prefix, torch.zeros(1, 16, 64), suffix)


@pytest.fixture
def llava_hf_cls(monkeypatch):
    """lmms-eval's own ``llava_hf`` class, imported with a stand-in for its unused top-level ``decord`` import."""
    import lmms_eval.api.registry as registry

    decord = types.ModuleType("decord")
    decord.VideoReader = object
    decord.cpu = lambda *args, **kwargs: None
    monkeypatch.setitem(sys.modules, "decord", decord)
    monkeypatch.setattr(registry, "MODEL_REGISTRY", dict(registry.MODEL_REGISTRY))
    name = "lmms_eval.models.simple.llava_hf"
    saved = sys.modules.pop(name, None)
    try:
        with warnings.catch_warnings():  # the module calls warnings.filterwarnings("ignore") at import
            from lmms_eval.models.simple.llava_hf import LlavaHf
        yield LlavaHf
    finally:
        sys.modules.pop(name, None)
        if saved is not None:
            sys.modules[name] = saved


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_plain_path_answers_equal_lmms_eval_llava_hf(ckpts, backbones, llava_hf_cls, variant, make_image):
    from lmms_eval.api.instance import Instance

    # transformers 5 rejects llava_hf's default device_map="" ("Device string must not be empty").
    lm = llava_hf_cls(pretrained=str(ckpts[variant]), device="cpu", device_map="cpu", dtype="float32")
    images = [make_image(70, 100, 0), make_image(100, 40, 1), make_image(56, 56, 2)]
    questions = [QUESTION, "How many ships are docked?", "Is the image rural or urban?"]
    lm.task_dict = {"t": {"test": [{"image": im, "q": q} for im, q in zip(images, questions, strict=True)]}}
    gen_kwargs = {"max_new_tokens": 9, "temperature": 0, "until": ["\n\n"]}
    requests = [
        Instance(
            request_type="generate_until",
            arguments=(q, dict(gen_kwargs), lambda doc: [doc["image"]], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i, q in enumerate(questions)
    ]
    theirs = lm.generate_until(requests)

    bb = backbones[variant]
    ours, ours_raw = [], []
    for image, question in zip(images, questions, strict=True):
        prefix, suffix = bb.split_prompt(question)
        embeds, _ = bb.assemble(prefix, bb.plain_vision_embeds(image), suffix)
        out = bb.generate(embeds, max_new_tokens=9)
        ours.append(out.text)
        ours_raw.append(bb.tokenizer.decode(list(out.new_token_ids), skip_special_tokens=True))
    assert ours_raw == theirs  # llava_hf does not strip; our GenerationOutput.text is the stripped answer
    assert ours == [t.strip() for t in theirs]
    assert all(ours) and len(set(ours)) == 3


def test_attn_implementations(ckpts, backbones, monkeypatch, make_image):
    path = ckpts[("llava", "llama")]
    with pytest.raises(ConfigError, match="attn_implementation='flash'.*valid choices: sdpa, eager, flash_attention_2"):
        Backbone.from_pretrained(path, attn_implementation="flash")
    monkeypatch.setattr(backbone_mod, "_has_flash_attn", lambda: False)
    with pytest.raises(MissingDependencyError, match=r'pip install "lrs-plugin\[gpu\]"'):
        Backbone.from_pretrained(path, attn_implementation="flash_attention_2")
    eager = Backbone.from_pretrained(path, attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    sdpa = backbones[("llava", "llama")]
    embeds, _ = sdpa.assemble(*_interleave(sdpa, make_image(70, 100)))
    torch.testing.assert_close(eager.logits(embeds), sdpa.logits(embeds), atol=1e-4, rtol=1e-4)


def test_dtypes(ckpts, make_image):
    path = ckpts[("llava_next", "qwen2")]
    with pytest.raises(
        ConfigError, match="dtype='fp8' is not supported; valid choices: auto, float32, float16, bfloat16"
    ):
        Backbone.from_pretrained(path, dtype="fp8")
    with pytest.raises(ConfigError, match="valid choices"):
        Backbone.from_pretrained(path, dtype=torch.int8)
    bb = Backbone.from_pretrained(path, dtype="bfloat16")
    assert bb.dtype == torch.bfloat16
    vision = bb.plain_vision_embeds(make_image(70, 100))
    assert vision.dtype == torch.bfloat16
    feats = bb.encode_tiles(bb.normalize_tiles(np.zeros((1, 56, 56, 3), dtype=np.uint8)))
    assert feats.dtype == torch.bfloat16
    assert Backbone.from_pretrained(path).dtype == torch.float32  # "auto": the checkpoint's dtype


def test_unsupported_checkpoints_are_refused(tmp_path, make_tiny_checkpoint):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model_type='llama' is not supported; valid: llava, llava_next"):
        Backbone.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="tile_batch_size"):
        Backbone.from_pretrained(tmp_path, tile_batch_size=0)
    mistral = tmp_path / "mistral"
    shutil.copytree(make_tiny_checkpoint("llava", "llama"), mistral)
    config = json.loads((mistral / "config.json").read_text())
    config["text_config"]["model_type"] = "mistral"
    (mistral / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="text model_type='mistral' is not supported; valid: llama, qwen2"):
        Backbone.from_pretrained(mistral)
