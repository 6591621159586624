"""Shared parts of the stock-layout reducers: the plain vision tokens of the last image, and a pre-LLM reducer base."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from lrs_plugin.harness.costs import StageClock
from lrs_plugin.harness.record import SampleRecord
from lrs_plugin.reducers.base import ImageInput, ReducerOutput, borrow_image

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.backbone.prefix_cache import PrefixCache
    from lrs_plugin.imagery.large_image import LargeImage

__all__ = ["LastImage", "PlainVision", "PreLLMReducer", "answer_plain"]


def _num_tiles(backbone: Backbone, image_wh: tuple[int, int], grid_pinpoints: list[list[int]] | None = None) -> int:
    """Tiles the preprocessing feeds to the vision tower (1, or LLaVA-NeXT's anyres grid + base image).

    ``grid_pinpoints`` (LLaVA-NeXT) replaces the checkpoint's anyres resolutions; ``None`` keeps them.
    """
    if backbone.arch != "llava_next":
        return 1
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    pinpoints = backbone.config.image_grid_pinpoints if grid_pinpoints is None else grid_pinpoints
    return int(
        image_size_to_num_patches(
            image_size=(image_wh[1], image_wh[0]),
            grid_pinpoints=[[int(h), int(w)] for h, w in pinpoints],
            patch_size=backbone.tile_size,
        )
    )


class LastImage:
    """Keeps ``compute(image)`` of the last image asked about (the model asks an image's questions in a row).

    ``compute`` receives the :class:`~lrs_plugin.imagery.LargeImage` itself: the same decoders, limits and 8-bit rule
    as C2F's windows, so every method sees the same pixels, and a method that runs the stock processor on it
    (:meth:`Backbone.image_crops <lrs_plugin.backbone.adapter.Backbone.image_crops>`,
    :meth:`~lrs_plugin.backbone.adapter.Backbone.plain_vision_embeds`) resizes a large image strip by strip instead
    of decoding it into one array. Results are keyed by :attr:`LargeImage.key <lrs_plugin.imagery.LargeImage.key>`
    (a file's path, size and mtime; a unique id for an in-memory image).

    Args:
        compute: Maps the image to what a reducer needs per image (e.g. its vision tokens).
    """

    def __init__(self, compute: Callable[[LargeImage], Any]) -> None:
        self.compute = compute
        self._last: tuple[Any, Any] | None = None

    def get(self, image: LargeImage, clock: StageClock | None = None) -> Any:
        """``compute`` of ``image``, computed once per image.

        ``clock`` charges the decoding (:meth:`LargeImage.load <lrs_plugin.imagery.LargeImage.load>`: the whole file
        into RAM, or a streaming pass into a scratch file for the largest PNGs) to ``image_read`` and ``compute`` (the
        processor's resizing included) to ``vision_encode``; nothing on a cached image.
        """
        clock = clock or StageClock()
        if self._last is None or self._last[0] != image.key:
            self._last = None  # release the previous image's result before decoding the next one
            with clock.stage("image_read"):
                image.load()
            with clock.stage("vision_encode"):
                self._last = (image.key, self.compute(image))
        return self._last[1]

    def clear(self) -> None:
        """Forget the last image's result."""
        self._last = None


class PlainVision:
    """The stock vision tokens of the last image asked about (questions come grouped by image).

    Args:
        backbone: The loaded backbone.
        prepare: Maps the :class:`~lrs_plugin.imagery.LargeImage` to what the stock processor gets instead (a PIL
            image, e.g. a downsampling, or the image itself); ``None`` keeps the image. The backbone resizes a large
            ``LargeImage`` strip by strip.
        grid_pinpoints: LLaVA-NeXT anyres resolutions ``[[h, w], ...]`` used instead of the checkpoint's (see
            :meth:`Backbone.plain_vision_embeds`); ``None`` runs the stock preprocessing.
    """

    def __init__(
        self,
        backbone: Backbone,
        prepare: Callable[[LargeImage], LargeImage | Image.Image] | None = None,
        grid_pinpoints: list[list[int]] | None = None,
    ) -> None:
        self.backbone = backbone
        self.prepare = prepare
        self.grid_pinpoints = None if grid_pinpoints is None else [[int(h), int(w)] for h, w in grid_pinpoints]
        self._cache = LastImage(self._encode)

    def _encode(self, image: LargeImage) -> tuple[torch.Tensor, int]:
        if self.prepare is not None:
            image = self.prepare(image)
        if self.grid_pinpoints is None:
            vision = self.backbone.plain_vision_embeds(image)
        else:
            vision = self.backbone.plain_vision_embeds(image, grid_pinpoints=self.grid_pinpoints)
        return vision, _num_tiles(self.backbone, image.size, self.grid_pinpoints)

    def get(self, image: LargeImage, clock: StageClock | None = None) -> tuple[torch.Tensor, int]:
        """``(vision tokens [N, C], tiles encoded)`` of the image, decoded and encoded once per image.

        ``clock`` times the pixels and the encoding (:meth:`LastImage.get`).
        """
        return self._cache.get(image, clock)

    def clear(self) -> None:
        """Forget the last image's tokens."""
        self._cache.clear()


def answer_plain(
    backbone: Backbone,
    vision: torch.Tensor,
    tiles: int,
    question: str,
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] | None = None,
    max_tiles: int | None = None,
    record: SampleRecord | None = None,
    prefix_cache: PrefixCache | None = None,
    clock: StageClock | None = None,
) -> ReducerOutput:
    """Send ``vision`` tokens ``[N, C]`` in place of the image, decode greedily, and record the standard counts.

    Shared by every reducer that shortens the vision sequence before the LLM. ``record`` holds the method's own
    fields (focus recall, knobs), completed here with the counts; ``max_tiles`` (an anyres-pN limit the tokens were
    encoded under) is recorded when set. With a ``prefix_cache``, the prompt up to the last image token (system text,
    ``USER:`` header, image tokens) is computed once and reused by the next question with the same prefix
    (:mod:`lrs_plugin.backbone.prefix_cache`); the record says whether it was (``prefix_reused``,
    ``prefix_tokens_reused``). ``clock`` times the prefill (a computed prefix included) and the decoding.
    """
    prefix, suffix = backbone.split_prompt(question)
    embeds, span = backbone.assemble(prefix, vision, suffix)
    reuse: dict[str, Any] = {}
    if prefix_cache is None:
        out = backbone.generate(embeds, max_new_tokens=max_new_tokens, stop_strings=stop_strings, clock=clock)
    else:
        with prefix_cache.extend(embeds, span.stop, clock) as hit:
            out = backbone.generate(
                embeds, max_new_tokens=max_new_tokens, stop_strings=stop_strings, cache=hit.cache, clock=clock
            )
        reuse = {"prefix_reused": hit.reused, "prefix_tokens_reused": hit.length if hit.reused else 0}
    filled = dataclasses.replace(
        record or SampleRecord(),
        tiles_encoded=tiles,
        vision_tokens_encoded=tiles * backbone.tokens_per_tile,
        vision_tokens_to_llm=int(vision.shape[0]),
        llm_input_len=int(embeds.shape[1]),
        new_tokens=out.num_new_tokens,
        focus_passes=[],
        max_tiles=None if max_tiles is None else int(max_tiles),
        **reuse,
    )
    return ReducerOutput(text=out.text, record=filled)


class PreLLMReducer:
    """``answer`` / ``close`` shared by the reducers that send one vision sequence per image to the LLM.

    Subclasses set :attr:`backbone`, :attr:`vision` (a :class:`PlainVision`, or a :class:`LastImage` whose ``get``
    returns ``(tokens [N, C], tiles, ...)``) and :attr:`max_tiles`; they override :meth:`vision_for` to change the
    cached tokens per question or to record more (e.g. the focus recall of the question's ``doc``).

    Their vision tokens depend on the image (and the method's settings, a seed included) only, never on the question:
    :attr:`question_independent` says so, and :meth:`set_reuse` lets the questions on one image share the KV cache
    of the prompt up to the last image token.
    """

    stage = "pre_llm"
    question_independent: ClassVar[bool] = True
    backbone: Backbone
    vision: PlainVision | LastImage
    max_tiles: int | None = None
    prefix_cache: PrefixCache | None = None

    def set_reuse(self, enabled: bool) -> bool:
        """Turn prefix reuse on or off; ``True`` when it is now on.

        It stays off on a decoder with sliding-window layers
        (:func:`~lrs_plugin.backbone.prefix_cache.supports_prefix_reuse`): their cache cannot be cropped back.

        Raises:
            ConfigError: ``enabled`` is not a bool.
        """
        from lrs_plugin.backbone.prefix_cache import PrefixCache, supports_prefix_reuse
        from lrs_plugin.errors import ConfigError

        if not isinstance(enabled, bool):
            raise ConfigError(f"reuse must be true or false; got {enabled!r}")
        on = enabled and supports_prefix_reuse(self.backbone.language_model.config)
        self.prefix_cache = PrefixCache(self.backbone) if on else None
        return on

    def vision_for(
        self, image: LargeImage, doc: Mapping[str, Any] | None = None, clock: StageClock | None = None
    ) -> tuple[torch.Tensor, int, SampleRecord]:
        """``(tokens [N, C] sent to the LLM, tiles encoded, the method's fields)`` for ``image`` and ``doc``.

        Overrides pass ``clock`` to ``self.vision.get`` (which times the pixels and the encoding).
        """
        vision, tiles = self.vision.get(image, clock)
        return vision, tiles, SampleRecord()

    def answer(
        self,
        image: ImageInput,
        question: str,
        *,
        doc: Mapping[str, Any],
        max_new_tokens: int,
        stop_strings: Sequence[str] | None = None,
        clock: StageClock | None = None,
    ) -> ReducerOutput:
        """Answer with the tokens of :meth:`vision_for`; its record is completed with the standard counts.

        On ``clock``, :meth:`vision_for` beyond the pixels and the encoding is ``focus`` (the method's selection).
        """
        clock = clock or StageClock()
        with borrow_image(image) as source, clock.stage("focus"):
            vision, tiles, record = self.vision_for(source, doc, clock)
        return answer_plain(
            self.backbone,
            vision,
            tiles,
            question,
            max_new_tokens=max_new_tokens,
            stop_strings=stop_strings,
            max_tiles=self.max_tiles,
            record=record,
            prefix_cache=self.prefix_cache,
            clock=clock,
        )

    def close(self) -> None:
        """Forget the last image's vision tokens and prompt prefix."""
        self.vision.clear()
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
