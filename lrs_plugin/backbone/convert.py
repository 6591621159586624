r"""Convert the released original-LLaVA-layout checkpoints into transformers' LLaVA-NeXT layout.

The paper's weights (``ll-13/llava-largeimg-Qwen2-7B``, ``model_type`` ``llava_qwen``;
``ll-13/llava-largeimg-Vicuna-7B``, ``llava_llama``) are stored as the original LLaVA repository writes them
(method.md §5). Both are rehosted on ``LlavaNextForConditionalGeneration`` (it has ``image_newline`` and the 2-layer
GELU projector, and accepts Llama or Qwen2 text configs, §5.2), so
:meth:`lrs_plugin.backbone.Backbone.from_pretrained` loads the result unchanged:

* LLM ``model.{embed_tokens,layers,norm}.*`` -> ``model.language_model.*``; ``lm_head.*`` unchanged;
* ``model.mm_projector.mlp_projector.{0,2}.*`` -> ``model.multi_modal_projector.linear_{1,2}.*``;
* ``model.image_newline`` unchanged;
* CLIP from ``mm_vision_tower`` (or ``vision_tower=``), or from ``model.vision_tower.vision_tower.vision_model.*`` when
  the original loader would use those (``unfreeze_mm_vision_tower``) -> ``model.vision_tower.*``;
* the Region Focus Module ``model.mm_projector.token_pruner.*`` is written, keys unchanged, to :data:`RFM_FILE`
  next to ``model.safetensors``, where :mod:`lrs_plugin.focus.rfm` finds it (``focus=rfm`` / ``focus=auto``).

Unknown or missing keys are refused (:class:`CheckpointLayoutError`). The chat templates reproduce the seed's prompts
(method.md §7.1); ``config.rfm`` and ``config.conversion`` record the RFM settings and what the conversion did.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lrs_plugin.backbone.adapter import DTYPES as ADAPTER_DTYPES
from lrs_plugin.backbone.adapter import _resolve_dtype
from lrs_plugin.backbone.chat_templates import QWEN2_CHAT_TEMPLATE, VICUNA_V1_CHAT_TEMPLATE
from lrs_plugin.errors import CheckpointLayoutError, ConfigError, OutputExistsError

__all__ = [
    "DTYPES",
    "FAMILIES",
    "QWEN2_CHAT_TEMPLATE",
    "RFM_FILE",
    "VICUNA_V1_CHAT_TEMPLATE",
    "CheckpointLayoutError",
    "OutputExistsError",
    "convert_original_llava",
]

FAMILIES = {"llava_qwen": "qwen2", "llava_llama": "llama"}
"""Original ``model_type`` -> text model family."""

DTYPES = ADAPTER_DTYPES
"""``dtype`` choices (the adapter's): ``auto`` keeps every tensor's stored dtype (the CLIP tower usually float32,
method.md §7.3)."""

RFM_FILE = "rfm.safetensors"
"""File of the converted folder holding the RFM weights under ``model.mm_projector.token_pruner.``."""

_IMAGE = "<image>"

_LLM_KEYS = {
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
_TOWER_PREFIX = "model.vision_tower.vision_tower."
_RFM_DEFAULTS = {
    "keep_ratio": 0.25,
    "base_long_side": 1008,
    "num_zoom_steps": 1,
    "separator_token": ":",
    "newline_vote_quirk": True,
    "masked_key_mode": "faithful",
}


def _resolve(source: str | Path, what: str, patterns: list[str], fallback: list[str] | None = None) -> Path:
    """A local folder as is; an ``owner/name`` id is downloaded through the Hub wrapper.

    ``fallback`` patterns are fetched too when the first download brought no ``*.safetensors`` file (e.g.
    ``openai/clip-vit-large-patch14-336`` ships ``pytorch_model.bin`` only).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        raise ConfigError(f"{what} {source!r} is neither a local folder nor a Hub id (owner/name)")
    from lrs_plugin.data import _hub
    from lrs_plugin.data._paths import cache_home

    local = cache_home() / "models" / str(source).replace("/", "--")
    local.mkdir(parents=True, exist_ok=True)
    folder = _hub.snapshot_download(
        str(source), revision="main", local_dir=local, allow_patterns=patterns, repo_type="model"
    )
    if fallback and not any(Path(folder).glob("*.safetensors")):
        folder = _hub.snapshot_download(
            str(source), revision="main", local_dir=local, allow_patterns=fallback, repo_type="model"
        )
    return Path(folder)


def _read_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor of the safetensors checkpoint in ``folder`` (single file or index + shards)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder} holds no safetensors weights (model.safetensors or an index with shards)")
    state: dict[str, Any] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                state[key] = f.get_tensor(key)
    return state


