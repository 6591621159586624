"""``lrs-plugin visualize``: draw what coarse-to-fine pruning looked at for one question.

One panel per visited pyramid level, side by side: the image (downscaled) under a translucent heat map of the focus
scores of that level's grid tokens (transparent = lowest, opaque red-yellow = highest, at most 55 % opacity so
the image stays visible), the tiles encoded at that level (thin white), for levels that voted the tiles selected
at the next level (thick yellow), and the target box when the question has one (cyan). A header holds the
question, the answer and the ground truth; a footer the colour bar of the scores.

Three ways in, none of which builds a reducer: :func:`draw_record` draws a finished answer from its record's C2F
details (nothing runs again), :func:`focus_picture` answers once with a backbone, a focus scorer and a
:class:`~lrs_plugin.c2f.C2FConfig` and draws that answer, and :func:`visualize` (``lrs-plugin visualize``) loads a
checkpoint first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.c2f.driver import C2FConfig
    from lrs_plugin.focus.scorers import FocusScorer
    from lrs_plugin.harness.record import C2FDetails, C2FLevel

__all__ = ["draw_focus", "draw_geometry", "draw_record", "focus_picture", "visualize"]


_MAX_ALPHA = 140  # heat-map opacity at the highest score (of 255)


def _heat(u: float) -> tuple[int, int, int, int]:
    """RGBA of a score at ``u`` in [0, 1]: dark red -> red -> yellow, alpha rising with ``u``."""
    u = min(1.0, max(0.0, u))
    r, g = (int(140 + 230 * u), 0) if u < 0.5 else (255, int(510 * (u - 0.5)))
    return (min(r, 255), g, 0, int(_MAX_ALPHA * u))


def _panel(base, visited: C2FLevel, level, next_level, *, per_tile: int, has_newline: bool, scale: float,
           box: Sequence[float] | None, span: tuple[float, float] | None):  # fmt: skip
    """Draw one level's heat map, tiles and target box on a copy of ``base`` (PIL RGB); returns the panel."""
    import numpy as np
    from PIL import Image, ImageDraw

    from lrs_plugin.c2f.grid import grid_token_boxes
    from lrs_plugin.c2f.pyramid import tile_source_box

    boxes = grid_token_boxes(level, tuple(visited.grid_shape_hw), per_tile=per_tile, has_newline=has_newline)
    scores = np.asarray(visited.scores, dtype=np.float64)
    finite = ~np.isnan(boxes.numpy()).any(axis=1) & np.isfinite(scores)
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if finite.any():
        lo, hi = span if span is not None else (float(scores[finite].min()), float(scores[finite].max()))
        width = hi - lo or 1.0
        for (x0, y0, x1, y1), s, ok in zip(boxes.tolist(), scores.tolist(), finite.tolist(), strict=True):
            if ok:
                draw.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], fill=_heat((s - lo) / width))
    panel = Image.alpha_composite(base.convert("RGBA"), overlay)
    lines = ImageDraw.Draw(panel)
    for r, c in visited.tiles:
        x0, y0, x1, y1 = tile_source_box(level, r, c)
        lines.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=(255, 255, 255, 255), width=1)
    if next_level is not None:
        for r, c in visited.selected_tiles or ():
            x0, y0, x1, y1 = tile_source_box(next_level, r, c)
            lines.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=(255, 220, 0, 255), width=3)
    if box is not None:
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        lines.rectangle([x0 - 3, y0 - 3, x1 + 3, y1 + 3], outline=(0, 255, 255, 255), width=2)
    panel = panel.convert("RGB")
    label = (
        f"level {visited.level}: {level.grid_hw[0]}x{level.grid_hw[1]} tiles, {visited.tiles_encoded} encoded, "
        f"{visited.tokens_picked if visited.tokens_kept is None else visited.tokens_kept} kept"
    )
    draw = ImageDraw.Draw(panel)
    draw.rectangle([0, 0, 8 + 6 * len(label), 16], fill=(0, 0, 0))
    draw.text((4, 3), label, fill=(255, 255, 0))
    return panel


