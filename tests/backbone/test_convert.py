"""``lrs-plugin convert``: original-LLaVA-layout checkpoints -> transformers' LLaVA-NeXT layout (tiny models only).

The fixtures rewrite tiny random HF checkpoints (:mod:`lrs_plugin.backbone.tiny`) into the layout of the released
weights (method.md §5.2: ``model.layers.*``, ``model.mm_projector.mlp_projector.{0,2}``, ``model.image_newline``,
``model.mm_projector.token_pruner.*``; a separate CLIP folder named by ``mm_vision_tower``; a tokenizer without
``<image>``), convert them back and compare against the source model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lrs_plugin.backbone.adapter import Backbone
from lrs_plugin.backbone.convert import (
    QWEN2_CHAT_TEMPLATE,
    RFM_FILE,
    CheckpointLayoutError,
    OutputExistsError,
    convert_original_llava,
)
from lrs_plugin.errors import ConfigError

FAMILIES = {  # text family: (tiny HF arch, original model_type, original architecture)
    "qwen2": ("llava_next", "llava_qwen", "LlavaQwenForCausalLM"),
    "llama": ("llava", "llava_llama", "LlavaLlamaForCausalLM"),
}
PAD_ROWS = {"qwen2": 6, "llama": 0}  # Qwen2 checkpoints store padded embedding rows (method.md §5.3)
LAYER_LIST = [1]
QUESTION = "What color is the largest building?\n Answer the question using a single word or phrase."
SEED_PROMPTS = {  # method.md §7.1, with the user message "<image>\n" + text + "\n"
    "qwen2": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
    f"{QUESTION}\n<|im_end|>\n<|im_start|>assistant\n",
    "llama": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    f"detailed, and polite answers to the user's questions. USER: <image>\n{QUESTION}\n ASSISTANT:",
}
LLM_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def _save_tower(model, processor, folder: Path) -> Path:
    """The CLIP tower of ``model`` as a standalone ``CLIPVisionModel`` folder with its image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    tower = CLIPVisionModel(model.config.vision_config)
    tower.load_state_dict(model.model.vision_tower.state_dict())
    tower.save_pretrained(folder)
    ip = processor.image_processor
    CLIPImageProcessor(
        size=ip.size, crop_size=ip.crop_size, image_mean=ip.image_mean, image_std=ip.image_std
    ).save_pretrained(folder)
    return folder


