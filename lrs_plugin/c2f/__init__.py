"""Coarse-to-fine text-guided token pruning (C2F).

DIP geometry (pure, :mod:`.pyramid`), tile rendering (:mod:`.render`), grid steps (pure, :mod:`.grid`), the driver
(:mod:`.driver`), the per-image features its questions share (:mod:`.features`) and the focus picture
(:mod:`.visualize`).
"""

from lrs_plugin._lazy import lazy_exports

_EXPORTS = {
    "POOLS": "driver",
    "C2FConfig": "driver",
    "C2FResult": "driver",
    "build_level_grid": "driver",
    "c2f_sequence_keep_all": "driver",
    "run_c2f": "driver",
    "select_topk": "driver",
    "BaseFeatures": "features",
    "ImageFeatures": "features",
    "LevelGeometry": "pyramid",
    "Pyramid": "pyramid",
    "build_pyramid": "pyramid",
    "child_tiles": "pyramid",
    "dip_scales": "pyramid",
    "level_geometry": "pyramid",
    "newline_indices": "pyramid",
    "tile_box_in_level": "pyramid",
    "tile_source_box": "pyramid",
    "tiles": "pyramid",
    "unpadded_grid_hw": "pyramid",
    "vote_tiles": "pyramid",
    "vote_tiles_exact": "pyramid",
    "draw_focus": "visualize",
    "draw_geometry": "visualize",
    "draw_record": "visualize",
    "focus_picture": "visualize",
    "visualize": "visualize",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
