r"""Tiny random LLaVA checkpoints built from configs, for tests and demos (no Hub, no downloaded weights).

:func:`build_tiny_llava` writes a complete checkpoint folder that loads through the ordinary ``from_pretrained``
paths (``AutoModelForImageTextToText``, ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``,
``AutoProcessor``, ``AutoTokenizer``, ``GenerationConfig``):

* a CLIP vision tower (``image_size`` px tiles of ``patch_size`` px patches; ``56 / 14`` -> a 4x4 patch grid);
* a Llama or Qwen2 text model (hidden 64, 4 heads with 2 key/value heads, untied ``lm_head``);
* a byte-level BPE tokenizer trained locally on a small built-in English corpus (:data:`CORPUS`, which holds the
  LRS-VQA answer vocabulary), with an ``<image>`` special token whose id is ``config.image_token_id``;
* a chat template: LLaVA-1.5 / Vicuna style (``USER: <image>\n... ASSISTANT:``) for Llama, ChatML for Qwen2;
* the image processor and the ``LlavaProcessor`` / ``LlavaNextProcessor`` (``<image>`` expands to the number of
  vision tokens the model inserts);
* a greedy ``generation_config``.

Everything is deterministic for a given ``seed``. Two changes to the random initialisation keep greedy decoding
informative: weights are drawn with a larger standard deviation (``init_std``) so that logits differ clearly from
token to token and from image to image, and the ``lm_head`` rows of the special tokens other than EOS and of the
byte pieces that are not printable ASCII are zeroed, so that decoding emits readable text (EOS stays possible).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from lrs_plugin.backbone.adapter import SUPPORTED_ARCHS, SUPPORTED_TEXT_MODELS

__all__ = ["ARCHS", "CORPUS", "LMS", "TINY_REDUCER_OPTIONS", "VARIANTS", "build_tiny_llava", "chat_template_for"]

ARCHS = SUPPORTED_ARCHS
"""Multimodal architectures :func:`build_tiny_llava` can build (``config.model_type``): every one the adapter takes."""

LMS = SUPPORTED_TEXT_MODELS
"""Text model families :func:`build_tiny_llava` can build (``config.text_config.model_type``): the adapter's."""

VARIANTS: tuple[tuple[str, str], ...] = (
    ("llava", "llama"),
    ("llava_next", "qwen2"),
    ("llava_next", "llama"),
    ("llava", "qwen2"),
)
"""``(arch, lm)`` pairs the tests build: LLaVA-1.5 + Llama and LLaVA-NeXT + Qwen2 (the released models), and the
two cross pairs."""

TINY_REDUCER_OPTIONS: dict[str, str] = {
    "c2f": "focus=llm_attention,focus_layer=1",
    "none": "",
    "fastv": "",
    "pdrop": "",
    "random": "",
    "downsample": "",
    "visionzip": "dominant=4,contextual=2",
    "prumerge": "adaptive=false,reduction_ratio=0.25",
    "anyres": "max_tiles=1",
    "blind": "",
}
"""``--model_args`` fragment per registered reducer that fits the tiny checkpoints (2 decoder layers, 16 patches a
tile): e.g. a focus layer that exists, VisionZip budgets under 16 tokens."""

CORPUS: tuple[str, ...] = (
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "You are a helpful assistant. USER: ASSISTANT: system user assistant",
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly. (A) (B) (C) (D) (E) A B C D E",
    "What color is the largest building? What is the color of the top-most car?",
    "How many ships are docked in the harbor? How many airplanes are parked on the tarmac?",
    "Is the bottom-most bridge crossing a river? Is the image rural or urban?",
    "What is the shape of the storage tank? What is the status of the right-most plane?",
    "What is the structure parallel and closest to the runway? Where is the vehicle located?",
    "Which object is on the left? Which is bigger? What category does the left-most object belong to?",
    "yes no urban rural 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100",
    "zero one two three four five six seven eight nine ten eleven twelve many none",
    "white grey gray red green blue yellow black brown orange purple pink silver dark light colorful",
    "rectangular rectangle circular circle oval square triangular linear straight curved irregular cylindrical",
    "t-shaped l-shaped round elongated",
    "parked stationary moving taxiing docked sailing inactive empty active under construction",
    "building buildings road roads trees tree grass vegetation water river lake sea bridge dock harbor port",
    "runway taxiway tarmac terminal terminal building hangar airport aircraft airplane airplanes plane planes",
    "parking lot parking vehicle parking aircraft parking jet bridge highway storage tank industrial",
    "car cars truck trucks vehicle vehicles service vehicles ship ships boat boats transportation",
    "roundabout intersection soccer field tennis court baseball field swimming pool stadium farmland",
    "top bottom left right center middle upper lower top-most bottom-most left-most right-most largest smallest",
    "the a an of in on at to from with near next above below between behind beside and or is are",
    "there it this that which what how many where when why who color shape status category background",
    "The image shows a busy airport with several airplanes parked near the terminal building.",
    "Two white cars are parked on the road next to a large grey building with a flat roof.",
    "A long bridge crosses the river; small boats are docked along the bank.",
    "The field is green and the houses are red. The lake is blue and the sand is yellow.",
    "There are three trucks, four cars and one bus in the parking lot.",
)
"""Training text of the tiny tokenizer: prompt words, LRS-VQA / MME-RealWorld-RS question and answer vocabulary."""

