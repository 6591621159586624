"""Compute accounting.

Analytic terms (:mod:`.terms`), the paper's efficiency table (:mod:`.paper`) and the per-sample accounting the
models record (:mod:`.accounting`).
"""

from lrs_plugin._lazy import lazy_exports

_EXPORTS = {
    "LMDims": "terms",
    "VisionDims": "terms",
    "QWEN2_7B": "terms",
    "CLIP_VIT_L_336": "terms",
    "load_config_dims": "terms",
    "vision_layers_used": "terms",
    "paper_layer_macs": "terms",
    "paper_llm_tflops": "terms",
    "paper_c2f_tflops": "terms",
    "uniform_tokens_per_layer": "terms",
    "fastv_keep": "terms",
    "pdrop_keeps": "terms",
    "staged_tokens_per_layer": "terms",
    "fastv_tokens_per_layer": "terms",
    "pdrop_tokens_per_layer": "terms",
    "equivalent_tokens": "terms",
    "vision_tower_flops": "terms",
    "projector_flops": "terms",
    "llm_prefill_flops": "terms",
    "llm_decode_flops": "terms",
    "focus_flops": "terms",
    "PAPER_SETTINGS": "paper",
    "paper_table": "paper",
    "format_paper_table": "paper",
    "EFFICIENCY_KEYS": "accounting",
    "MEASURED_KEYS": "accounting",
    "EfficiencyTally": "accounting",
    "ModelDims": "accounting",
    "efficiency_figures": "accounting",
    "sample_tflops": "accounting",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
