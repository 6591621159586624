"""Adapter over transformers' own LLaVA classes: loading, config checks and the dimensions every method reads.

:class:`Backbone` wraps a ``LlavaForConditionalGeneration`` (LLaVA-1.5 layout) or a
``LlavaNextForConditionalGeneration`` (LLaVA-NeXT: anyres tiles, ``image_newline``) whose text model is Llama or
Qwen2, loaded with ``from_pretrained`` and never patched. Every dimension is read from the config (or from the
loaded modules), never guessed from a checkpoint name.

The plain backbone (``reducer=none``) is ``assemble(*split_prompt(q)...)`` with :meth:`Backbone.plain_vision_embeds`
followed by :meth:`Backbone.generate`; it reproduces lmms-eval's ``llava_hf`` prompt and greedy decoding, so both
give the same answer on the same checkpoint. Pruning methods replace the vision embeddings (pre-LLM reducers) or run
the decoder layers themselves (in-LLM reducers) through :attr:`Backbone.language_model`.

This module loads the model and reads its config; the vision half (normalise, encode, pool, the processor's tiles,
the stock vision tokens) is :class:`~lrs_plugin.backbone.encode.VisionMixin`, the language half (prompt, assembly,
logits, generation) :class:`~lrs_plugin.backbone.language.LanguageMixin`; both are mixed into :class:`Backbone`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrs_plugin.backbone.checkpoint_source import resolve_pretrained
from lrs_plugin.backbone.encode import VisionMixin
from lrs_plugin.backbone.language import IMAGE_TOKEN, VICUNA_CHAT_TEMPLATE, GenerationOutput, LanguageMixin
from lrs_plugin.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "DTYPES",
    "IMAGE_TOKEN",
    "SUPPORTED_ARCHS",
    "SUPPORTED_TEXT_MODELS",
    "VICUNA_CHAT_TEMPLATE",
    "VISION_DTYPES",
    "Backbone",
    "GenerationOutput",
]

SUPPORTED_ARCHS = ("llava", "llava_next")
"""``config.model_type`` values the adapter accepts."""

SUPPORTED_TEXT_MODELS = ("llama", "qwen2")
"""``config.text_config.model_type`` values the adapter accepts."""

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
"""Valid ``attn_implementation`` values (``None`` picks one, see :meth:`Backbone.from_pretrained`)."""

VISION_DTYPES = ("float32", "float16", "bfloat16")
"""Valid ``vision_dtype`` strings (``None`` leaves the vision tower in the dtype it was loaded in)."""

DTYPES = ("auto", *VISION_DTYPES)
"""Valid ``dtype`` strings (``"auto"`` keeps the checkpoint's dtype); also ``lrs-plugin convert --dtype``."""


def _torch_dtype(value: object, option: str, valid: tuple[str, ...], hint: str = "") -> Any:
    """The ``torch.dtype`` named by ``value`` (a string of ``valid`` or the dtype itself): the one dtype reading."""
    import torch

    names = {name: getattr(torch, name) for name in VISION_DTYPES}
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, torch.dtype) and value in names.values():
        return value
    raise ConfigError(f"{option}={value!r} is not supported; valid choices: {', '.join(valid)}{hint}")


def _resolve_dtype(dtype: object) -> Any:
    """``"auto"`` or the ``torch.dtype`` the model is loaded in (also :mod:`.convert`'s ``dtype``)."""
    return "auto" if dtype == "auto" else _torch_dtype(dtype, "dtype", DTYPES)


def _resolve_vision_dtype(vision_dtype: object) -> Any:
    """``None`` or the ``torch.dtype`` the vision tower is cast to."""
    if vision_dtype is None:
        return None
    return _torch_dtype(vision_dtype, "vision_dtype", VISION_DTYPES, " (or None for the model's dtype)")


def _check_supported(config: Any, source: str) -> None:
    """Refuse configs whose architecture or text model the adapter does not handle (checked before loading)."""
    if config.model_type not in SUPPORTED_ARCHS:
        raise ConfigError(
            f"{source}: model_type={config.model_type!r} is not supported; valid: {', '.join(SUPPORTED_ARCHS)}"
        )
    text_type = getattr(config.text_config, "model_type", None)
    if text_type not in SUPPORTED_TEXT_MODELS:
        raise ConfigError(
            f"{source}: text model_type={text_type!r} is not supported; valid: {', '.join(SUPPORTED_TEXT_MODELS)}"
        )


def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _check_tile_batch_size(tile_batch_size: object) -> int:
    if isinstance(tile_batch_size, bool) or not isinstance(tile_batch_size, int) or tile_batch_size < 1:
        raise ConfigError(f"tile_batch_size={tile_batch_size!r} must be an int >= 1")
    return tile_batch_size


