"""Tiny random LLaVA checkpoints: saved with save_pretrained, reloaded through the real from_pretrained paths."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import torch

from lrs_plugin.backbone.tiny import VARIANTS, build_tiny_llava
from lrs_plugin.errors import ConfigError

IDS = [f"{arch}+{lm}" for arch, lm in VARIANTS]
LRS_ANSWERS = ["urban", "rural", "2", "13", "rectangular", "white", "grey", "yes", "no", "parked", "t-shaped", "runway"]


@pytest.fixture(scope="module")
def tiny(make_tiny_checkpoint) -> dict[tuple[str, str], Path]:
    """The four tiny checkpoints."""
    return {(a, lm): make_tiny_checkpoint(a, lm) for a, lm in VARIANTS}


def _digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_build_time_under_5s(tiny, tmp_path, variant):
    start = time.perf_counter()  # after the fixture, so library imports are not counted
    build_tiny_llava(tmp_path, arch=variant[0], lm=variant[1], seed=1)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_reloads_through_from_pretrained(tiny, variant):
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        LlavaForConditionalGeneration,
        LlavaNextForConditionalGeneration,
    )

    arch, lm = variant
    path = tiny[variant]
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == arch and config.text_config.model_type == lm
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (64, 4, 2)
    assert text.intermediate_size == 128 and 2 <= text.num_hidden_layers <= 4
    assert (vision.hidden_size, vision.patch_size, vision.image_size, vision.num_hidden_layers) == (32, 14, 56, 2)
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert not config.tie_word_embeddings and not text.tie_word_embeddings

    model = AutoModelForImageTextToText.from_pretrained(path)
    concrete = LlavaForConditionalGeneration if arch == "llava" else LlavaNextForConditionalGeneration
    assert type(model) is concrete
    again = concrete.from_pretrained(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    embed = model.get_input_embeddings().weight
    assert model.lm_head.weight.data_ptr() != embed.data_ptr()
    assert not torch.equal(model.lm_head.weight, embed)
    if arch == "llava_next":
        assert all(side % 56 == 0 for pin in config.image_grid_pinpoints for side in pin)
        assert model.model.image_newline.shape == (64,)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_tokenizer_trained_locally(tiny, variant):
    from transformers import AutoConfig, AutoTokenizer

    _, lm = variant
    path = tiny[variant]
    tok = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    assert len(tok) == config.text_config.vocab_size
    assert tok.convert_tokens_to_ids("<image>") == config.image_token_id
    assert tok.encode("<image>", add_special_tokens=False) == [config.image_token_id]
    assert None not in (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token)
    assert tok.eos_token == ("</s>" if lm == "llama" else "<|im_end|>")
    ids = tok("yes")["input_ids"]
    assert (ids[0] == tok.bos_token_id) is (lm == "llama")
    for word in LRS_ANSWERS:
        assert tok.decode(tok.encode(word, add_special_tokens=False)) == word
    assert tok.unk_token_id not in tok.encode("What color is the car? 27,328 px: café", add_special_tokens=False)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_chat_template(tiny, variant):
    from transformers import AutoProcessor

    _, lm = variant
    proc = AutoProcessor.from_pretrained(tiny[variant])
    as_string = [{"role": "user", "content": "<image>\nIs it urban?"}]
    as_parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it urban?"}]}]
    text = proc.tokenizer.apply_chat_template(as_string, tokenize=False, add_generation_prompt=True)
    expected = {
        "llama": "USER: <image>\nIs it urban? ASSISTANT:",
        "qwen2": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nIs it urban?"
        "<|im_end|>\n<|im_start|>assistant\n",
    }[lm]
    assert text == expected
    assert proc.apply_chat_template(as_parts, add_generation_prompt=True) == expected


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("size", [(56, 56), (70, 100), (100, 40), (30, 170)])
def test_image_token_expands_to_feature_count(tiny, variant, size, make_image):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    arch, _ = variant
    path = tiny[variant]
    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    inputs = proc(images=make_image(*size), text="<image>\nhow many?", return_tensors="pt")
    n_placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    kwargs = {"image_sizes": inputs["image_sizes"]} if arch == "llava_next" else {}
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], **kwargs).pooler_output
    assert n_placeholders == sum(f.shape[0] for f in feats)
    if arch == "llava":
        assert n_placeholders == (56 // 14) ** 2
    else:
        assert n_placeholders > (56 // 14) ** 2  # base tile + anyres grid + newlines


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_generation_config_is_greedy(tiny, variant):
    from transformers import AutoTokenizer, GenerationConfig

    path = tiny[variant]
    gen = GenerationConfig.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert gen.do_sample is False and gen.num_beams == 1
    assert gen.eos_token_id == tok.eos_token_id and gen.pad_token_id == tok.pad_token_id


def test_deterministic_for_a_seed(tmp_path):
    a = _digest(build_tiny_llava(tmp_path / "a", arch="llava_next", lm="qwen2", seed=7))
    b = _digest(build_tiny_llava(tmp_path / "b", arch="llava_next", lm="qwen2", seed=7))
    c = _digest(build_tiny_llava(tmp_path / "c", arch="llava_next", lm="qwen2", seed=8))
    assert a == b
    assert c["model.safetensors"] != a["model.safetensors"]
    assert c["tokenizer.json"] == a["tokenizer.json"]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_greedy_output_is_not_degenerate(tiny, variant, make_image):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny[variant]
    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    prompt = proc.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat color is the roof?"}], tokenize=False, add_generation_prompt=True
    )
    answers = []
    for seed in (0, 1):
        inputs = proc(images=make_image(70, 100, seed), text=prompt, return_tensors="pt")
        out = model.generate(**inputs, do_sample=False, max_new_tokens=8)[0, inputs["input_ids"].shape[1] :]
        assert out.shape[0] == 8 and int(out[0]) != proc.tokenizer.eos_token_id
        assert len(set(out.tolist())) > 2
        answers.append(proc.tokenizer.decode(out, skip_special_tokens=True))
    assert all(a.strip() for a in answers) and answers[0] != answers[1]


@pytest.mark.parametrize(("arch", "lm", "match"), [("llava_onevision", "llama", "arch"), ("llava", "mistral", "lm")])
def test_unknown_arch_or_lm_is_refused(tmp_path, arch, lm, match):
    with pytest.raises(ConfigError, match=rf"{match}=.*valid choices: .*"):
        build_tiny_llava(tmp_path, arch=arch, lm=lm)


def test_widths_and_corpus_override_the_tiny_sizes(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    out = build_tiny_llava(
        tmp_path / "w",
        arch="llava_next",
        lm="qwen2",
        widths={"text_hidden": 96, "text_intermediate": 160, "vision_hidden": 48, "rope_theta": 500.0},
        corpus=("zebra zebra zebra giraffe giraffe giraffe",) * 3,
        silence=False,
    )
    config = AutoConfig.from_pretrained(out)
    assert config.text_config.hidden_size == 96 and config.text_config.intermediate_size == 160
    assert config.vision_config.hidden_size == 48
    assert config.text_config.rope_parameters["rope_theta"] == 500.0
    assert "zebra" in AutoTokenizer.from_pretrained(out).get_vocab()  # trained on the given corpus
    with pytest.raises(ConfigError, match=r"widths has unknown keys \['hidden'\]"):
        build_tiny_llava(tmp_path / "x", widths={"hidden": 8})


def test_one_list_of_architectures():
    # The adapter owns the supported architectures and text models; the tiny builder and the reducers read them.
    from lrs_plugin.backbone import adapter, tiny
    from lrs_plugin.reducers import base

    assert tiny.ARCHS is adapter.SUPPORTED_ARCHS is base.ARCHS == ("llava", "llava_next")
    assert tiny.LMS is adapter.SUPPORTED_TEXT_MODELS == ("llama", "qwen2")
    assert {a for a, _ in VARIANTS} == set(tiny.ARCHS) and {lm for _, lm in VARIANTS} == set(tiny.LMS)
