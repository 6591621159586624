"""Adapter over transformers' own LLaVA classes: encode tiles, build ``inputs_embeds``, generate.

:class:`Backbone` wraps a ``LlavaForConditionalGeneration`` (LLaVA-1.5 layout) or a
``LlavaNextForConditionalGeneration`` (LLaVA-NeXT: anyres tiles, ``image_newline``) whose text model is Llama or
Qwen2, loaded with ``from_pretrained`` and never patched. Every dimension is read from the config (or from the
loaded modules), never guessed from a checkpoint name.

The plain backbone (``reducer=none``) is ``assemble(*split_prompt(q)...)`` with :meth:`Backbone.plain_vision_embeds`
followed by :meth:`Backbone.generate`; it reproduces lmms-eval's ``llava_hf`` prompt and greedy decoding, so both
give the same answer on the same checkpoint. Pruning methods replace the vision embeddings (pre-LLM reducers) or run
the decoder layers themselves (in-LLM reducers) through :attr:`Backbone.language_model`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrs_plugin.backbone.checkpoint_source import resolve_pretrained
from lrs_plugin.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from lrs_plugin.harness.costs import StageClock

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

IMAGE_TOKEN = "<image>"
"""Image placeholder in prompts, as lmms-eval's ``llava_hf`` writes it."""

# lmms-eval 0.7.3 ``models/simple/llava_hf.py``: the template it installs when the tokenizer has none.
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.index0 == 0 %}A chat between a curious user and an artificial "
    "intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. "
    "USER: {{ message['content'] }} {% elif message['role'] == 'user' %}USER: {{ message['content'] }} {% else %} "
    "ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class GenerationOutput:
    """One greedy answer.

    Attributes:
        text: Decoded new tokens (special tokens skipped), cut before the first stop string if any, stripped.
        new_token_ids: Generated token ids, the EOS or the token completing a stop string included (none after it).
        num_new_tokens: ``len(new_token_ids)``.

    """

    text: str
    new_token_ids: tuple[int, ...]
    num_new_tokens: int


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