def _save_tokenizer_without_image(hf_dir: Path, folder: Path) -> None:
    """The tiny tokenizer with ``<image>`` renamed (released tokenizers have none) and a foreign chat template."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tiny = AutoTokenizer.from_pretrained(hf_dir)
    text = (hf_dir / "tokenizer.json").read_text().replace('"<image>"', '"<unused_0>"')
    roles = {r: getattr(tiny, r) for r in ("unk_token", "bos_token", "eos_token", "pad_token")}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text), **roles, chat_template="{{ 'not used' }}")
    tok.save_pretrained(folder)


def write_original(hf_dir: Path, out: Path, *, family: str) -> Path:
    """Rewrite a tiny HF checkpoint in the original LLaVA layout (config, weights, tokenizer, CLIP folder)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lrs_plugin.focus.rfm import RFM_PREFIX, rfm_state_from_backbone

    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(hf_dir)
    out.mkdir(parents=True)
    tower_dir = _save_tower(model, processor, out.parent / f"{out.name}_clip")
    gen = torch.Generator().manual_seed(1)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.language_model."):
            state["model." + key[len("model.language_model.") :]] = value
        elif key.startswith("model.multi_modal_projector.linear_"):
            i = {"1": "0", "2": "2"}[key[len("model.multi_modal_projector.linear_")]]
            state[f"model.mm_projector.mlp_projector.{i}." + key.rsplit(".", 1)[1]] = value
        elif not key.startswith("model.vision_tower."):
            state[key] = value  # lm_head.weight, model.image_newline
    hidden = model.config.text_config.hidden_size
    state.setdefault("model.image_newline", torch.randn(hidden, generator=gen))  # LLaVA-1.5 tiny has none
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[key] = torch.cat([state[key], torch.randn(PAD_ROWS[family], hidden, generator=gen)])
    rfm = rfm_state_from_backbone(model.model.language_model, tuple(LAYER_LIST))
    for key, value in rfm.items():
        state[RFM_PREFIX + key] = value + 0.01 * torch.randn(value.shape, generator=gen)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})

    text = model.config.text_config
    arch, model_type, architecture = FAMILIES[family]
    config = {k: getattr(text, k) for k in LLM_KEYS}
    config.update(
        model_type=model_type,
        architectures=[architecture],
        vocab_size=state["model.embed_tokens.weight"].shape[0],
        rope_theta=text.rope_parameters["rope_theta"],
        torch_dtype="float32",
        mm_vision_tower=str(tower_dir),
        mm_vision_select_layer=-2,
        mm_spatial_pool_mode="bilinear",
        mm_vision_select_feature="patch",
        mm_hidden_size=model.config.vision_config.hidden_size,
        mm_projector_type="mlp2x_gelu_after_distillpruner",
        mm_patch_merge_type="spatial_unpad",
        mm_use_im_patch_token=False,
        mm_use_im_start_end=False,
        llm_layer_list=LAYER_LIST,
        tokenizer_model_max_length=2048,
        slice_block_size=model.config.vision_config.image_size,
    )
    if arch == "llava_next":
        config["image_grid_pinpoints"] = [[w, h] for h, w in model.config.image_grid_pinpoints]  # original: (w, h)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _save_tokenizer_without_image(hf_dir, out)
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory, make_tiny_checkpoint):
    """``{family: (hf_dir, original_dir)}`` for the LLaVA-NeXT/Qwen2 and LLaVA-1.5/Llama tiny models."""
    root = tmp_path_factory.mktemp("convert_src")
    result = {}
    for family, (arch, _, _) in FAMILIES.items():
        hf_dir = make_tiny_checkpoint(arch, family)
        result[family] = (hf_dir, write_original(hf_dir, root / f"orig_{family}", family=family))
    return result


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    """``{family: (source Backbone, converted Backbone, converted folder)}``."""
    root = tmp_path_factory.mktemp("convert_out")
    result = {}
    for family, (hf_dir, orig) in sources.items():
        out = convert_original_llava(orig, root / family)
        result[family] = (
            Backbone.from_pretrained(hf_dir, dtype="float32"),
            Backbone.from_pretrained(out, dtype="float32"),
            out,
        )
    return result


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_and_vision_features_match_the_source(converted, family):
    src, dst, _ = converted[family]
    assert dst.arch == "llava_next" and dst.config.text_config.model_type == family
    vocab = src.config.text_config.vocab_size
    ids = torch.arange(7, 7 + 12) % vocab
    px = torch.randn(2, 3, src.tile_size, src.tile_size, generator=torch.Generator().manual_seed(0))
    vision_src, vision_dst = src.encode_tiles(px), dst.encode_tiles(px)
    torch.testing.assert_close(vision_dst, vision_src, rtol=0, atol=1e-6)
    logits_src = src.logits(src.assemble(ids[:5], vision_src[0], ids[5:])[0])
    logits_dst = dst.logits(dst.assemble(ids[:5], vision_dst[0], ids[5:])[0])
    torch.testing.assert_close(logits_dst[..., :vocab], logits_src, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_newline_embedding_rows_and_records(converted, sources, family):
    from safetensors import safe_open

    src, dst, out = converted[family]
    with safe_open(str(sources[family][1] / "model.safetensors"), "pt") as f:
        newline = f.get_tensor("model.image_newline")
    assert torch.equal(dst.image_newline, newline)
    vocab = src.config.text_config.vocab_size  # = len(tiny tokenizer): the seed's vocabulary
    image_id = dst.config.image_token_id
    assert len(dst.tokenizer) == vocab + 1 == dst.config.text_config.vocab_size and image_id == vocab
    assert dst.lm_head.weight.shape[0] == vocab + 1
    record = dst.config.conversion
    assert record["checkpoint_embedding_rows"] == vocab + PAD_ROWS[family]
    assert record["seed_vocab_size"] == vocab and record["suppressed_token_ids"] == [image_id]
    assert dst.model.generation_config.suppress_tokens == [image_id]
    assert dst.config.rfm["llm_layer_list"] == LAYER_LIST and dst.config.rfm["num_rfm_layers"] == 2
    assert dst.config.vision_feature_layer == -2 and dst.config.vision_feature_select_strategy == "default"
    if family == "qwen2":
        assert dst.config.image_grid_pinpoints == src.config.image_grid_pinpoints
    else:  # LLaVA-NeXT's default list, in tiles of the tower
        s = dst.tile_size
        assert dst.config.image_grid_pinpoints == [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [3 * s, s], [s, 3 * s]]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors", RFM_FILE]
    assert dst.anyres_tile_pool == "bilinear"  # the fixture's mm_spatial_pool_mode: the seed's 2x2 tile pooling


@pytest.mark.parametrize(("mode", "expected"), [("none", None), ("average", "average")])
def test_spatial_pool_mode_becomes_the_tile_pool(sources, tmp_path, mode, expected):
    src = tmp_path / "src"
    shutil.copytree(sources["qwen2"][1], src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "mm_spatial_pool_mode": mode}))
    bb = Backbone.from_pretrained(convert_original_llava(src, tmp_path / "out"), dtype="float32")
    assert bb.anyres_tile_pool == expected
    config["mm_spatial_pool_mode"] = "nearest"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="mm_spatial_pool_mode='nearest'"):
        convert_original_llava(src, tmp_path / "out2")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prompt_equals_the_seed_prompt(converted, family):
    _, dst, _ = converted[family]
    assert dst.build_prompt(QUESTION) == SEED_PROMPTS[family]
    prefix, suffix = dst.split_prompt(QUESTION)
    assert dst.tokenizer.decode(prefix.tolist() + [dst.config.image_token_id] + suffix.tolist()).endswith(
        SEED_PROMPTS[family][-12:]
    )
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = dst.processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=False)
    assert text == SEED_PROMPTS[family]  # processor-style contents give the same prompt