_VICUNA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ (message['content'] if message['content'] is string else message['content'][0]['text']) + ' ' }}"
    "{% else %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ ' ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_IMAGE_TOKEN = "<image>"
_WIDTHS = (
    "text_hidden",
    "text_intermediate",
    "text_heads",
    "text_kv_heads",
    "rope_theta",
    "vision_hidden",
    "vision_intermediate",
    "vision_heads",
)
# Per text-model family: special tokens in id order (ids 0..k-1) and their roles.
_SPECIALS: dict[str, dict[str, Any]] = {
    "llama": {
        "tokens": ["<unk>", "<s>", "</s>", "<pad>", _IMAGE_TOKEN],
        "roles": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
        "add_bos": True,
    },
    "qwen2": {
        "tokens": ["<unk>", "<s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", _IMAGE_TOKEN],
        "roles": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "add_bos": False,
    },
}


def chat_template_for(lm: str) -> str:
    """Return the chat template the tiny checkpoints use for a text-model family.

    Args:
        lm: ``"llama"`` (LLaVA-1.5 / Vicuna style) or ``"qwen2"`` (ChatML).

    Returns:
        A Jinja template accepting both plain-string message contents (as lmms-eval's ``llava_hf`` passes them) and
        lists of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts (as processors pass them).

    Raises:
        ConfigError: ``lm`` is not one of :data:`LMS`.

    """
    _check_choice("lm", lm, LMS)
    return _VICUNA_TEMPLATE if lm == "llama" else _CHATML_TEMPLATE


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    from lrs_plugin.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported; valid choices: {', '.join(choices)}")


