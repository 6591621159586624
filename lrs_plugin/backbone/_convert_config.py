"""Plumbing of :func:`lrs_plugin.backbone.convert.convert_original_llava`: the LLaVA-NeXT config, tokenizer, processor.

From the original ``config.json`` (method.md §5): the text config of the family (Llama or Qwen2) with the keys it
shares, the anyres pinpoints read as the original code reads them (``(width, height)`` pairs), the CLIP tower's
config and image processor, the tokenizer with the original loader's added tokens and ``<image>``, the processor and
the generation config (ids outside the seed's vocabulary suppressed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lrs_plugin.backbone.language import IMAGE_TOKEN
from lrs_plugin.errors import ConfigError

__all__ = [
    "FAMILIES",
    "LLM_KEYS",
    "generation_config",
    "llava_next_config",
    "llava_next_processor",
    "load_tokenizer",
    "load_vision_tower",
    "read_config",
]

FAMILIES = {"llava_qwen": "qwen2", "llava_llama": "llama"}
"""Original ``model_type`` -> text model family."""

LLM_KEYS = {
    "common": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "max_position_embeddings",
        "initializer_range",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "attention_dropout",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ),
    "llama": ("attention_bias", "mlp_bias", "pretraining_tp"),
    "qwen2": ("use_sliding_window", "sliding_window", "max_window_layers"),
}


def read_config(src: Path) -> tuple[dict[str, Any], str]:
    """The original ``config.json`` and the text family, with the vision settings the converter supports checked."""
    path = src / "config.json"
    if not path.is_file():
        raise ConfigError(f"{src} has no config.json (expected an original LLaVA checkpoint folder)")
    orig = json.loads(path.read_text())
    family = FAMILIES.get(orig.get("model_type"))
    if family is None:
        raise ConfigError(
            f"{path}: model_type={orig.get('model_type')!r} is not supported; valid: {', '.join(FAMILIES)}"
        )
    select = orig.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise ConfigError(f"{path}: mm_vision_select_feature={select!r} is not supported; valid: patch, cls_patch")
    layer = orig.get("mm_vision_select_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ConfigError(f"{path}: mm_vision_select_layer={layer!r} must be one int (the released models use -2)")
    return orig, family


def _text_config(orig: dict[str, Any], family: str, vocab_size: int) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    kwargs = {k: orig[k] for k in (*LLM_KEYS["common"], *LLM_KEYS[family]) if k in orig}
    kwargs["vocab_size"] = vocab_size
    return (Qwen2Config if family == "qwen2" else LlamaConfig)(**kwargs)


def _pinpoints(value: object, tile: int) -> list[list[int]]:
    """``image_grid_pinpoints`` as transformers' ``[height, width]`` pairs.

    The original LLaVA code reads its pinpoints as ``(width, height)`` pairs (``for width, height in ...``), so each
    pair is swapped. Accepted: a list of pairs, a ``"(1x1),...,(AxB)"`` range (first and last entries, as the original
    code reads it), or absent (LLaVA-NeXT's default list).
    """
    if value is None:
        return [[tile * h, tile * w] for h, w in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]
    if isinstance(value, str):
        grids = [tuple(map(int, m)) for m in re.findall(r"\((\d+)x(\d+)\)", value)]
        if len(grids) < 2:
            raise ConfigError(f"image_grid_pinpoints={value!r}: expected a list or a '(1x1),...,(AxB)' range")
        (w0, h0), (w1, h1) = grids[0], grids[-1]
        return [[tile * h, tile * w] for w in range(w0, w1 + 1) for h in range(h0, h1 + 1)]
    return [[int(h), int(w)] for w, h in value]  # type: ignore[union-attr]


def llava_next_config(orig: dict[str, Any], family: str, tokenizer: Any, vision_config: Any) -> Any:
    from transformers import LlavaNextConfig

    text_config = _text_config(orig, family, len(tokenizer))
    tile = int(vision_config.image_size)
    return LlavaNextConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=orig.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="full" if orig.get("mm_vision_select_feature") == "cls_patch" else "default",
        image_grid_pinpoints=_pinpoints(orig.get("image_grid_pinpoints"), tile),
        image_seq_length=(tile // vision_config.patch_size) ** 2,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )


def load_vision_tower(tower_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """CLIP vision config, image processor and weights (CLIPVisionModel names) of a tower folder."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    if not (tower_dir / "preprocessor_config.json").is_file():
        raise ConfigError(f"vision tower {tower_dir} has no preprocessor_config.json (CLIP image processor settings)")
    tower = CLIPVisionModel.from_pretrained(tower_dir, dtype="auto")
    return tower.config, CLIPImageProcessor.from_pretrained(tower_dir), tower.state_dict()


def load_tokenizer(source_dir: Path, orig: dict[str, Any], template: str) -> tuple[Any, int]:
    """The source tokenizer with the original loader's added tokens, then ``<image>``; returns ``(tok, n_seed)``."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source_dir)
    except (OSError, ValueError, ImportError) as exc:  # e.g. a SentencePiece-only tokenizer it cannot convert
        raise ConfigError(
            f"cannot load the tokenizer of {source_dir} ({type(exc).__name__}: {exc}); a tokenizer.model-only "
            "(SentencePiece) tokenizer needs the sentencepiece and protobuf packages in compatible versions"
        ) from exc
    # As the original loader does before resize_token_embeddings(len(tokenizer)) (method.md §5.3).
    if orig.get("mm_use_im_patch_token", True):
        tok.add_tokens(["<im_patch>"], special_tokens=True)
    if orig.get("mm_use_im_start_end", False):
        tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    n_seed = len(tok)
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tok.chat_template = template
    return tok, n_seed


def llava_next_processor(config: Any, clip_processor: Any, tokenizer: Any, template: str) -> Any:
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor")
    kwargs = {k: getattr(clip_processor, k) for k in (*keys, "do_normalize", "image_mean", "image_std")}
    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(**kwargs, image_grid_pinpoints=config.image_grid_pinpoints),
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=template,
    )


def generation_config(src: Path, text_config: Any, suppress: list[int]) -> Any:
    from transformers import GenerationConfig

    if (src / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(src)
    else:
        gen = GenerationConfig(bos_token_id=text_config.bos_token_id, eos_token_id=text_config.eos_token_id)
    gen.suppress_tokens = suppress or None  # ids outside the seed's vocabulary (e.g. the added <image>)
    return gen
