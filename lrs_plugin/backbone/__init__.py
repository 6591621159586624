"""The adapter over transformers' own LLaVA / LLaVA-NeXT classes, and everything about their inputs.

Loading and the config's dimensions (:mod:`.adapter`), its vision half: tiles to projected tokens (:mod:`.encode`),
its language half: prompt, ``inputs_embeds`` and greedy generation (:mod:`.language`), the KV cache of a prompt prefix
shared by the questions on one image (:mod:`.prefix_cache`), the task's stop strings
applied once during generation (:mod:`.stops`), anyres geometry (:mod:`.anyres`), prompt tokenization and chat
templates (:mod:`.prompt`, :mod:`.chat_templates`), the vision-tower probe (:mod:`.vision_probe`), token cells
(:mod:`.token_cells`), tiny test checkpoints (:mod:`.tiny`) and the original-layout converter (:mod:`.convert`).
"""

from lrs_plugin._lazy import lazy_exports

_EXPORTS = {
    "ATTN_IMPLEMENTATIONS": "adapter",
    "DTYPES": "adapter",
    "IMAGE_TOKEN": "language",
    "SUPPORTED_ARCHS": "adapter",
    "SUPPORTED_TEXT_MODELS": "adapter",
    "VICUNA_CHAT_TEMPLATE": "language",
    "VISION_DTYPES": "adapter",
    "Backbone": "adapter",
    "GenerationOutput": "language",
    "PrefixCache": "prefix_cache",
    "cut_at_stop": "stops",
    "stop_criterion": "stops",
    "stop_strings_of": "stops",
    "ARCHS": "tiny",
    "CORPUS": "tiny",
    "LMS": "tiny",
    "TINY_REDUCER_OPTIONS": "tiny",
    "VARIANTS": "tiny",
    "build_tiny_llava": "tiny",
    "chat_template_for": "tiny",
    "FAMILIES": "convert",
    "QWEN2_CHAT_TEMPLATE": "convert",
    "RFM_FILE": "convert",
    "VICUNA_V1_CHAT_TEMPLATE": "convert",
    "CheckpointLayoutError": "convert",
    "OutputExistsError": "convert",
    "convert_original_llava": "convert",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