class Backbone:
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

    # ------------------------------------------------------------------------------------------------- vision
    def normalize_tiles(self, tiles_uint8: np.ndarray) -> torch.Tensor:
        """Turn RGB tiles into vision-tower inputs with the processor's rescale / mean / std (no resizing).

        Args:
            tiles_uint8: ``[n, S, S, 3]`` uint8 array.

        Returns:
            ``[n, 3, S, S]`` float32 tensor on the CPU, computed as the processor computes it.

        Raises:
            ConfigError: wrong dtype or shape.

        """
        import numpy as np
        import torch

        s = self.tile_size
        if tiles_uint8.dtype != np.uint8 or tiles_uint8.ndim != 4 or tiles_uint8.shape[1:] != (s, s, 3):
            raise ConfigError(
                f"tiles must be uint8 [n, {s}, {s}, 3]; got {tiles_uint8.dtype} {list(tiles_uint8.shape)}"
            )
        ip = self.processor.image_processor
        x = torch.from_numpy(np.ascontiguousarray(tiles_uint8)).permute(0, 3, 1, 2).to(torch.float32)
        scale = float(ip.rescale_factor) if ip.do_rescale else 1.0
        if ip.do_normalize:
            # The processor fuses rescale and normalize: (x - mean / scale) / (std / scale).
            mean = torch.tensor(self.image_mean) * (1.0 / scale)
            std = torch.tensor(self.image_std) * (1.0 / scale)
            return (x - mean[:, None, None]) / std[:, None, None]
        return x * scale

    def encode_tiles(self, pixel_values: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """Vision tower -> feature layer -> select strategy -> projector, in chunks of ``tile_batch_size``.

        The same computation as the model's ``get_image_features`` for one tile per image.

        Args:
            pixel_values: ``[n, 3, S, S]`` normalized tiles (any float dtype / device).
            grad: Keep the autograd graph (training the towers, :mod:`lrs_plugin.testbed.train`); default off.

        Returns:
            ``[n, T, C]`` projected features in the projector's dtype, on the model device. The tower runs in its
            own dtype (:attr:`vision_dtype`); its features are cast to :attr:`projector_dtype` before the projector.

        Raises:
            ConfigError: wrong shape.

        """
        import torch

        s = self.tile_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ConfigError(f"pixel_values must be [n, 3, {s}, {s}]; got {list(pixel_values.shape)}")
        inner = self.model.model
        layer = self.config.vision_feature_layer
        vision_param = next(inner.vision_tower.parameters())
        projector_dtype = self.projector_dtype
        chunks = []
        with torch.set_grad_enabled(grad):
            for start in range(0, pixel_values.shape[0], self.tile_batch_size):
                chunk = pixel_values[start : start + self.tile_batch_size].to(vision_param.device, vision_param.dtype)
                states = inner.vision_tower(chunk, output_hidden_states=True, return_dict=True).hidden_states
                layers = [layer] if isinstance(layer, int) else list(layer)
                feats = [states[i] for i in layers]
                if self.config.vision_feature_select_strategy == "default":
                    feats = [f[:, self._num_prefix_tokens :] for f in feats]
                chunks.append(inner.multi_modal_projector(torch.cat(feats, dim=-1).to(projector_dtype)))
        if not chunks:
            return torch.empty(0, self.tokens_per_tile, self.hidden_size, device=self.device, dtype=projector_dtype)
        return torch.cat(chunks, dim=0).to(self.device)

    def pool2x2(self, features: torch.Tensor) -> torch.Tensor:
        """Average 2x2 neighbouring patches of square patch grids, refusing odd ones.

        :func:`lrs_plugin.backbone.anyres.pool_tiles` ``"average"`` (the one 2x2 pooling), which on an odd grid would
        drop the last row and column.

        Args:
            features: ``[n, g*g, C]`` tokens in raster order, ``g`` even (no CLS token).

        Returns:
            ``[n, (g/2)**2, C]``.

        Raises:
            ConfigError: the token count is not an even square.

        """
        import math

        from lrs_plugin.backbone.anyres import pool_tiles

        t = features.shape[1]
        g = math.isqrt(t)
        if g * g != t or g % 2:
            raise ConfigError(f"pool2x2 needs an even square patch grid; got {t} tokens per tile")
        return pool_tiles(features, "average")

    def image_crops(
        self, image: Image.Image, grid_pinpoints: list[list[int]] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """The processor's own tiles of ``image``, before the vision tower.

        Args:
            image: An RGB PIL image.
            grid_pinpoints: LLaVA-NeXT only: anyres resolutions ``[[h, w], ...]`` to use instead of the checkpoint's
                (passed to this call of the image processor; nothing shared is changed). ``None`` keeps the
                checkpoint's.

        Returns:
            ``(pixel_values [n, 3, S, S], grid)`` on the CPU: LLaVA-1.5 gives one tile and ``grid=None``; LLaVA-NeXT
            gives the base image then the ``rows x cols`` grid tiles in raster order, ``grid=(rows, cols)``.

        Raises:
            ConfigError: ``grid_pinpoints`` given for a LLaVA-1.5 checkpoint.

        """
        from lrs_plugin.backbone.anyres import grid_shape

        if grid_pinpoints is not None and self.arch != "llava_next":
            raise ConfigError(f"grid_pinpoints need a LLaVA-NeXT checkpoint; this one is {self.arch!r}")
        kwargs: dict[str, Any] = {}
        pinpoints = None
        if self.arch == "llava_next":
            # Always the same list for the processor and the grid below (the model config's unless given), so a
            # processor config that disagrees with the model config cannot desynchronise the tile count.
            pinpoints = grid_pinpoints if grid_pinpoints is not None else self.config.image_grid_pinpoints
            kwargs["image_grid_pinpoints"] = [[int(h), int(w)] for h, w in pinpoints]
        out = self.processor.image_processor(images=[image], return_tensors="pt", **kwargs)
        s = self.tile_size
        pixel_values = out["pixel_values"].reshape(-1, 3, s, s)
        if pinpoints is None:
            return pixel_values, None
        rows, cols = grid_shape((image.height, image.width), pinpoints, s)
        return pixel_values[: 1 + rows * cols], (rows, cols)

    def plain_vision_embeds(self, image: Image.Image, grid_pinpoints: list[list[int]] | None = None) -> torch.Tensor:
        """Return the vision tokens the stock model inserts for ``image`` (processor + ``get_image_features``).

        For LLaVA-NeXT this includes the anyres tiles, unpadding and ``image_newline`` tokens, all done by
        transformers itself.

        When the vision tower runs in another dtype than the projector (``vision_dtype``), transformers'
        ``get_image_features`` cannot be used (it feeds the tower's output to the projector uncast), so the same
        computation runs through :meth:`image_crops`, :meth:`encode_tiles` (which casts the features) and, for
        LLaVA-NeXT, :func:`lrs_plugin.backbone.anyres.pack_anyres` with the checkpoint's pinpoints.

        Args:
            image: An RGB PIL image.
            grid_pinpoints: LLaVA-NeXT only: anyres resolutions ``[[h, w], ...]`` to use instead of the checkpoint's
                (e.g. from :func:`lrs_plugin.backbone.anyres.anyres_pinpoints`). The tiles then come from
                :meth:`image_crops` and :meth:`encode_tiles` and are laid out by
                :func:`lrs_plugin.backbone.anyres.pack_anyres`, the same layout as the stock path; neither the model
                config nor the processor is changed. ``None`` runs the stock path itself (when the tower and projector
                dtypes agree).

        Returns:
            ``[N, C]`` in the embedding dtype, on the model device.

        Raises:
            ConfigError: ``grid_pinpoints`` given for a LLaVA-1.5 checkpoint.

        """
        import torch

        embed_dtype = self.language_model.get_input_embeddings().weight.dtype
        pool = self.anyres_tile_pool
        if grid_pinpoints is not None or pool is not None or self.vision_dtype != self.projector_dtype:
            pixel_values, grid = self.image_crops(image, grid_pinpoints)  # refuses pinpoints on LLaVA-1.5
            tiles = self.encode_tiles(pixel_values)
            if grid is None:  # LLaVA-1.5: the single tile's tokens
                return tiles.reshape(-1, tiles.shape[-1]).to(self.device, embed_dtype)
            from lrs_plugin.backbone.anyres import pack_anyres

            with torch.no_grad():  # image_newline is a parameter: no autograd graph
                packed = pack_anyres(
                    tiles[0], tiles[1:], grid, (image.height, image.width), self.image_newline, tile_pool=pool
                )
            return packed.to(self.device, embed_dtype)
        inputs = self.processor(images=[image], text=[IMAGE_TOKEN], return_tensors="pt")
        kwargs = {"pixel_values": inputs["pixel_values"].to(self.device, self.vision_dtype)}
        if "image_sizes" in inputs:
            kwargs["image_sizes"] = inputs["image_sizes"].to(self.device)
        with torch.no_grad():
            feats = self.model.model.get_image_features(**kwargs, return_dict=True).pooler_output
        return torch.cat(list(feats), dim=0).to(self.device, embed_dtype)

    # ------------------------------------------------------------------------------------------------- prompt
    def build_prompt(self, question: str) -> str:
        r"""Return the chat-templated prompt for one image, built as lmms-eval's ``llava_hf`` builds it.

        ``<image>\n`` is prepended when the question has no placeholder; the message content is a plain string;
        the tokenizer's chat template is used, or ``llava_hf``'s Vicuna template when the tokenizer has none.

        Args:
            question: The question text (may contain one ``<image>``).

        Returns:
            The prompt, ending with the assistant header.

        """
        return self._chat_prompt(question if IMAGE_TOKEN in question else f"{IMAGE_TOKEN}\n{question}")

    def _chat_prompt(self, content: str) -> str:
        """One user turn in the tokenizer's chat template (``llava_hf``'s Vicuna template when it has none)."""
        template = self.tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=template, tokenize=False, add_generation_prompt=True
        )

    def text_prompt_ids(self, question: str) -> torch.Tensor:
        """Token ids of the prompt for a request without an image, built as ``llava_hf`` builds it for text-only docs.

        The same chat template as :meth:`build_prompt`, with no ``<image>`` line added; a placeholder written in the
        question itself is removed (there is no image to put there).

        Args:
            question: The question text.

        Returns:
            ``[L]`` LongTensor on the CPU, with no image token.
        """
        import torch

        text = self._chat_prompt(question.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, ""))
        return self.tokenizer(text, return_tensors="pt")["input_ids"][0].to(torch.long)

    def split_prompt(self, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize the prompt of :meth:`build_prompt` in two chunks around the image placeholder.

        The released runners' rule (:mod:`lrs_plugin.backbone.prompt`): equal to tokenizing the whole prompt on
        byte-level BPE tokenizers, and the ids the released model saw on SentencePiece ones whatever their ``legacy``
        setting.

        Args:
            question: The question text (at most one ``<image>``).

        Returns:
            ``(prefix_ids [P], suffix_ids [Q])`` LongTensors on the CPU: the tokens before and after the single
            ``<image>`` token (BOS, if the tokenizer adds one, is in the prefix).

        Raises:
            ConfigError: the prompt does not hold exactly one image placeholder.

        """
        import torch

        from lrs_plugin.backbone.prompt import chunked_image_ids

        prefix, suffix = chunked_image_ids(self.tokenizer, self.build_prompt(question), IMAGE_TOKEN)
        return torch.tensor(prefix, dtype=torch.long), torch.tensor(suffix, dtype=torch.long)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of the language model.

        Args:
            ids: ``[L]`` token ids.

        Returns:
            ``[L, C]`` on the model device.

        """
        import torch

        with torch.no_grad():
            return self.language_model.get_input_embeddings()(ids.to(self.device))

    def assemble(
        self, prefix_ids: torch.Tensor, vision_embeds: torch.Tensor, suffix_ids: torch.Tensor
    ) -> tuple[torch.Tensor, slice]:
        """Build the LLM input: prefix tokens, vision tokens, suffix tokens.

        Args:
            prefix_ids: ``[P]`` token ids before the image.
            vision_embeds: ``[N, C]`` vision tokens (cast to the embedding dtype, as transformers does).
            suffix_ids: ``[Q]`` token ids after the image.

        Returns:
            ``(inputs_embeds [1, P + N + Q, C], image_span)`` where ``image_span = slice(P, P + N)``.

        Raises:
            ConfigError: ``vision_embeds`` is not ``[N, C]`` with ``C`` the text hidden size.

        """
        import torch

        if vision_embeds.ndim != 2 or vision_embeds.shape[-1] != self.hidden_size:
            raise ConfigError(
                f"vision_embeds must be [N, {self.hidden_size}] (text hidden size); got {list(vision_embeds.shape)}"
            )
        prefix = self.embed_ids(prefix_ids)
        suffix = self.embed_ids(suffix_ids)
        vision = vision_embeds.to(prefix.device, prefix.dtype)
        span = slice(prefix.shape[0], prefix.shape[0] + vision.shape[0])
        return torch.cat([prefix, vision, suffix], dim=0).unsqueeze(0), span

    # --------------------------------------------------------------------------------------------- language
    def logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """One full forward pass of the language model and head.

        Args:
            inputs_embeds: ``[1, L, C]``.

        Returns:
            ``[1, L, vocab]`` logits.

        """
        import torch

        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        with torch.no_grad():
            return self.model(inputs_embeds=inputs_embeds, attention_mask=mask).logits

    def _default_eos_ids(self) -> list[int]:
        """``[tokenizer.eos_token_id]`` as ``llava_hf`` passes it; the generation config's EOS ids if it has none."""
        if self.tokenizer.eos_token_id is not None:
            return [int(self.tokenizer.eos_token_id)]
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            raise ConfigError(
                "neither the tokenizer nor the generation config defines an EOS token; pass eos_token_ids"
            )
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def generate(
        self,
        inputs_embeds: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_ids: list[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        clock: StageClock | None = None,
    ) -> GenerationOutput:
        """Greedy decoding from ``inputs_embeds`` with transformers' ``generate`` and its KV cache.

        Args:
            inputs_embeds: ``[1, L, C]``, e.g. from :meth:`assemble`.
            max_new_tokens: Upper bound on generated tokens.
            eos_token_ids: Stop ids; default ``[tokenizer.eos_token_id]`` (what ``llava_hf`` passes), else the
                generation config's EOS ids.
            stop_strings: Strings that end generation (the task's ``until``): ``generate`` stops after the token with
                which the answer first contains one, and the text is cut before it (:mod:`lrs_plugin.backbone.stops`).
            clock: Times the prefill (up to the first token) and the decoding, and measures the KV cache at the end of
                the prefill (:func:`lrs_plugin.harness.costs.measured_generation`); the tokens are the same.

        Returns:
            The decoded answer and the generated ids.

        Raises:
            ConfigError: ``max_new_tokens < 1`` or a batch size other than 1.

        """
        import torch

        from lrs_plugin.backbone.stops import cut_at_stop, stopping_criteria
        from lrs_plugin.harness.costs import measured_generation

        if int(max_new_tokens) < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be >= 1")
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[0] != 1:
            raise ConfigError(f"inputs_embeds must be [1, L, C]; got {list(inputs_embeds.shape)}")
        eos = list(eos_token_ids) if eos_token_ids else self._default_eos_ids()
        kwargs: dict[str, Any] = {}
        criteria = stopping_criteria(self.tokenizer, stop_strings)
        if criteria is not None:
            kwargs["stopping_criteria"] = criteria
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        with torch.no_grad(), measured_generation(clock, self.model) as timing:
            out = self.model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=mask,
                do_sample=False,
                num_beams=1,
                max_new_tokens=int(max_new_tokens),
                eos_token_id=eos,
                pad_token_id=eos[0],
                **kwargs,
                **timing,
            )
        new_ids = tuple(int(t) for t in out[0].tolist())
        text = cut_at_stop(self.tokenizer.decode(list(new_ids), skip_special_tokens=True), stop_strings)
        return GenerationOutput(text=text, new_token_ids=new_ids, num_new_tokens=len(new_ids))