def _text_config(orig: dict[str, Any], family: str, vocab_size: int) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    kwargs = {k: orig[k] for k in (*_LLM_KEYS["common"], *_LLM_KEYS[family]) if k in orig}
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


def _vision(tower_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """CLIP vision config, image processor and weights (CLIPVisionModel names) of a tower folder."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    if not (tower_dir / "preprocessor_config.json").is_file():
        raise ConfigError(f"vision tower {tower_dir} has no preprocessor_config.json (CLIP image processor settings)")
    tower = CLIPVisionModel.from_pretrained(tower_dir, dtype="auto")
    return tower.config, CLIPImageProcessor.from_pretrained(tower_dir), tower.state_dict()


def _tokenizer(source_dir: Path, orig: dict[str, Any], template: str) -> tuple[Any, int]:
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
    if _IMAGE not in tok.get_vocab():
        tok.add_special_tokens({"extra_special_tokens": [_IMAGE]}, replace_extra_special_tokens=False)
    tok.chat_template = template
    return tok, n_seed


def _resize_rows(tensor: Any, rows: int) -> Any:
    """First ``rows`` rows of ``tensor``, zero rows appended when it has fewer."""
    import torch

    if tensor.shape[0] >= rows:
        return tensor[:rows].clone()
    pad = torch.zeros(rows - tensor.shape[0], *tensor.shape[1:], dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=0)


def _map_key(key: str) -> str | None:
    """Target name of an original key (``None`` for RFM / vision-tower keys, handled apart)."""
    if key.startswith(("model.mm_projector.token_pruner.", _TOWER_PREFIX)):
        return None
    if key.startswith(("model.embed_tokens.", "model.layers.", "model.norm.")):
        return "model.language_model." + key[len("model.") :]
    for i, j in (("0", "1"), ("2", "2")):
        prefix = f"model.mm_projector.mlp_projector.{i}."
        if key.startswith(prefix):
            return f"model.multi_modal_projector.linear_{j}." + key[len(prefix) :]
    if key == "lm_head.weight" or key == "model.image_newline":
        return key
    raise CheckpointLayoutError(
        f"unknown key {key!r} in the original checkpoint (not LLM, projector, newline, RFM, CLIP)"
    )


def _original_name(key: str) -> str:
    """The original-layout name a converted key comes from (inverse of :func:`_map_key`; tower keys as they are)."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    for i, j in (("0", "1"), ("2", "2")):
        prefix = f"model.multi_modal_projector.linear_{j}."
        if key.startswith(prefix):
            return f"model.mm_projector.mlp_projector.{i}." + key[len(prefix) :]
    return key


def _check_keys(have: set[str], expected: set[str], what: str) -> None:
    """Refuse the first missing, then the first unknown key, by its original-layout name."""
    missing, unexpected = sorted(expected - have), sorted(have - expected)
    if missing:
        name = _original_name(missing[0])
        raise CheckpointLayoutError(f"{what}: missing key {name!r} ({len(missing)} missing in all)")
    if unexpected:
        name = _original_name(unexpected[0])
        raise CheckpointLayoutError(f"{what}: unknown key {name!r} ({len(unexpected)} unknown in all)")


def _cast(state: dict[str, Any], dtype: str) -> dict[str, Any]:
    target = _resolve_dtype(dtype)
    if target == "auto":
        return state
    return {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}


def _rfm_state(orig_state: dict[str, Any], language_model: Any, layer_list: object) -> tuple[dict[str, Any], int]:
    """RFM tensors (original keys), checked against a ``RegionFocusModule`` of the stored depth."""
    from lrs_plugin.focus.rfm import RFM_PREFIX, RegionFocusModule, parse_layer_list, stored_layer_count

    rfm = {k: v for k, v in orig_state.items() if k.startswith(RFM_PREFIX)}
    if not rfm:
        return rfm, 0
    depth = stored_layer_count({k[len(RFM_PREFIX) :]: v for k, v in rfm.items()})
    if layer_list is not None:
        layers = parse_layer_list(layer_list, num_layers=len(language_model.layers))
        if depth != len(layers) + 1:
            raise CheckpointLayoutError(
                f"{depth} token_pruner layers stored, but llm_layer_list={list(layers)} implies {len(layers) + 1}"
            )
    expected = {RFM_PREFIX + k for k in RegionFocusModule(language_model, depth).state_dict()}
    _check_keys(set(rfm), expected, "RFM (model.mm_projector.token_pruner.*)")
    return rfm, depth


def _write(folder: Path, state: dict[str, Any], rfm: dict[str, Any], config: Any, processor: Any, gen: Any) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), {"format": "pt"})
    if rfm:
        meta = {"format": "pt", "num_rfm_layers": str(config.rfm["num_rfm_layers"])}
        save_file({k: v.contiguous() for k, v in rfm.items()}, str(folder / RFM_FILE), metadata=meta)
    config.save_pretrained(folder)
    gen.save_pretrained(folder)
    processor.save_pretrained(folder)


