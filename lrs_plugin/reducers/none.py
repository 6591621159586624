"""``none``: the plain backbone, exactly as transformers (and lmms-eval's ``llava_hf``) runs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone

from lrs_plugin.reducers._stock import PlainVision, PreLLMReducer

__all__ = ["PlainReducer"]


@register_reducer("none", stage="pre_llm")
class PlainReducer(PreLLMReducer):
    """The stock model: the processor's own image preprocessing, every vision token sent to the LLM.

    The whole image is decoded (the processor needs it); on huge images this is the costly baseline by design. The
    vision tokens depend on the image only, so those of the last image are kept: the model asks the questions of one
    image in a row, and each image is decoded and encoded once.
    """

    name = "none"
    stage = "pre_llm"

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        if options:
            raise ConfigError(f"reducer 'none' takes no options; got {sorted(options)}")
        self.backbone = backbone
        self.vision = PlainVision(backbone)
