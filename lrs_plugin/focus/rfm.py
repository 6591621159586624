"""The Region Focus Module as a standalone ``nn.Module``, and its weights in the released key layout.

The released checkpoints store the RFM under ``model.mm_projector.token_pruner.`` (method.md §3.1, §5.2):
``layers.{i}.*`` for ``i`` in ``0 .. R-1`` (decoder layers of the LLM's own class, ``R = len(llm_layer_list) + 1``)
and ``norm.weight``. :class:`RegionFocusModule` uses exactly those parameter names below the prefix, so loading is a
prefix strip plus a strict ``load_state_dict``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lrs_plugin.errors import ConfigError
from lrs_plugin.focus.attention import check_full_attention

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone

__all__ = [
    "RFM_PREFIX",
    "load_rfm",
    "RegionFocusModule",
    "backbone_layer_sources",
    "has_original_rfm_weights",
    "parse_layer_list",
    "read_original_rfm_weights",
    "rfm_state_from_backbone",
    "save_rfm_original_layout",
    "stored_layer_count",
]

RFM_PREFIX = "model.mm_projector.token_pruner."
"""Key prefix of the RFM weights in the released LLaVA checkpoints."""


def parse_layer_list(value: object, *, num_layers: int) -> tuple[int, ...]:
    """Validate ``llm_layer_list`` (a sequence of ints, or a string such as ``"2,6,10"`` / ``"[2, 6, 10]"``).

    Args:
        value: The list as given by a config file or a model argument.
        num_layers: Decoder layers of the backbone LLM.

    Returns:
        The layer indices as a tuple.

    Raises:
        ConfigError: not a non-empty list of ints, first entry < 1 (``l0 - 1`` must be a layer), or an index
            outside ``[0, num_layers)``.

    """
    items: Any = value
    if isinstance(value, str):
        items = [s for s in value.strip().strip("[]()").replace(" ", "").split(",") if s]
    try:
        layers = tuple(int(v) for v in items)  # type: ignore[union-attr]
        ok = bool(layers) and all(not isinstance(v, bool) and float(v) == int(v) for v in items)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"llm_layer_list={value!r} must be a non-empty list of layer indices, e.g. [2, 6, 10, 14]")
    if layers[0] < 1 or any(not 0 <= i < num_layers for i in layers):
        raise ConfigError(
            f"llm_layer_list={list(layers)} must hold indices in [0, {num_layers}) with a first entry >= 1 "
            "(the RFM's layer 0 copies LLM layer llm_layer_list[0] - 1)"
        )
    return layers


def backbone_layer_sources(llm_layer_list: tuple[int, ...]) -> list[int]:
    """LLM layers the RFM layers copy: ``T = [l0 - 1] + llm_layer_list`` (method.md §3.1)."""
    return [llm_layer_list[0] - 1, *llm_layer_list]


class RegionFocusModule(nn.Module):
    """``R`` decoder layers of the LLM's own class plus a final norm (method.md §3.1), with its own RoPE.

    Attributes:
        config: Deep copy of the LLM config with ``_attn_implementation = "sdpa"`` (as the released module).
        layers: ``nn.ModuleList`` of ``R`` decoder layers (``LlamaDecoderLayer`` / ``Qwen2DecoderLayer``).
        norm: Final RMSNorm (kept for the weight layout; unused by scoring, method.md §3.2).
        rotary_emb: Rotary embedding built from ``config``.

    """

    def __init__(self, language_model: nn.Module, num_layers: int) -> None:
        """Build the stack on the meta device (no random initialisation); call :meth:`load` to materialise it.

        Args:
            language_model: The backbone decoder (``LlamaModel`` / ``Qwen2Model``) giving classes and config.
            num_layers: ``R``.

        """
        super().__init__()
        layer_cls = type(language_model.layers[0])
        config = copy.deepcopy(language_model.config)
        config._attn_implementation = "sdpa"
        self.config = config
        with torch.device("meta"):
            self.layers = nn.ModuleList(layer_cls(config, i) for i in range(num_layers))
            self.norm = type(language_model.norm)(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = type(language_model.rotary_emb)(config=config)

    def load(self, state: dict[str, torch.Tensor], *, like: torch.Tensor) -> RegionFocusModule:
        """Materialise the parameters from ``state`` (strict) in the dtype and device of ``like``.

        Args:
            state: Parameters under the module's own names (``layers.{i}.*``, ``norm.weight``).
            like: A tensor whose dtype and device the module takes (e.g. an LLM parameter).

        Returns:
            ``self``, in eval mode.

        Raises:
            ConfigError: ``state`` misses keys or has unexpected ones (the first few are named).

        """
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ConfigError(
                f"RFM weights do not match a {len(self.layers)}-layer {type(self.layers[0]).__name__} stack: "
                f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
            )
        # Fresh, aligned storage (safetensors tensors can be mmap-backed at unaligned offsets, which changes the
        # SIMD path and the last bits of the results).
        fresh = {k: v.to(like.device, like.dtype, copy=True) for k, v in state.items()}
        self.load_state_dict(fresh, strict=True, assign=True)
        return self.to(like.device).eval()


def rfm_state_from_backbone(language_model: nn.Module, llm_layer_list: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """RFM parameters copied from the LLM: layer ``i`` <- LLM layer ``T[i]``, ``norm`` <- the LLM's final norm.

    Args:
        language_model: The backbone decoder.
        llm_layer_list: Validated layer list (see :func:`parse_layer_list`).

    Returns:
        Cloned tensors under the RFM's own names.

    """
    state: dict[str, torch.Tensor] = {}
    for i, src in enumerate(backbone_layer_sources(llm_layer_list)):
        for key, value in language_model.layers[src].state_dict().items():
            state[f"layers.{i}.{key}"] = value.detach().clone()
    for key, value in language_model.norm.state_dict().items():
        state[f"norm.{key}"] = value.detach().clone()
    return state


def _safetensors_files(source: Path) -> list[Path]:
    """The files of ``source`` that may hold RFM keys.

    A file; or a checkpoint folder: the shards its ``model.safetensors.index.json`` names for RFM keys plus a
    separate ``rfm*.safetensors`` (what ``lrs-plugin convert`` writes), or every ``*.safetensors`` without an index.
    """
    if source.is_file():
        return [source]
    if not source.is_dir():
        return []
    index = source / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        names = {f for k, f in weight_map.items() if k.startswith(RFM_PREFIX)}
        names |= {p.name for p in source.glob("rfm*.safetensors")}
        return [source / n for n in sorted(names)]
    return sorted(source.glob("*.safetensors"))


def read_original_rfm_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """Read the RFM tensors stored under :data:`RFM_PREFIX`, prefix stripped.

    Only the matching tensors are read (safetensors headers first; shards chosen from the index when present).

    Args:
        source: A ``.safetensors`` file or a checkpoint folder.

    Returns:
        ``{"layers.0.self_attn.q_proj.weight": ..., "norm.weight": ...}``; empty when nothing matches.

    """
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for path in _safetensors_files(Path(source)):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                if key.startswith(RFM_PREFIX):
                    state[key[len(RFM_PREFIX) :]] = f.get_tensor(key)
    return state


def has_original_rfm_weights(source: str | Path) -> bool:
    """Whether ``source`` (file or checkpoint folder) holds any key under :data:`RFM_PREFIX`; reads headers only."""
    from safetensors import safe_open

    for path in _safetensors_files(Path(source)):
        with safe_open(str(path), framework="pt") as f:
            if any(key.startswith(RFM_PREFIX) for key in f.keys()):  # noqa: SIM118 (safe_open is not a Mapping)
                return True
    return False


def stored_layer_count(state: dict[str, torch.Tensor]) -> int:
    """Number of distinct ``layers.{i}`` entries in an RFM state dict."""
    return len({k.split(".")[1] for k in state if k.startswith("layers.")})


def save_rfm_original_layout(module: nn.Module, path: str | Path) -> Path:
    """Write an RFM's parameters to one safetensors file in the released key layout.

    Args:
        module: A :class:`RegionFocusModule` (or any module with the same parameter names).
        path: Output ``.safetensors`` file (parent folders are created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    """
    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{RFM_PREFIX}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(out), metadata={"format": "pt", "num_rfm_layers": str(len(module.layers))})
    return out


def _config_layer_list(config: Any) -> object:
    """``llm_layer_list`` from a checkpoint config: top level (released configs) or an ``rfm`` section."""
    value = getattr(config, "llm_layer_list", None)
    section = getattr(config, "rfm", None)
    if value is None and isinstance(section, Mapping):
        value = section.get("llm_layer_list")
    return value


def load_rfm(
    backbone: Backbone, *, llm_layer_list: object, rfm_path: str | None, rfm_init: str | None
) -> tuple[RegionFocusModule, tuple[int, ...], str]:
    """Build the RFM of a backbone and load its weights (the ``rfm`` scorer's knobs; see :class:`RFMScorer`).

    Args:
        backbone: The loaded backbone.
        llm_layer_list: Layer list knob, or ``None`` to read ``llm_layer_list`` (or ``rfm.llm_layer_list``) from the
            checkpoint config.
        rfm_path: Weights file or folder; ``None``: the backbone's checkpoint folder.
        rfm_init: ``"backbone"`` (copy LLM layers, logged) or ``None`` (weights required).

    Returns:
        ``(module, llm_layer_list, weights_source)``.

    Raises:
        ConfigError: no layer list, bad knobs, missing weights (both options explained), a stored layer count other
            than ``R = len(llm_layer_list) + 1``, or weights that do not fit.

    """
    from loguru import logger

    lm = backbone.language_model
    raw = llm_layer_list if llm_layer_list is not None else _config_layer_list(backbone.config)
    if raw is None:
        raise ConfigError(
            "focus 'rfm' needs llm_layer_list (R = len + 1 RFM layers): the checkpoint config has no "
            "llm_layer_list; pass it as a knob, e.g. llm_layer_list=[2, 6, 10, 14]"
        )
    layer_list = parse_layer_list(raw, num_layers=backbone.num_layers)
    num_rfm = len(layer_list) + 1
    if rfm_init not in (None, "backbone"):
        raise ConfigError(f"rfm_init={rfm_init!r} is not supported; valid choices: None, 'backbone'")
    if rfm_init == "backbone" and rfm_path is not None:
        raise ConfigError("give either rfm_path (trained weights) or rfm_init='backbone', not both")
    check_full_attention(lm.config, range(num_rfm))

    if rfm_init == "backbone":
        sources = backbone_layer_sources(layer_list)
        logger.warning(
            "focus=rfm with rfm_init='backbone': RFM layers copied from LLM layers {} (untrained, the paper's "
            "initialisation), not a distilled Region Focus Module",
            sources,
        )
        state = rfm_state_from_backbone(lm, layer_list)
        origin = f"backbone layers {sources}"
    else:
        source = Path(rfm_path) if rfm_path is not None else Path(str(backbone.model.name_or_path))
        state = read_original_rfm_weights(source)
        if not state:
            raise ConfigError(
                f"no RFM weights (keys '{RFM_PREFIX}*') in {source}; either point rfm_path to a safetensors file "
                "holding them (e.g. the released checkpoint's shards), or pass rfm_init='backbone' to copy the "
                "backbone's own layers (an untrained RFM)"
            )
        stored = stored_layer_count(state)
        if stored != num_rfm:
            raise ConfigError(
                f"{source} holds {stored} token_pruner layers, but llm_layer_list={list(layer_list)} implies "
                f"R = len(llm_layer_list) + 1 = {num_rfm}"
            )
        origin = str(source)
    module = RegionFocusModule(lm, num_rfm).load(state, like=next(lm.parameters()))
    return module, layer_list, origin
