"""The C2F paper's efficiency table, row by row, in the ``paper`` convention of :mod:`lrs_plugin.flops.terms`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.flops.terms import (
    QWEN2_7B,
    LMDims,
    fastv_tokens_per_layer,
    paper_c2f_tflops,
    paper_llm_tflops,
    pdrop_tokens_per_layer,
    uniform_tokens_per_layer,
)

__all__ = ["PAPER_SETTINGS", "paper_table", "format_paper_table"]


# --------------------------------------------------------------------------------------- the paper's efficiency table


@dataclass(frozen=True)
class _PaperSetting:
    setting: str  # row name, exactly as in the paper's table (and shared/reference/paper_efficiency.csv)
    vis_tokens_total: int  # visual tokens encoded (tiles x 576)
    vis_tokens_to_llm: int  # visual tokens at the first LLM layer
    paper_tflops: float  # the paper's number
    schedule: str  # how the row is modelled (kind of schedule + parameters)
    llm: tuple[int, ...] = ()  # visual tokens per LLM layer (filled by the schedule)
    rfm_passes: tuple[int, ...] = ()  # visual tokens of each RFM pass (C2F rows)
    rfm_layers: int = 0  # full decoder layers counted per RFM pass

    def __post_init__(self) -> None:
        object.__setattr__(self, "llm", tuple(self.llm))  # the schedule helpers return lists


_L = QWEN2_7B.num_layers
_P144 = 144 * 144 + 576  # 144 anyres tiles pooled 2x2 to 144 tokens + the 576-token base image (newlines ignored)
# Full decoder layers per RFM pass: layers 0..R-2 of R = 5 (a 4-entry llm_layer_list; the scoring layer's q/k are not
# counted), or equally all layers of R = 4. The only value of 1..6 that reproduces both C2F rows
# (tests/flops/test_flops.py).
_C2F_RFM_LAYERS = 4

#: The paper's efficiency table (LLaVA-NeXT-Qwen2-7B, a 4032-px image: anyres-p144 / a 4-level DIP) and our model
#: of each row. DIP-4layer: thumbnail + level 0 (3x3 = 9 tiles) + level 1 (all 6x6 = 36) + 50 of the 12x12 level-2
#: tiles = 96 tiles = 55,296 tokens; RFM passes over 576 + 9·144, 576 + 36·144 and 576 + 50·144 visual tokens; the
#: LLM gets 576 + 25 % of 50·144 = 2,376.
PAPER_SETTINGS: tuple[_PaperSetting, ...] = (
    _PaperSetting("anyres-p144", 83520, _P144, 243.37, "28 LLM layers x 21,312", uniform_tokens_per_layer(_P144, _L)),
    _PaperSetting(
        "anyres-p144 w/ PruMerge++", 83520, 5328, 43.75, "28 LLM layers x 5,328", uniform_tokens_per_layer(5328, _L)
    ),
    _PaperSetting(
        "anyres-p144 w/ VisionZip", 83520, 9280, 83.56, "28 LLM layers x 9,280", uniform_tokens_per_layer(9280, _L)
    ),
    _PaperSetting(
        "anyres-p144 w/ FastV",
        83520,
        _P144,
        109.21,
        "FastV K=2 R=0.5: 2 x 21,312 + 26 x 10,656",
        fastv_tokens_per_layer(_P144, _L, 2, 0.5),
    ),
    _PaperSetting(
        "anyres-p144 w/ PDrop",
        83520,
        _P144,
        101.62,
        "PDrop [7,14,21] x [0.5,0.25,0.125]: 7 layers each at 21,312/10,656/5,328/2,664",
        pdrop_tokens_per_layer(_P144, _L, [7, 14, 21], [0.5, 0.25, 0.125]),
    ),
    _PaperSetting(
        "anyres-p144 w/ prune (Ours)",
        83520,
        5760,
        82.56,
        "C2F: 4 RFM layers x 21,312, then 28 LLM layers x 5,760",
        uniform_tokens_per_layer(5760, _L),
        (_P144,),
        _C2F_RFM_LAYERS,
    ),
    _PaperSetting(
        "DIP-4layer w/ prune (Ours)",
        55296,
        2376,
        36.61,
        "C2F: 4 RFM layers x (1,872 + 5,760 + 7,776), then 28 LLM layers x 2,376",
        uniform_tokens_per_layer(2376, _L),
        (576 + 9 * 144, 576 + 36 * 144, 576 + 50 * 144),
        _C2F_RFM_LAYERS,
    ),
)


def paper_table(rows: Sequence[str] | None = None, dims: LMDims = QWEN2_7B) -> list[dict[str, Any]]:
    """Paper-convention TFLOPs (Qwen2-7B, :data:`QWEN2_7B`) of the efficiency table's rows next to the paper's.

    Every row is reproduced to 0.01 by the schedule in its ``note`` (see :data:`PAPER_SETTINGS`); ``tflops`` would
    be ``None`` for a row without a reproducing schedule (there is none at present).

    Args:
        rows: setting names (all rows when ``None``), exactly as in the paper's table.
        dims: The language model (default the paper's Qwen2-7B). The rows' schedules are per layer of a 28-layer
            model, so another model must have 28 layers too (e.g. another width).

    Returns:
        One dict per row with ``setting``, ``tflops``, ``paper_tflops``, ``vis_tokens_total``,
        ``vis_tokens_to_llm`` and ``note`` (the schedule used).

    Raises:
        ConfigError: an unknown setting name (the message lists the valid ones).
    """
    by_name = {s.setting: s for s in PAPER_SETTINGS}
    if dims.num_layers != _L:
        raise ConfigError(f"the paper's settings are schedules over {_L} LLM layers; this model has {dims.num_layers}")
    names = list(by_name) if rows is None else list(rows)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ConfigError(f"unknown paper setting(s) {unknown}; available: {list(by_name)}")
    table = []
    for s in (by_name[name] for name in names):
        if s.rfm_passes:
            tflops = paper_c2f_tflops(s.rfm_passes, s.rfm_layers, s.llm, dims)
        else:
            tflops = paper_llm_tflops(s.llm, dims)
        table.append(
            {
                "setting": s.setting,
                "tflops": tflops,
                "paper_tflops": s.paper_tflops,
                "vis_tokens_total": s.vis_tokens_total,
                "vis_tokens_to_llm": s.vis_tokens_to_llm,
                "note": s.schedule,
            }
        )
    return table


def format_paper_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Aligned text table of :func:`paper_table` rows: tokens, our TFLOPs, the paper's, and their difference."""
    header = ("setting", "vis tokens", "to LLM", "TFLOPs", "paper", "diff", "schedule")
    lines = [header]
    for row in rows:
        ours = row["tflops"]
        lines.append(
            (
                row["setting"],
                f"{row['vis_tokens_total']:,}",
                f"{row['vis_tokens_to_llm']:,}",
                "n/a" if ours is None else f"{ours:.2f}",
                f"{row['paper_tflops']:.2f}",
                "n/a" if ours is None else f"{round(ours - row['paper_tflops'], 2) + 0.0:+.2f}",
                row.get("note", ""),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        cells = [c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