def _resolve_attn(attn_implementation: str | None, device: str) -> str:
    has_flash = _has_flash_attn()
    if attn_implementation is None:
        return "flash_attention_2" if has_flash and str(device).startswith("cuda") else "sdpa"
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"attn_implementation={attn_implementation!r} is not supported; "
            f"valid choices: {', '.join(ATTN_IMPLEMENTATIONS)} (or None for sdpa / flash_attention_2 when installed)"
        )
    if attn_implementation == "flash_attention_2" and not has_flash:
        raise MissingDependencyError(
            "attn_implementation='flash_attention_2' needs the flash_attn package: "
            'pip install "lrs-plugin[gpu]" (or use attn_implementation="sdpa")'
        )
    return attn_implementation


class Backbone(VisionMixin, LanguageMixin):
    """A loaded LLaVA / LLaVA-NeXT model with its processor, seen through the pieces pruning methods need.

    Build it with :meth:`from_pretrained`. ``C`` below is the text hidden size, ``S`` the tile size in pixels,
    ``T`` :attr:`tokens_per_tile`.
    """

    def __init__(
        self, model: Any, processor: Any, *, tile_batch_size: int = 16, vision_dtype: str | torch.dtype | None = None
    ) -> None:
        """Wrap an already loaded model and processor (prefer :meth:`from_pretrained`).

        Args:
            model: ``LlavaForConditionalGeneration`` or ``LlavaNextForConditionalGeneration`` in eval mode.
            processor: The matching ``LlavaProcessor`` / ``LlavaNextProcessor``.
            tile_batch_size: Tiles per vision-tower call in :meth:`encode_tiles`.
            vision_dtype: ``"float32"``, ``"float16"``, ``"bfloat16"`` or a ``torch.dtype``: the vision tower (only
                it) is cast to that dtype in place; ``None`` leaves it as loaded.

        Raises:
            ConfigError: unsupported architecture, text model or vision tower, or a bad ``tile_batch_size`` /
                ``vision_dtype``.

        """
        config = model.config
        _check_supported(config, type(model).__name__)
        _check_tile_batch_size(tile_batch_size)
        tower_dtype = _resolve_vision_dtype(vision_dtype)
        tower = model.model.vision_tower
        embeddings = next(
            (m for m in tower.modules() if hasattr(m, "num_positions") and hasattr(m, "num_patches")), None
        )
        if embeddings is None:
            raise ConfigError(f"vision tower {type(tower).__name__} is not a CLIP-like encoder (no patch embeddings)")
        if tower_dtype is not None:
            tower.to(tower_dtype)  # e.g. the C2F seed's fp32 CLIP under an fp16 LLM (method.md section 7.3)
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        self.tile_batch_size = _check_tile_batch_size(tile_batch_size)
        # Extra tokens the vision tower prepends (CLIP: one CLS), read from the module itself.
        self._num_prefix_tokens = int(embeddings.num_positions - embeddings.num_patches)
        pool = getattr(config, "anyres_tile_pool", None)
        if pool is not None:
            from lrs_plugin.backbone.anyres import TILE_POOLS

            if pool not in TILE_POOLS:
                raise ConfigError(f"config anyres_tile_pool={pool!r} is not valid; valid: {', '.join(TILE_POOLS)}")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: str | torch.dtype = "auto",
        device: str = "cpu",
        device_map: str | dict[str, Any] | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        tile_batch_size: int = 16,
        vision_dtype: str | torch.dtype | None = None,
    ) -> Backbone:
        """Load model and processor with transformers' ``from_pretrained``.

        Args:
            path: Checkpoint folder or Hub id (``config.model_type`` ``llava`` or ``llava_next``); a value that is not
                of the Hub id form ``name`` / ``org/name`` is a local path and must be a folder with ``config.json``.
            dtype: ``"auto"`` (checkpoint dtype), ``"float32"``, ``"float16"``, ``"bfloat16"`` or a ``torch.dtype``.
            device: Device to move the model to when ``device_map`` is not given.
            device_map: Passed to ``from_pretrained`` (e.g. ``"auto"`` or ``"cuda:1"``); the model is then not moved.
            attn_implementation: ``"sdpa"``, ``"eager"`` or ``"flash_attention_2"``; ``None`` picks
                ``flash_attention_2`` when ``flash_attn`` is installed and ``device`` (or a string ``device_map``)
                is CUDA, else ``sdpa``.
            trust_remote_code: Forwarded to transformers; off unless asked.
            tile_batch_size: Tiles per vision-tower call in :meth:`encode_tiles`.
            vision_dtype: Run the vision tower in its own precision: ``"float32"``, ``"float16"``, ``"bfloat16"``
                or a ``torch.dtype`` (after loading, only ``model.model.vision_tower`` is cast; its features are
                cast to the projector's dtype before the projector). ``None`` keeps it in ``dtype``. The C2F seed
                runs CLIP in fp32 under an fp16 LLM: ``dtype="float16", vision_dtype="float32"``.

        Returns:
            The adapter, model in eval mode.

        Raises:
            ConfigError: invalid ``dtype`` / ``vision_dtype`` / ``attn_implementation`` or an unsupported
                architecture.
            MissingDependencyError: ``flash_attention_2`` requested without ``flash_attn``.
            CheckpointNotFoundError: ``path`` is a local path that does not exist or holds no ``config.json``.

        """
        from transformers import (
            AutoConfig,
            AutoProcessor,
            LlavaForConditionalGeneration,
            LlavaNextForConditionalGeneration,
        )

        _check_tile_batch_size(tile_batch_size)
        torch_dtype = _resolve_dtype(dtype)
        _resolve_vision_dtype(vision_dtype)  # fail before loading
        attn = _resolve_attn(attn_implementation, device_map if isinstance(device_map, str) else device)
        path = resolve_pretrained(path)  # a missing local folder fails here, not in the Hub resolver
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        _check_supported(config, str(path))
        classes = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}
        model = classes[config.model_type].from_pretrained(
            path,
            dtype=torch_dtype,
            device_map=device_map,
            attn_implementation=attn,
            trust_remote_code=trust_remote_code,
        )
        if device_map is None:
            model = model.to(device)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(model.eval(), processor, tile_batch_size=tile_batch_size, vision_dtype=vision_dtype)

    # ----------------------------------------------------------------------------------------------- dimensions
    @property
    def arch(self) -> str:
        """``"llava"`` or ``"llava_next"`` (``config.model_type``)."""
        return str(self.config.model_type)

    @property
    def tile_size(self) -> int:
        """Side ``S`` of one vision tile in pixels (``vision_config.image_size``)."""
        return int(self.config.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        """Vision patch side in pixels (``vision_config.patch_size``)."""
        return int(self.config.vision_config.patch_size)

    @property
    def patches_per_side(self) -> int:
        """Patches per tile side, ``S // patch_size``."""
        return self.tile_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        """Projected tokens per tile ``T``: the patch grid, plus the CLS token(s) if the strategy is ``full``."""
        extra = self._num_prefix_tokens if self.config.vision_feature_select_strategy == "full" else 0
        return self.patches_per_side**2 + extra

    @property
    def hidden_size(self) -> int:
        """Text hidden size ``C``."""
        return int(self.config.text_config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Decoder layers of the text model."""
        return int(self.config.text_config.num_hidden_layers)

    @property
    def image_newline(self) -> torch.Tensor | None:
        """The learned row-end vector ``[C]`` of LLaVA-NeXT, ``None`` for LLaVA-1.5."""
        return getattr(self.model.model, "image_newline", None)

    @property
    def language_model(self) -> Any:
        """The decoder (``LlamaModel`` / ``Qwen2Model``: ``.layers``, ``.norm``, ``.embed_tokens``), no head."""
        return self.model.model.language_model

    @property
    def lm_head(self) -> torch.nn.Module:
        """The output projection ``C -> vocab``."""
        return self.model.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where prompts and ``inputs_embeds`` go)."""
        return self.language_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype of the language model (its input embeddings), whatever the vision tower's dtype."""
        return self.language_model.get_input_embeddings().weight.dtype

    @property
    def anyres_tile_pool(self) -> str | None:
        """LLaVA-NeXT grid-tile pooling: ``config.anyres_tile_pool``, or ``None`` (keep every token).

        ``lrs-plugin convert`` writes it from the seed's ``mm_spatial_pool_mode`` (its LLaVA-NeXT-Qwen2 pools each
        grid tile 2x2 after the projector); transformers' own checkpoints have none.
        """
        if self.arch != "llava_next":
            return None
        return getattr(self.config, "anyres_tile_pool", None)

    @property
    def vision_dtype(self) -> torch.dtype:
        """Parameter dtype of the vision tower (the dtype its inputs are cast to)."""
        return next(self.model.model.vision_tower.parameters()).dtype

    @property
    def projector_dtype(self) -> torch.dtype:
        """Parameter dtype of ``multi_modal_projector`` (vision features are cast to it before the projector)."""
        return next(self.model.model.multi_modal_projector.parameters()).dtype

    @property
    def image_mean(self) -> tuple[float, ...]:
        """Per-channel mean of the image processor (in ``[0, 1]`` units)."""
        return tuple(float(v) for v in self.processor.image_processor.image_mean)

    @property
    def image_std(self) -> tuple[float, ...]:
        """Per-channel standard deviation of the image processor (in ``[0, 1]`` units)."""
        return tuple(float(v) for v in self.processor.image_processor.image_std)