def _colour_bar(width: int, lo: float, hi: float):
    """A footer strip: the heat map's colours from the lowest to the highest score, composited on mid grey."""
    from PIL import Image, ImageDraw

    bar = Image.new("RGB", (width, 34), (255, 255, 255))
    draw = ImageDraw.Draw(bar)
    x0, x1 = 120, max(121, width - 120)
    for x in range(x0, x1):
        r, g, b, a = _heat((x - x0) / max(1, x1 - x0 - 1))
        k = a / 255
        draw.line([x, 4, x, 18], fill=(int(r * k + 128 * (1 - k)), int(g * k + 128 * (1 - k)), int(128 * (1 - k))))
    draw.text((4, 6), "focus score", fill=(0, 0, 0))
    draw.text((x0, 20), f"{lo:.3g}", fill=(0, 0, 0))
    draw.text((x1 - 40, 20), f"{hi:.3g}", fill=(0, 0, 0))
    draw.text((x1 + 6, 6), "cyan: target box", fill=(0, 0, 0))
    return bar


def draw_focus(
    image: Any,
    levels: Sequence[C2FLevel],
    *,
    tile: int,
    per_tile: int,
    has_newline: bool,
    base_long_side: int,
    out: str | Path,
    max_side: int = 768,
    box: Sequence[float] | None = None,
    header: Sequence[str] = (),
) -> Path:
    """Draw the visited levels of one question (``C2FResult.record.c2f.levels``) into a PNG.

    Args:
        image: The :class:`~lrs_plugin.imagery.LargeImage` the question was about.
        levels: The visited levels (``level``, ``grid_shape_hw``, ``scores``, ``tiles``, ``selected_tiles``, ...).
        tile: Tile size of the backbone (px).
        per_tile: Grid tokens per tile side.
        has_newline: Whether the grids carry a newline column.
        base_long_side: Long side of the pyramid's base level (px).
        out: PNG path to write.
        max_side: Long side of each panel.
        box: Target box ``(x1, y1, x2, y2)`` in source pixels, drawn in cyan (``None``: none).
        header: Text lines above the panels (question, answer, ground truth).

    Returns:
        ``out``.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    from lrs_plugin.c2f.pyramid import build_pyramid

    width, height = image.size
    pyramid = build_pyramid(height, width, tile=tile, base_long_side=base_long_side)
    pixels = image.level(max_side)
    base = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    scale = base.size[0] / width
    panels, spans = [], []
    for i, seen in enumerate(levels):
        level = pyramid.levels[seen.level]
        nxt = pyramid.levels[levels[i + 1].level] if i + 1 < len(levels) else None
        scores = np.asarray(seen.scores, dtype=np.float64)
        finite = scores[np.isfinite(scores)]
        span = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        spans.append(span)
        panels.append(
            _panel(base, seen, level, nxt, per_tile=per_tile, has_newline=has_newline, scale=scale, box=box, span=span)
        )
    total = sum(p.size[0] for p in panels) + 8 * (len(panels) - 1)
    head_h = 6 + 14 * len(header)
    canvas = Image.new("RGB", (total, head_h + base.size[1] + 34), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, text in enumerate(header):
        draw.text((4, 3 + 14 * n), text, fill=(0, 0, 0))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, head_h))
        x += panel.size[0] + 8
    lo = min((s[0] for s in spans), default=0.0)
    hi = max((s[1] for s in spans), default=1.0)
    canvas.paste(_colour_bar(total, lo, hi), (0, head_h + base.size[1]))
    if len(spans) > 1:
        draw.text((4, head_h + base.size[1] + 22), "(each panel scaled to its own range)", fill=(90, 90, 90))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def draw_geometry(backbone: Backbone, config: C2FConfig) -> dict[str, Any]:
    """The geometry keywords of :func:`draw_focus` for ``backbone`` under ``config``.

    Returns:
        ``{"tile", "per_tile", "has_newline", "base_long_side"}``: tile side (px), grid tokens per tile side (halved
        by the ``avg2x2`` pool), whether grids carry a newline column, and the base level's long side (px).
    """
    side = backbone.patches_per_side
    return {
        "tile": backbone.tile_size,
        "per_tile": side // 2 if config.pool == "avg2x2" else side,
        "has_newline": backbone.image_newline is not None,
        "base_long_side": config.base_long_side_tiles * backbone.tile_size,
    }


def draw_record(
    image: Any,
    details: C2FDetails,
    backbone: Backbone,
    config: C2FConfig,
    out: str | Path,
    *,
    question: str,
    answer: str,
    focus: str,
    doc: Mapping[str, Any] | None = None,
) -> Path:
    """Draw a finished C2F answer from its record's details (``SampleRecord.c2f``); nothing is run again.

    Args:
        image: The :class:`~lrs_plugin.imagery.LargeImage` the question was about.
        details: The record's :class:`~lrs_plugin.harness.record.C2FDetails` (its visited levels are drawn).
        backbone: The backbone the answer came from (tile size, patch grid, newline column).
        config: The :class:`~lrs_plugin.c2f.C2FConfig` it ran with (pooling, base level).
        out: PNG path to write.
        question: The question text (header).
        answer: The answer (header).
        focus: The focus scorer's name (header).
        doc: The question's document: its ``hbox`` is drawn as the target box, its ``ground_truth`` printed.

    Returns:
        ``out``.
    """
    box = (doc or {}).get("hbox")
    header = [f"Q: {' '.join(question.split())}", f"A: {answer!r}   focus: {focus}"]
    if doc and doc.get("ground_truth") is not None:
        header[-1] += f"   ground truth: {doc['ground_truth']!r}"
    return draw_focus(
        image,
        details.levels,
        **draw_geometry(backbone, config),
        out=out,
        box=box if isinstance(box, (list, tuple)) and len(box) == 4 else None,
        header=header,
    )


def focus_picture(
    backbone: Backbone,
    image: Any,
    question: str,
    focus: FocusScorer,
    config: C2FConfig,
    out: str | Path,
    *,
    doc: Mapping[str, Any] | None = None,
    max_new_tokens: int = 16,
) -> dict[str, Any]:
    """Answer ``question`` once with :func:`~lrs_plugin.c2f.driver.run_c2f` and draw its focus (:func:`draw_record`).

    Args:
        backbone: The loaded backbone.
        image: The :class:`~lrs_plugin.imagery.LargeImage` to ask about.
        question: The question text.
        focus: A scorer from :func:`lrs_plugin.focus.build_focus`.
        config: The C2F knobs.
        out: PNG path to write.
        doc: The question's document (``hbox``: target box, ``oracle`` focus and recall; ``ground_truth``: printed).
        max_new_tokens: Greedy decoding limit.

    Returns:
        ``{"answer", "focus", "out", "tiles_encoded", "vision_tokens_encoded", "vision_tokens_to_llm",
        "focus_tile_recall", "focus_token_recall"}``.
    """
    from lrs_plugin.c2f.driver import run_c2f

    result = run_c2f(backbone, image, question, focus, config, doc=doc, max_new_tokens=max_new_tokens)
    record = result.record
    draw_record(
        image, record.c2f, backbone, config, out, question=question, answer=result.answer, focus=focus.name, doc=doc
    )
    recall = record.focus_recall
    totals = {
        "tiles_encoded": record.tiles_encoded,
        "vision_tokens_encoded": record.vision_tokens_encoded,
        "vision_tokens_to_llm": record.vision_tokens_to_llm,
        "focus_tile_recall": None if recall is None else recall.tile,
        "focus_token_recall": None if recall is None else recall.token,
    }
    return {"answer": result.answer, "focus": focus.name, "out": str(out), **totals}


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
    doc: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load ``pretrained``, answer ``question`` about ``image_path`` with C2F, draw its focus (:func:`focus_picture`).

    Args:
        pretrained: Checkpoint folder or Hub id.
        image_path: The image file.
        question: The question text.
        out: PNG path to write.
        focus: Focus scorer name; ``auto`` picks ``rfm`` when the checkpoint ships RFM weights, else
            ``llm_attention``.
        device: Device of the backbone.
        max_new_tokens: Greedy decoding limit.
        options: Fields of :class:`~lrs_plugin.c2f.C2FConfig` (e.g. ``{"num_zoom_steps": 2}``).
        doc: The question's document: its ``hbox`` is drawn as the target box (and feeds ``focus=oracle`` and the
            focus recall), its ``ground_truth`` is printed beside the answer.

    Returns:
        As :func:`focus_picture`.

    Raises:
        ConfigError: an option that is not a :class:`~lrs_plugin.c2f.C2FConfig` field (the fields are named), or an
            invalid value.
    """
    import dataclasses

    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.c2f.driver import C2FConfig
    from lrs_plugin.errors import ConfigError
    from lrs_plugin.focus.scorers import build_focus
    from lrs_plugin.imagery.large_image import LargeImage
    from lrs_plugin.reducers.c2f import resolve_focus_name

    fields = {f.name for f in dataclasses.fields(C2FConfig)}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise ConfigError(f"visualize has no C2F option(s) {unknown}; valid: {', '.join(sorted(fields))}")
    config = C2FConfig(**dict(options or {}))
    backbone = Backbone.from_pretrained(pretrained, device=device)
    scorer = build_focus(resolve_focus_name(focus, backbone), backbone)
    with LargeImage(image_path) as image:
        return focus_picture(backbone, image, question, scorer, config, out, doc=doc, max_new_tokens=max_new_tokens)
