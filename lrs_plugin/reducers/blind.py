"""``blind``: the same question with no image, the language-prior floor.

Remote-sensing benchmarks answer a surprising share of their questions without pixels (RSHR-Bench's text-only
baseline; "how many ..." and "is this rural or urban" have common answers). ``blind`` asks the language model the
task's question in the chat template the image prompts use, minus the ``<image>`` line
(:meth:`Backbone.text_prompt_ids <lrs_plugin.backbone.Backbone.text_prompt_ids>`), and decodes greedily like every
other reducer. It is the one text-only path of the plugin: the model class answers a request that holds no image with
:func:`answer_without_image` too.

It sends no vision token: ``tiles_encoded``, ``vision_tokens_encoded`` and ``vision_tokens_to_llm`` are 0, the TFLOPs
have no vision, projector or focus terms, and no focus recall is recorded (there are no tokens to cover the target).
It has no budget knob (``lrs-plugin sweep`` refuses it). The model still opens and decodes the request's image before
calling it, as for every reducer, so an unreadable image fails the same samples under every method; that time is in
``image_read_s``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.record import SampleRecord
from lrs_plugin.reducers.base import ImageInput, ReducerOutput
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.harness.costs import StageClock

__all__ = ["BlindReducer", "answer_without_image"]


def answer_without_image(
    backbone: Backbone,
    question: str,
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] | None = None,
    clock: StageClock | None = None,
) -> ReducerOutput:
    """Answer ``question`` with the language model alone: the image prompt's chat template without the image.

    The record holds zero vision tokens and tiles, the prompt length and the tokens generated.
    """
    ids = backbone.text_prompt_ids(question)
    embeds = backbone.embed_ids(ids).unsqueeze(0)
    out = backbone.generate(embeds, max_new_tokens=max_new_tokens, stop_strings=stop_strings, clock=clock)
    record = SampleRecord(
        tiles_encoded=0,
        vision_tokens_encoded=0,
        vision_tokens_to_llm=0,
        llm_input_len=int(embeds.shape[1]),
        new_tokens=out.num_new_tokens,
        focus_passes=[],
    )
    return ReducerOutput(text=out.text, record=record)


@register_reducer("blind", stage="pre_llm")
class BlindReducer:
    """The question without its image (see the module docstring); takes no options."""

    name = "blind"
    stage = "pre_llm"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        if options:
            raise ConfigError(f"reducer 'blind' takes no options; got {sorted(options)}")
        self.backbone = backbone

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
        """Answer ``question`` without looking at ``image``."""
        return answer_without_image(
            self.backbone, question, max_new_tokens=max_new_tokens, stop_strings=stop_strings, clock=clock
        )

    def close(self) -> None:
        """Nothing is kept between questions."""
