"""``anyres``: LLaVA-NeXT with at most ``N`` anyres grid tiles (the C2F paper's ``anyres-pN`` setting).

LLaVA-NeXT resizes an image to one of its *grid pinpoints* and cuts it into ``rows x cols`` tiles of ``S x S``
pixels, encoded after a downsized base image of the whole picture. ``anyres-pN`` bounds that grid to ``N`` tiles
(the base image is not counted); every resulting vision token goes to the LLM, laid out exactly as the stock model
lays it out (unpadding, one ``image_newline`` per patch row). Two ways to turn ``N`` into pinpoints
(``pinpoints=``):

* ``square`` (default, the paper's convention, LLaVA-OneVision's ``"(1x1),...,(kxk)"``): every grid with
  ``rows, cols <= k`` where ``N = k * k``, e.g. ``p9`` allows 1x1 ... 3x3, ``p144`` allows up to 12x12.
* ``checkpoint``: the checkpoint's own ``image_grid_pinpoints`` whose grid has at most ``N`` tiles (any ``N``).

``max_tiles=None`` keeps the checkpoint's own pinpoints, i.e. exactly ``reducer=none``.

Square grids may go beyond what the checkpoint was trained on: LLaVA-v1.6 checkpoints list grids of at most 2x2
or 1x3 / 3x1 tiles, so the paper's ``anyres-p144`` (up to 12x12 tiles, 144 * 576 vision tokens on 336-px CLIP) runs
the model far outside its trained grids and sequence lengths. Nothing here refuses that; it is the setting measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers._stock import PlainVision, PreLLMReducer
from lrs_plugin.reducers._tiles import TileLimit, take_options
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone

__all__ = ["AnyresConfig", "AnyresReducer"]


@dataclass(frozen=True)
class AnyresConfig(TileLimit):
    """Knobs of the ``anyres`` reducer: exactly the shared anyres-pN limit (``max_tiles``, ``pinpoints``)."""

    reducer: str = "anyres"


@register_reducer("anyres", stage="pre_llm", archs=("llava_next",))
class AnyresReducer(PreLLMReducer):
    """The stock LLaVA-NeXT model with its anyres grid limited to ``max_tiles`` tiles; every vision token kept.

    The vision tokens depend on the image only, so those of the last image are kept (questions come grouped by
    image).
    """

    name = "anyres"
    stage = "pre_llm"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        tiles, _ = take_options(options, "anyres", ())
        if backbone.arch != "llava_next":  # build_reducer refuses it first; direct construction too
            raise ConfigError(f"reducer 'anyres' needs a llava_next backbone; this checkpoint is {backbone.arch!r}")
        self.config = AnyresConfig(max_tiles=tiles.max_tiles, pinpoints=tiles.pinpoints)
        self.backbone = backbone
        # None: the checkpoint's own pinpoints, i.e. the stock path.
        self.grid_pinpoints: list[list[int]] | None = tiles.grid_pinpoints(backbone)
        self.vision = PlainVision(backbone, grid_pinpoints=self.grid_pinpoints)
        self.max_tiles = tiles.max_tiles
