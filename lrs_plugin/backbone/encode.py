"""The vision half of :class:`~lrs_plugin.backbone.adapter.Backbone`: tiles in, projected tokens out.

Normalising tiles as the processor does, the vision tower -> feature layer -> projector in chunks, the one 2x2
pooling of square grids, the processor's own tiles of an image and the stock model's vision tokens (anyres packing
included). :class:`VisionMixin` is mixed into ``Backbone`` and reads its dimensions (``tile_size``,
``tokens_per_tile``, ``hidden_size``, ``device``, the dtypes); it holds no state of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrs_plugin.backbone._stock_pixels import processor_pixels
from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from lrs_plugin.imagery.large_image import LargeImage

__all__ = ["VisionMixin"]


class VisionMixin:
    """Encoding methods of :class:`~lrs_plugin.backbone.adapter.Backbone` (see the module docstring)."""

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
        self, image: Image.Image | LargeImage, grid_pinpoints: list[list[int]] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """The processor's own tiles of ``image``, before the vision tower.

        A :class:`~lrs_plugin.imagery.LargeImage` is never decoded whole where the processor's resizes can be done
        strip-wise with the same result (:func:`lrs_plugin.backbone._stock_pixels.processor_pixels`).

        Args:
            image: An RGB PIL image or a ``LargeImage``.
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
        out = processor_pixels(self.processor.image_processor, image, **kwargs)
        s = self.tile_size
        pixel_values = out["pixel_values"].reshape(-1, 3, s, s)
        if pinpoints is None:
            return pixel_values, None
        width, height = image.size
        rows, cols = grid_shape((height, width), pinpoints, s)
        return pixel_values[: 1 + rows * cols], (rows, cols)

    def plain_vision_embeds(
        self, image: Image.Image | LargeImage, grid_pinpoints: list[list[int]] | None = None
    ) -> torch.Tensor:
        """Return the vision tokens the stock model inserts for ``image`` (processor + ``get_image_features``).

        For LLaVA-NeXT this includes the anyres tiles, unpadding and ``image_newline`` tokens, all done by
        transformers itself.

        When the vision tower runs in another dtype than the projector (``vision_dtype``), transformers'
        ``get_image_features`` cannot be used (it feeds the tower's output to the projector uncast), so the same
        computation runs through :meth:`image_crops`, :meth:`encode_tiles` (which casts the features) and, for
        LLaVA-NeXT, :func:`lrs_plugin.backbone.anyres.pack_anyres` with the checkpoint's pinpoints.

        Args:
            image: An RGB PIL image or a :class:`~lrs_plugin.imagery.LargeImage` (resized strip-wise where exact, as
                in :meth:`image_crops`).
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
                width, height = image.size
                packed = pack_anyres(tiles[0], tiles[1:], grid, (height, width), self.image_newline, tile_pool=pool)
            return packed.to(self.device, embed_dtype)
        inputs = processor_pixels(self.processor.image_processor, image)
        kwargs = {"pixel_values": inputs["pixel_values"].to(self.device, self.vision_dtype)}
        if "image_sizes" in inputs:
            kwargs["image_sizes"] = inputs["image_sizes"].to(self.device)
        with torch.no_grad():
            feats = self.model.model.get_image_features(**kwargs, return_dict=True).pooler_output
        return torch.cat(list(feats), dim=0).to(self.device, embed_dtype)
