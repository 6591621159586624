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

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lrs_plugin.backbone._convert_config import (
    FAMILIES,
    LLM_KEYS,
    generation_config,
    llava_next_config,
    llava_next_processor,
    load_tokenizer,
    load_vision_tower,
    read_config,
)
from lrs_plugin.backbone._convert_state import convert_state, read_tensors
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

DTYPES = ADAPTER_DTYPES
"""``dtype`` choices (the adapter's): ``auto`` keeps every tensor's stored dtype (the CLIP tower usually float32,
method.md §7.3)."""

RFM_FILE = "rfm.safetensors"
"""File of the converted folder holding the RFM weights under ``model.mm_projector.token_pruner.``."""

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


def _cast(state: dict[str, Any], dtype: str) -> dict[str, Any]:
    target = _resolve_dtype(dtype)
    if target == "auto":
        return state
    return {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}


def _write(folder: Path, state: dict[str, Any], rfm: dict[str, Any], config: Any, processor: Any, gen: Any) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), {"format": "pt"})
    if rfm:
        meta = {"format": "pt", "num_rfm_layers": str(config.rfm["num_rfm_layers"])}
        save_file({k: v.contiguous() for k, v in rfm.items()}, str(folder / RFM_FILE), metadata=meta)
    config.save_pretrained(folder)
    gen.save_pretrained(folder)
    processor.save_pretrained(folder)


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
    orig, family = read_config(src)
    tower_source = vision_tower if vision_tower is not None else orig.get("mm_vision_tower")
    if tower_source is None:
        raise ConfigError(f"{src}/config.json has no mm_vision_tower; pass vision_tower=")
    vision_config, clip_processor, tower_state = load_vision_tower(
        _resolve(tower_source, "vision tower", ["*.json", "*.safetensors", "*.txt"], ["pytorch_model*.bin"])
    )
    template = QWEN2_CHAT_TEMPLATE if family == "qwen2" else VICUNA_V1_CHAT_TEMPLATE
    tokenizer, n_seed = load_tokenizer(src, orig, template)
    config = llava_next_config(orig, family, tokenizer, vision_config)
    state, rfm, record = convert_state(read_tensors(src), orig, config, tower_state)
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
        "original_config": {k: v for k, v in orig.items() if k not in {*LLM_KEYS["common"], *LLM_KEYS[family]}},
    }
    lm_dtype = state["model.language_model.embed_tokens.weight"].dtype if dtype == "auto" else target_dtype
    config.dtype = config.text_config.dtype = str(lm_dtype).removeprefix("torch.")
    tower = next(v for k, v in state.items() if k.startswith("model.vision_tower."))
    config.vision_config.dtype = str(tower.dtype if dtype == "auto" else lm_dtype).removeprefix("torch.")
    processor = llava_next_processor(config, clip_processor, tokenizer, template)
    gen = generation_config(src, config.text_config, suppress)
    _replace_atomically(out, lambda tmp: _write(tmp, _cast(state, dtype), _cast(rfm, dtype), config, processor, gen))
    return out