def test_qwen2_template_keeps_a_given_system_message():
    from jinja2 import Template

    messages = [{"role": "system", "content": "S."}, {"role": "user", "content": "q"}]
    text = Template(QWEN2_CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=False)
    assert text == "<|im_start|>system\nS.<|im_end|>\n<|im_start|>user\nq\n<|im_end|>\n"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rfm_weights_load_from_the_converted_folder(converted, sources, family):
    from safetensors import safe_open

    from lrs_plugin.focus.rfm import RFM_PREFIX, read_original_rfm_weights
    from lrs_plugin.focus.scorers import build_focus
    from lrs_plugin.reducers.c2f import resolve_focus_name

    _, dst, out = converted[family]
    scorer = build_focus("rfm", dst)  # no knob: layer list from config.rfm, weights from the checkpoint folder
    assert scorer.llm_layer_list == tuple(LAYER_LIST) and Path(scorer.weights_source) == out
    stored = read_original_rfm_weights(sources[family][1])
    assert stored and all(torch.equal(scorer.module.state_dict()[k], v) for k, v in stored.items())
    with safe_open(str(out / RFM_FILE), "pt") as f:
        assert all(k.startswith(RFM_PREFIX) for k in f.keys())  # noqa: SIM118 (safe_open is not a Mapping)
    assert resolve_focus_name("auto", dst) == "rfm"


def _edit_weights(orig: Path, tmp: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    copy = tmp / "edited"
    shutil.copytree(orig, copy)
    state = load_file(str(copy / "model.safetensors"))
    edit(state)
    save_file(state, str(copy / "model.safetensors"), metadata={"format": "pt"})
    return copy


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.update({"model.mm_projector.extra.weight": torch.zeros(1)}), "model.mm_projector.extra.weight"),
        (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"), "model.layers.1.mlp.up_proj.weight"),
        (lambda s: s.pop("model.image_newline"), "model.image_newline"),
        (
            lambda s: s.update({"model.layers.9.mlp.up_proj.weight": torch.zeros(1)}),
            "model.layers.9.mlp.up_proj.weight",
        ),
        (
            lambda s: s.pop("model.mm_projector.token_pruner.layers.1.mlp.up_proj.weight"),
            "model.mm_projector.token_pruner.layers.1.mlp.up_proj.weight",
        ),
        (lambda s: s.pop("model.mm_projector.mlp_projector.2.bias"), "model.mm_projector.mlp_projector.2.bias"),
    ],
    ids=["unknown", "missing-llm", "missing-newline", "extra-layer", "missing-rfm", "missing-projector"],
)
def test_unknown_or_missing_keys_are_refused_by_name(sources, tmp_path, edit, named):
    source = _edit_weights(sources["qwen2"][1], tmp_path, edit)
    with pytest.raises(CheckpointLayoutError, match=named.replace(".", r"\.")):
        convert_original_llava(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_model_type_and_existing_output(sources, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(sources["llama"][1], source)
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError, match="overwrite"):
        convert_original_llava(source, tmp_path / "out")
    out = convert_original_llava(source, tmp_path / "out", overwrite=True, dtype="float16")
    assert json.loads((out / "config.json").read_text())["rfm"]["llm_layer_list"] == LAYER_LIST
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "llava_mistral"}))
    with pytest.raises(ConfigError, match="llava_mistral.*valid: llava_qwen, llava_llama"):
        convert_original_llava(source, tmp_path / "out2")


