"""The shared base of the in-LLM reducers (FastV, PyramidDrop): stock vision tokens, a pruned prefill, its record.

A subclass sets :attr:`InLLMReducer.name` and :attr:`InLLMReducer.positions` and gives the drop schedule
(:meth:`InLLMReducer.schedule`); the prefill and the decoding are :mod:`lrs_plugin.reducers._prefill`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lrs_plugin.flops.terms import equivalent_tokens
from lrs_plugin.harness.record import InLLMDetails, SampleRecord
from lrs_plugin.reducers._prefill import DropStage, PrefillResult, generate_pruned
from lrs_plugin.reducers._stock import PlainVision
from lrs_plugin.reducers._tiles import TileLimit
from lrs_plugin.reducers.base import ImageInput, ReducerOutput, borrow_image

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.harness.costs import StageClock
    from lrs_plugin.harness.record import FocusRecall

__all__ = ["InLLMReducer"]


class InLLMReducer:
    """Shared ``answer`` of the in-LLM reducers: stock vision tokens, a pruned prefill, cached greedy decoding.

    Subclasses set :attr:`name` and :attr:`positions` and implement :meth:`schedule`. The vision tokens of the last
    image are kept, as in ``none`` (questions of one image come in a row).

    Focus recall (:mod:`lrs_plugin.reducers._cells`): every tile is encoded, so the tile recall is 1.0 for a box
    inside the image. The token recall is over the cells of the image tokens that survive the **last** drop stage
    (the most pruned set, the one the answer's later layers and every decoding step read); tokens dropped later
    than the first stage still reached the early layers, which this figure does not credit.
    """

    name: str = ""
    stage = "in_llm"
    positions: str = "original"

    def __init__(self, backbone: Backbone, tiles: TileLimit | None = None) -> None:
        self.backbone = backbone
        self.tiles = tiles if tiles is not None else TileLimit(reducer=self.name)
        self.vision = PlainVision(backbone, grid_pinpoints=self.tiles.grid_pinpoints(backbone))

    def schedule(self, num_image: int) -> tuple[list[DropStage], SampleRecord]:
        """Drop stages for ``num_image`` image tokens, and a record of the method's own fields (its knobs)."""
        raise NotImplementedError

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
        """Answer one question, dropping image tokens inside the LLM (their ranking is timed as ``llm_prefill``)."""
        with borrow_image(image) as source:
            vision, tiles = self.vision.get(source, clock)
            image_wh = source.size
        prefix, suffix = self.backbone.split_prompt(question)
        embeds, span = self.backbone.assemble(prefix, vision, suffix)
        stages, knobs = self.schedule(span.stop - span.start)
        out, prefill = generate_pruned(
            self.backbone,
            embeds,
            span,
            stages,
            positions=self.positions,
            max_new_tokens=max_new_tokens,
            stop_strings=stop_strings,
            clock=clock,
        )
        record = dataclasses.replace(
            knobs,
            tiles_encoded=tiles,
            vision_tokens_encoded=tiles * self.backbone.tokens_per_tile,
            vision_tokens_to_llm=span.stop - span.start,
            llm_input_len=int(embeds.shape[1]),
            new_tokens=out.num_new_tokens,
            focus_passes=[],
            llm_tokens_per_layer=prefill.tokens_per_layer,
            in_llm=InLLMDetails(
                vision_tokens_per_layer=prefill.vision_tokens_per_layer,
                equivalent_vision_tokens=equivalent_tokens(prefill.vision_tokens_per_layer),
                position_ids=self.positions,
            ),
            max_tiles=self.tiles.max_tiles,
            focus_recall=self._focus_recall(image_wh, doc, prefill, span),
        )
        return ReducerOutput(text=out.text, record=record)

    def _focus_recall(
        self, image_wh: tuple[int, int], doc: Mapping[str, Any], prefill: PrefillResult, span: slice
    ) -> FocusRecall:
        """Recall of the image tokens kept by the last stage (all of them without a stage)."""
        from lrs_plugin.reducers._cells import focus_recall, stock_cells

        kept = prefill.stage_kept[-1] - span.start if prefill.stage_kept else None
        cells = stock_cells(self.backbone, image_wh, self.vision.grid_pinpoints)
        return focus_recall(self.backbone, doc, image_wh, cells, kept, num_tokens=span.stop - span.start)

    def close(self) -> None:
        """Forget the last image's vision tokens."""
        self.vision.clear()
