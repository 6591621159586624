"""Plumbing of :func:`lrs_plugin.backbone.convert.convert_original_llava`: the weights under transformers' names.

Every original key is mapped (LLM, projector, ``image_newline``; the CLIP tower from the checkpoint or from its own
folder, as the original loader would pick it), the embedding rows resized to the new vocabulary, and the result
checked against a meta-device ``LlavaNextForConditionalGeneration`` of the converted config: a missing or unknown key
is refused by its original-layout name. The Region Focus Module tensors keep their original names and are checked
against a :class:`~lrs_plugin.focus.rfm.RegionFocusModule` of the stored depth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrs_plugin.errors import CheckpointLayoutError, ConfigError

__all__ = ["convert_state", "read_tensors"]

_TOWER_PREFIX = "model.vision_tower.vision_tower."


def read_tensors(folder: Path) -> dict[str, Any]:
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


def convert_state(
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