def test_vision_tower_weights_from_the_checkpoint_only_when_unfrozen(sources, tmp_path):
    hf_dir, orig = sources["llama"]
    tower_keys = {}

    def add_tower(state):
        from transformers import CLIPVisionModel

        tower = CLIPVisionModel.from_pretrained(orig.parent / f"{orig.name}_clip")
        for k, v in tower.state_dict().items():
            tower_keys[k] = v + 1.0
            state[f"model.vision_tower.vision_tower.vision_model.{k}"] = v + 1.0

    source = _edit_weights(orig, tmp_path, add_tower)
    frozen = Backbone.from_pretrained(convert_original_llava(source, tmp_path / "frozen"), dtype="float32")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "unfreeze_mm_vision_tower": True}))
    unfrozen = Backbone.from_pretrained(convert_original_llava(source, tmp_path / "unfrozen"), dtype="float32")
    key = "embeddings.patch_embedding.weight"
    src = Backbone.from_pretrained(hf_dir, dtype="float32")
    assert torch.equal(
        frozen.model.model.vision_tower.state_dict()[key], src.model.model.vision_tower.state_dict()[key]
    )
    assert torch.equal(unfrozen.model.model.vision_tower.state_dict()[key], tower_keys[key])
    assert frozen.config.conversion["vision_tower_weights"] == "vision_tower"
    assert unfrozen.config.conversion["vision_tower_weights"] == "checkpoint"


def test_cli_convert(sources, tmp_path, capsys):
    from lrs_plugin.cli import main

    assert main(["convert", str(sources["qwen2"][1]), str(tmp_path / "out")]) == 0
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "out"
    assert (tmp_path / "out" / RFM_FILE).is_file()
    assert main(["convert", str(sources["qwen2"][1]), str(tmp_path / "out")]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["convert", str(sources["qwen2"][1]), str(tmp_path / "out"), "--overwrite", "--dtype", "bfloat16"]) == 0


