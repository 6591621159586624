"""``lrs-plugin visualize``: draw what coarse-to-fine pruning looked at for one question.

One panel per visited pyramid level, side by side: the image (downscaled), the focus scores of that level's grid
tokens as a heat map (red = high), the tiles encoded at that level (thin white) and, for levels that voted, the
tiles selected at the next level (thick yellow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["draw_focus", "visualize"]


def _panel(base, level_stats: Mapping[str, Any], level, next_level, *, per_tile: int, has_newline: bool, scale: float):
    """Draw one level's heat map and tiles on a copy of ``base`` (PIL RGB); returns the panel."""
    import numpy as np
    from PIL import Image, ImageDraw

    from lrs_plugin._c2f_grid import grid_token_boxes
    from lrs_plugin.pyramid import tile_source_box

    boxes = grid_token_boxes(level, tuple(level_stats["grid_shape_hw"]), per_tile=per_tile, has_newline=has_newline)
    scores = np.asarray(level_stats["scores"], dtype=np.float64)
    finite = ~np.isnan(boxes.numpy()).any(axis=1)
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if finite.any():
        lo, hi = float(scores[finite].min()), float(scores[finite].max())
        span = hi - lo or 1.0
        for (x0, y0, x1, y1), s, ok in zip(boxes.tolist(), scores.tolist(), finite.tolist(), strict=True):
            if ok:
                a = int(200 * (s - lo) / span)
                draw.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], fill=(255, 0, 0, a))
    for r, c in level_stats.get("tiles", ()):
        x0, y0, x1, y1 = tile_source_box(level, r, c)
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=(255, 255, 255, 255), width=1)
    if next_level is not None:
        for r, c in level_stats.get("selected_tiles", ()):
            x0, y0, x1, y1 = tile_source_box(next_level, r, c)
            draw.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=(255, 220, 0, 255), width=3)
    panel = Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")
    label = (
        f"level {level_stats['level']}: {level.grid_hw[0]}x{level.grid_hw[1]} tiles, "
        f"{level_stats['tiles_encoded']} encoded, {level_stats.get('tokens_kept', level_stats['tokens_picked'])} kept"
    )
    ImageDraw.Draw(panel).text((4, 4), label, fill=(255, 255, 0))
    return panel


def draw_focus(
    image: Any,
    levels: Sequence[Mapping[str, Any]],
    *,
    tile: int,
    per_tile: int,
    has_newline: bool,
    base_long_side: int,
    out: str | Path,
    max_side: int = 768,
) -> Path:
    """Draw the C2F statistics of one question (``C2FResult.stats["levels"]``) into a PNG.

    Args:
        image: The :class:`~lrs_plugin.imagery.LargeImage` the question was about.
        levels: Per visited level: ``level``, ``grid_shape_hw``, ``scores``, ``tiles``, ``selected_tiles``, ...
        tile: Tile size of the backbone (px).
        per_tile: Grid tokens per tile side.
        has_newline: Whether the grids carry a newline column.
        base_long_side: Long side of the pyramid's base level (px).
        out: PNG path to write.
        max_side: Long side of each panel.

    Returns:
        ``out``.
    """
    import numpy as np
    from PIL import Image

    from lrs_plugin.pyramid import build_pyramid

    width, height = image.size
    pyramid = build_pyramid(height, width, tile=tile, base_long_side=base_long_side)
    pixels = image.level(max_side)
    base = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    scale = base.size[0] / width
    panels = []
    for i, stats in enumerate(levels):
        level = pyramid.levels[stats["level"]]
        nxt = pyramid.levels[levels[i + 1]["level"]] if i + 1 < len(levels) else None
        panels.append(_panel(base, stats, level, nxt, per_tile=per_tile, has_newline=has_newline, scale=scale))
    canvas = Image.new("RGB", (sum(p.size[0] for p in panels) + 8 * (len(panels) - 1), base.size[1]), (0, 0, 0))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.size[0] + 8
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def visualize(
    pretrained: str,
    image_path: str | Path,
    question: str,
    out: str | Path,
    *,
    focus: str = "auto",
    device: str = "cpu",
    max_new_tokens: int = 16,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Answer ``question`` about ``image_path`` with C2F and draw its focus; returns the answer and statistics."""
    from lrs_plugin.backbone import Backbone
    from lrs_plugin.c2f import run_c2f
    from lrs_plugin.imagery import LargeImage
    from lrs_plugin.reducers.c2f import C2FReducer, resolve_focus_name

    backbone = Backbone.from_pretrained(pretrained, device=device)
    reducer = C2FReducer(backbone, focus=resolve_focus_name(focus, backbone), **dict(options or {}))
    with LargeImage(image_path) as image:
        result = run_c2f(backbone, image, question, reducer.focus, reducer.config, max_new_tokens=max_new_tokens)
        draw_focus(
            image,
            result.stats["levels"],
            tile=backbone.tile_size,
            per_tile=backbone.patches_per_side // 2 if reducer.config.pool == "avg2x2" else backbone.patches_per_side,
            has_newline=backbone.image_newline is not None,
            base_long_side=reducer.config.base_long_side_tiles * backbone.tile_size,
            out=out,
        )
    reducer.close()
    totals = {k: result.stats[k] for k in ("tiles_encoded", "vision_tokens_encoded", "vision_tokens_to_llm")}
    return {"answer": result.answer, "focus": reducer.focus_name, "out": str(out), **totals}