def _build_tokenizer(lm: str, vocab_size: int, corpus: tuple[str, ...] = CORPUS) -> Any:
    """Train a byte-level BPE tokenizer on ``corpus`` (:data:`CORPUS`) and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = _SPECIALS[lm]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    if spec["add_bos"]:
        bos = spec["roles"]["bos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **spec["roles"],
        extra_special_tokens={"image_token": _IMAGE_TOKEN},
        chat_template=chat_template_for(lm),
        model_max_length=4096,
    )


def _text_config(
    lm: str, *, vocab_size: int, tokenizer: Any, layers: int, init_std: float, widths: dict[str, Any]
) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    common = {
        "vocab_size": vocab_size,
        "hidden_size": widths.get("text_hidden", 64),
        "intermediate_size": widths.get("text_intermediate", 128),
        "num_hidden_layers": layers,
        "num_attention_heads": widths.get("text_heads", 4),
        "num_key_value_heads": widths.get("text_kv_heads", 2),
        "max_position_embeddings": 4096,
        "initializer_range": init_std,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if widths.get("rope_theta") is not None:
        common["rope_parameters"] = {"rope_type": "default", "rope_theta": float(widths["rope_theta"])}
    return LlamaConfig(**common) if lm == "llama" else Qwen2Config(**common)


def _model_config(
    arch: str,
    text_config: Any,
    *,
    image_token_id: int,
    image_size: int,
    patch_size: int,
    vl: int,
    widths: dict[str, Any],
) -> Any:
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaNextConfig

    vision_config = CLIPVisionConfig(
        hidden_size=widths.get("vision_hidden", 32),
        intermediate_size=widths.get("vision_intermediate", 64),
        num_hidden_layers=vl,
        num_attention_heads=widths.get("vision_heads", 4),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    common = {
        "vision_config": vision_config,
        "text_config": text_config,
        "image_token_id": image_token_id,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "image_seq_length": (image_size // patch_size) ** 2,
        "tie_word_embeddings": False,
    }
    if arch == "llava":
        return LlavaConfig(**common)
    s = image_size
    pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [s, 3 * s], [3 * s, s]]
    return LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)


def _processor(arch: str, tokenizer: Any, config: Any, lm: str) -> Any:
    from transformers import CLIPImageProcessor, LlavaNextImageProcessor, LlavaNextProcessor, LlavaProcessor

    s = config.vision_config.image_size
    image_kwargs = {"size": {"shortest_edge": s}, "crop_size": {"height": s, "width": s}}
    proc_kwargs = {
        "tokenizer": tokenizer,
        "patch_size": config.vision_config.patch_size,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "num_additional_image_tokens": 1,  # CLIP prepends one CLS token
        "chat_template": chat_template_for(lm),
    }
    if arch == "llava":
        return LlavaProcessor(image_processor=CLIPImageProcessor(**image_kwargs), **proc_kwargs)
    image_processor = LlavaNextImageProcessor(**image_kwargs, image_grid_pinpoints=config.image_grid_pinpoints)
    return LlavaNextProcessor(image_processor=image_processor, **proc_kwargs)


def _silent_ids(tokenizer: Any) -> list[int]:
    """Ids the tiny models never emit: special tokens other than EOS, and pieces that are not printable ASCII."""
    allowed = set(string.ascii_letters + string.digits + string.punctuation + " \n")
    specials = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    silent = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id in specials or not text or not set(text) <= allowed:
            silent.append(token_id)
    return silent


def build_tiny_llava(
    out_dir: str | Path,
    *,
    arch: str = "llava",
    lm: str = "llama",
    seed: int = 0,
    image_size: int = 56,
    patch_size: int = 14,
    text_layers: int = 2,
    vision_layers: int = 2,
    vocab_size: int = 512,
    init_std: float = 0.25,
    widths: dict[str, Any] | None = None,
    corpus: tuple[str, ...] = CORPUS,
    silence: bool = True,
) -> Path:
    """Build, save and return a tiny random LLaVA checkpoint folder.

    Args:
        out_dir: Folder to write (created if missing; files inside are overwritten).
        arch: ``"llava"`` (``LlavaForConditionalGeneration``, LLaVA-1.5 layout) or ``"llava_next"``
            (``LlavaNextForConditionalGeneration``: anyres tiles, ``image_newline``; ``image_grid_pinpoints`` are
            multiples of ``image_size``).
        lm: Text model family, ``"llama"`` (Vicuna chat template) or ``"qwen2"`` (ChatML).
        seed: Seed of the weights; the tokenizer does not depend on it.
        image_size: Vision tile side in pixels (CLIP ``image_size``).
        patch_size: CLIP patch side in pixels; ``image_size`` must be a multiple of it.
        text_layers: Decoder layers of the text model.
        vision_layers: CLIP encoder layers (at least 2: the feature layer is ``-2``).
        vocab_size: Target BPE vocabulary size (the trainer may stop earlier on the small corpus); the model's
            ``vocab_size`` is the tokenizer's final length.
        init_std: Standard deviation of the random weights (``initializer_range`` of both towers).
        widths: Overrides of the tiny sizes: ``text_hidden`` (64), ``text_intermediate`` (128), ``text_heads`` (4),
            ``text_kv_heads`` (2), ``rope_theta`` (the family's default), ``vision_hidden`` (32),
            ``vision_intermediate`` (64), ``vision_heads`` (4). The testbed model (:mod:`lrs_plugin.testbed`) uses
            them; the test checkpoints keep the defaults.
        corpus: Training text of the tokenizer (default :data:`CORPUS`).
        silence: Zero the ``lm_head`` rows of the tokens decoding should never emit (see the module docstring);
            ``False`` for a checkpoint that is going to be trained.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: an unknown ``arch`` / ``lm`` or inconsistent sizes.

    """
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    from lrs_plugin.errors import ConfigError

    _check_choice("arch", arch, ARCHS)
    _check_choice("lm", lm, LMS)
    if image_size % patch_size:
        raise ConfigError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
    if vision_layers < 2:
        raise ConfigError(f"vision_layers={vision_layers} must be >= 2 (the feature layer is -2)")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    widths = dict(widths or {})
    unknown = sorted(set(widths) - set(_WIDTHS))
    if unknown:
        raise ConfigError(f"widths has unknown keys {unknown}; valid: {', '.join(_WIDTHS)}")
    tokenizer = _build_tokenizer(lm, vocab_size, corpus)
    image_token_id = tokenizer.convert_tokens_to_ids(_IMAGE_TOKEN)
    text_config = _text_config(
        lm, vocab_size=len(tokenizer), tokenizer=tokenizer, layers=text_layers, init_std=init_std, widths=widths
    )
    config = _model_config(
        arch,
        text_config,
        image_token_id=image_token_id,
        image_size=image_size,
        patch_size=patch_size,
        vl=vision_layers,
        widths=widths,
    )
    config.vision_config.initializer_range = init_std
    config.vision_config.initializer_factor = init_std / 0.02

    model_cls = LlavaForConditionalGeneration if arch == "llava" else LlavaNextForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    if silence:
        with torch.no_grad():
            model.lm_head.weight[_silent_ids(tokenizer)] = 0.0
    model.generation_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    _processor(arch, tokenizer, config, lm).save_pretrained(out)
    return out