def _save_clip_model_bin(tower_dir: Path, folder: Path) -> Path:
    """The tower as the real ``openai/clip-vit-large-patch14-336`` ships it: a whole CLIPModel, ``.bin`` only."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    tower = CLIPVisionModel.from_pretrained(tower_dir)
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=tower.config.to_dict(), projection_dim=8))
    clip.vision_model.load_state_dict(tower.state_dict())
    folder.mkdir()
    clip.config.save_pretrained(folder)
    torch.save(clip.state_dict(), folder / "pytorch_model.bin")
    shutil.copy(tower_dir / "preprocessor_config.json", folder)
    return folder


def test_hub_ids_go_through_the_download_wrapper(sources, tmp_path, monkeypatch):
    import fnmatch

    from lrs_plugin.data import _hub

    hf_dir, orig = sources["qwen2"]
    model_repo = tmp_path / "hub_model"
    shutil.copytree(orig, model_repo)
    repos = {
        "ll-13/tiny-largeimg-qwen2": model_repo,
        "openai/tiny-clip": _save_clip_model_bin(orig.parent / f"{orig.name}_clip", tmp_path / "hub_clip"),
    }
    config_path = model_repo / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "mm_vision_tower": "openai/tiny-clip"}))
    calls = []

    def fake_download(repo_id, *, revision, local_dir, allow_patterns=None, repo_type="dataset"):
        calls.append((repo_id, repo_type, tuple(allow_patterns)))
        for path in repos[repo_id].iterdir():
            if any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                shutil.copy(path, local_dir)
        return Path(local_dir)

    monkeypatch.setattr(_hub, "snapshot_download", fake_download)
    out = convert_original_llava("ll-13/tiny-largeimg-qwen2", tmp_path / "out")
    assert [c[:2] for c in calls] == [("ll-13/tiny-largeimg-qwen2", "model")] + [("openai/tiny-clip", "model")] * 2
    assert calls[-1][2] == ("pytorch_model*.bin",)  # no safetensors in the tower repo: the .bin is fetched next
    converted = Backbone.from_pretrained(out, dtype="float32")
    assert converted.config.conversion["vision_tower"] == "openai/tiny-clip"
    px = torch.randn(1, 3, converted.tile_size, converted.tile_size, generator=torch.Generator().manual_seed(0))
    source = Backbone.from_pretrained(hf_dir, dtype="float32")
    torch.testing.assert_close(converted.encode_tiles(px), source.encode_tiles(px), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_converted_model_runs_c2f_with_its_rfm_and_the_stock_path(converted, make_image_file, family):
    from PIL import Image

    from lrs_plugin.c2f.driver import run_c2f
    from lrs_plugin.focus.scorers import build_focus
    from lrs_plugin.imagery.large_image import LargeImage

    _, dst, _ = converted[family]
    path = make_image_file(480, 700)
    image = LargeImage(path)
    try:
        result = run_c2f(dst, image, QUESTION, build_focus("rfm", dst), max_new_tokens=3)
    finally:
        image.close()
    assert [p.level for p in result.record.focus_passes] == [0, 1]
    # The stock transformers path embeds the <image> ids: the added token has an embedding row.
    pil = Image.open(path).convert("RGB")
    inputs = dst.processor(images=[pil], text=[dst.build_prompt(QUESTION)], return_tensors="pt")
    with torch.no_grad():
        out = dst.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert dst.config.image_token_id not in out[0, inputs["input_ids"].shape[1] :].tolist()
    assert dst.plain_vision_embeds(pil).shape[-1] == dst.hidden_size


def test_sharded_source_and_loader_added_tokens(sources, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "sharded"
    shutil.copytree(sources["llama"][1], src)
    state = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(src / file), metadata={"format": "pt"})
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "mm_use_im_patch_token": True}))
    bb = Backbone.from_pretrained(convert_original_llava(src, tmp_path / "out"), dtype="float32")
    vocab = state["model.embed_tokens.weight"].shape[0]
    # The original loader adds <im_patch> (then resizes, random row); <image> comes after it; both are suppressed.
    assert bb.tokenizer.convert_tokens_to_ids("<im_patch>") == vocab and bb.config.image_token_id == vocab + 1
    assert bb.model.generation_config.suppress_tokens == [vocab, vocab + 1]
    assert torch.equal(bb.language_model.embed_tokens.weight[:vocab], state["model.embed_tokens.weight"])
    assert not bb.lm_head.weight[vocab:].any()


def test_sentencepiece_only_tokenizer_converts(sources, tmp_path):
    """Vicuna checkpoints ship only ``tokenizer.model``; it must load (sentencepiece pinned for protobuf 6)."""
    import sentencepiece as spm

    src = tmp_path / "spm_source"
    shutil.copytree(sources["llama"][1], src)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (src / name).unlink(missing_ok=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"what color is the largest building number {i} answer yes no" for i in range(200)))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(src / "tokenizer"), vocab_size=64, model_type="bpe", minloglevel=2
    )
    (src / "tokenizer.vocab").unlink()
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    bb = Backbone.from_pretrained(convert_original_llava(src, tmp_path / "out"), dtype="float32")
    assert bb.config.image_token_id == 64  # appended after the 64 SentencePiece pieces
    assert bb.build_prompt(QUESTION) == SEED_PROMPTS["llama"]
    prefix, suffix = bb.split_prompt(QUESTION)
    assert prefix.numel() > 0 and suffix.numel() > 0


def test_rfm_file_found_next_to_a_sharded_model(converted, sources, tmp_path):
    """A converted folder re-saved with a shard index still exposes its separate ``rfm.safetensors``."""
    from safetensors import safe_open

    from lrs_plugin.focus.rfm import read_original_rfm_weights

    _, _, out = converted["qwen2"]
    folder = tmp_path / "sharded_out"
    shutil.copytree(out, folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        weight_map = {k: "model.safetensors" for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    stored = read_original_rfm_weights(folder)
    expected = read_original_rfm_weights(sources["qwen2"][1])
    assert stored.keys() == expected.keys() and all(torch.equal(stored[k], expected[k]) for k in stored)


def test_pinpoints_are_read_as_the_original_width_height_pairs():
    from lrs_plugin.backbone._convert_config import _pinpoints

    assert _pinpoints([[336, 672], [672, 336]], 336) == [[672, 336], [336, 672]]  # (w, h) -> [h, w]
    assert _pinpoints("(1x1),(1x2),(2x3)", 14) == [[14, 14], [28, 14], [42, 14], [14, 28], [28, 28], [42, 28]]
    assert _pinpoints(None, 336)[0] == [336, 672]
    with pytest.raises(ConfigError, match="range"):
        _pinpoints("(3x3)", 14)


def test_converted_folder_is_readable_by_others(converted):
    import os
    import stat

    _, _, out = converted["qwen2"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_convert_reads_dtype_as_the_adapter_does(tmp_path):
    # One dtype reading (backbone.adapter): the same choices and the same refusal, before the source is touched.
    from lrs_plugin.backbone import adapter, convert

    assert convert.DTYPES is adapter.DTYPES
    with pytest.raises(
        ConfigError, match="dtype='fp8' is not supported; valid choices: auto, float32, float16, bfloat16"
    ):
        convert_original_llava(tmp_path / "missing", tmp_path / "out", dtype="fp8")
    assert (
        convert._cast({"w": torch.ones(1), "i": torch.ones(1, dtype=torch.long)}, "float16")["w"].dtype == torch.float16
    )