def _read_config(src: Path) -> tuple[dict[str, Any], str]:
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


def _llava_next_config(orig: dict[str, Any], family: str, tokenizer: Any, vision_config: Any) -> Any:
    from transformers import LlavaNextConfig

    text_config = _text_config(orig, family, len(tokenizer))
    tile = int(vision_config.image_size)
    return LlavaNextConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=tokenizer.convert_tokens_to_ids(_IMAGE),
        vision_feature_layer=orig.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="full" if orig.get("mm_vision_select_feature") == "cls_patch" else "default",
        image_grid_pinpoints=_pinpoints(orig.get("image_grid_pinpoints"), tile),
        image_seq_length=(tile // vision_config.patch_size) ** 2,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )


def _convert_state(
    orig_state: dict[str, Any], orig: dict[str, Any], config: Any, tower_state: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(state under LlavaNext names, RFM tensors under original names, record)``; every key accounted for."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    with torch.device("meta"):
        skeleton = LlavaNextForConditionalGeneration(config)
    expected = set(skeleton.state_dict())
    if config.text_config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    if "model.embed_tokens.weight" not in orig_state:
        raise CheckpointLayoutError("missing key 'model.embed_tokens.weight' in the original checkpoint")
    state = {name: orig_state[k] for k in orig_state if (name := _map_key(k)) is not None}
    rows = config.text_config.vocab_size
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in state:
            state[key] = _resize_rows(state[key], rows)
    # The original loader uses checkpoint tower weights only when it builds the tower before loading (§2.1).
    ckpt_tower = {k[len(_TOWER_PREFIX) :]: v for k, v in orig_state.items() if k.startswith(_TOWER_PREFIX)}
    from_ckpt = bool(ckpt_tower) and bool(orig.get("unfreeze_mm_vision_tower", False))
    for k, v in (ckpt_tower if from_ckpt else tower_state).items():
        short = k.removeprefix("vision_model.")
        names = (f"model.vision_tower.{short}", f"model.vision_tower.vision_model.{short}")
        name = next((n for n in names if n in expected), None)
        if name is None:
            raise CheckpointLayoutError(f"unknown vision-tower key {k!r} (no model.vision_tower.* counterpart)")
        state[name] = v
    _check_keys(set(state), expected, "original checkpoint (as LlavaNextForConditionalGeneration)")
    rfm, depth = _rfm_state(orig_state, skeleton.model.language_model, orig.get("llm_layer_list"))
    record = {
        "vision_tower_weights": "checkpoint" if from_ckpt else "vision_tower",
        "checkpoint_vision_tower_keys_ignored": 0 if from_ckpt else len(ckpt_tower),
        "checkpoint_embedding_rows": int(orig_state["model.embed_tokens.weight"].shape[0]),
        "num_rfm_layers": depth,
    }
    return state, rfm, record


def _processor(config: Any, clip_processor: Any, tokenizer: Any, template: str) -> Any:
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


def _generation_config(src: Path, text_config: Any, suppress: list[int]) -> Any:
    from transformers import GenerationConfig

    if (src / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(src)
    else:
        gen = GenerationConfig(bos_token_id=text_config.bos_token_id, eos_token_id=text_config.eos_token_id)
    gen.suppress_tokens = suppress or None  # ids outside the seed's vocabulary (e.g. the added <image>)
    return gen


def _replace_atomically(out: Path, write: Any) -> None:
    """``write(tmp)`` into a temporary sibling of ``out``, then rename it to ``out`` (replacing an old one)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700: others (another UID, a container) must read the model too
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            try:
                tmp.rename(out)
            except OSError:
                old.rename(out)  # put the previous model back
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def convert_original_llava(
    source: str | Path,
    out: str | Path,
    *,
    vision_tower: str | Path | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Convert an original-layout LLaVA checkpoint (``llava_qwen`` / ``llava_llama``) to a LLaVA-NeXT folder.

    Args:
        source: Local folder or Hub id with the original ``config.json``, safetensors weights (one file or an index
            with shards) and tokenizer files.
        out: Output folder (written atomically: a temporary sibling renamed at the end).
        vision_tower: CLIP folder or Hub id; default the original ``mm_vision_tower``.
        dtype: ``"auto"`` keeps each tensor's stored dtype; ``"float32"`` / ``"float16"`` / ``"bfloat16"`` cast all.
        overwrite: Replace an existing ``out``.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: unsupported ``model_type`` / ``dtype`` / vision settings, or an unusable source.
        CheckpointLayoutError: an unknown or missing key (named), or RFM weights that do not fit.
        OutputExistsError: ``out`` exists and ``overwrite`` is false.

    """
    target_dtype = _resolve_dtype(dtype)  # ConfigError naming the valid choices
    dtype = "auto" if target_dtype == "auto" else str(target_dtype).removeprefix("torch.")  # recorded as a name
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    src = _resolve(source, "source", ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    orig, family = _read_config(src)
    tower_source = vision_tower if vision_tower is not None else orig.get("mm_vision_tower")
    if tower_source is None:
        raise ConfigError(f"{src}/config.json has no mm_vision_tower; pass vision_tower=")
    vision_config, clip_processor, tower_state = _vision(
        _resolve(tower_source, "vision tower", ["*.json", "*.safetensors", "*.txt"], ["pytorch_model*.bin"])
    )
    template = QWEN2_CHAT_TEMPLATE if family == "qwen2" else VICUNA_V1_CHAT_TEMPLATE
    tokenizer, n_seed = _tokenizer(src, orig, template)
    config = _llava_next_config(orig, family, tokenizer, vision_config)
    state, rfm, record = _convert_state(_read_tensors(src), orig, config, tower_state)
    rows = config.text_config.vocab_size
    suppress = list(range(min(record["checkpoint_embedding_rows"], n_seed), rows))

    # The seed pools each anyres grid tile 2x2 after the projector unless mm_spatial_pool_mode is "none"
    # (method.md §2.3, the `spatial` merge of llava_arch.py); Backbone.anyres_tile_pool reads this.
    pool = orig.get("mm_spatial_pool_mode", "bilinear")
    if pool not in ("none", "average", "max", "bilinear"):
        raise ConfigError(f"mm_spatial_pool_mode={pool!r} is not supported; valid: none, average, max, bilinear")
    config.anyres_tile_pool = None if pool == "none" else pool
    config.rfm = {
        "llm_layer_list": orig.get("llm_layer_list"),
        "num_rfm_layers": record.pop("num_rfm_layers"),
        **_RFM_DEFAULTS,
        "tile": int(orig.get("slice_block_size", config.vision_config.image_size)),
        "weights_file": RFM_FILE if rfm else None,
    }
    config.conversion = {
        "source": str(source),
        "source_model_type": orig["model_type"],
        "vision_tower": str(tower_source),
        **record,
        "seed_vocab_size": n_seed,
        "embedding_rows": rows,
        "suppressed_token_ids": suppress,
        "dtype": dtype,
        "original_config": {k: v for k, v in orig.items() if k not in {*_LLM_KEYS["common"], *_LLM_KEYS[family]}},
    }
    lm_dtype = state["model.language_model.embed_tokens.weight"].dtype if dtype == "auto" else target_dtype
    config.dtype = config.text_config.dtype = str(lm_dtype).removeprefix("torch.")
    tower = next(v for k, v in state.items() if k.startswith("model.vision_tower."))
    config.vision_config.dtype = str(tower.dtype if dtype == "auto" else lm_dtype).removeprefix("torch.")
    processor = _processor(config, clip_processor, tokenizer, template)
    gen = _generation_config(src, config.text_config, suppress)
    _replace_atomically(out, lambda tmp: _write(tmp, _cast(state, dtype), _cast(rfm, dtype), config, processor, gen))
    return out
