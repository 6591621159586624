"""Which tokens matter for the question.

The scorer registry and scorers (:mod:`.scorers`), explicit attention rows (:mod:`.attention`), the Region Focus
Module (:mod:`.rfm`) and its distillation (:mod:`.distill`), and focus recall, the metric of whether a method looked
where the answer is (:mod:`.recall`).
"""

from lrs_plugin._lazy import lazy_exports

_EXPORTS = {
    "FocusContext": "scorers",
    "FocusScorer": "scorers",
    "LLMAttentionScorer": "scorers",
    "OracleScorer": "scorers",
    "RFMScorer": "scorers",
    "UniformScorer": "scorers",
    "available_focus": "scorers",
    "build_focus": "scorers",
    "register_focus": "scorers",
    "save_rfm_original_layout": "scorers",
    "DistillConfig": "distill",
    "PassRecord": "distill",
    "distill_rfm": "distill",
    "distill_terms": "distill",
    "record_c2f_passes": "distill",
    "train_rfm": "distill",
    "box_center_tile": "recall",
    "clipped_box": "recall",
    "doc_box": "recall",
    "recall_stats": "recall",
    "region_recall": "recall",
    "tile_recall": "recall",
    "token_recall": "recall",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
