"""Per-sample efficiency accounting recorded by the models: analytic TFLOPs in the ``full`` convention.

Every term comes from :mod:`lrs_plugin.flops` (formulas in its docstrings) and the token counts a reducer reports in
its :class:`~lrs_plugin.reducers.ReducerOutput` stats, so all methods are counted the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lrs_plugin import flops

__all__ = ["ModelDims", "sample_tflops"]


@dataclass(frozen=True)
class ModelDims:
    """Dimensions of one backbone, read from its config.

    Attributes:
        lm: Language model dimensions.
        vision: Vision tower dimensions.
        vision_layers_used: Vision encoder layers actually run (up to the feature layer).
        projector_in: Projector input width (vision hidden size times the number of feature layers).
    """

    lm: flops.LMDims
    vision: flops.VisionDims
    vision_layers_used: int
    projector_in: int

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        """Build from a LLaVA / LLaVA-NeXT transformers config."""
        lm = flops.LMDims.from_config(config.text_config)
        vision = flops.VisionDims.from_config(config.vision_config)
        layer = config.vision_feature_layer
        layers = [layer] if isinstance(layer, int) else list(layer)
        used = max(flops.vision_layers_used(li, vision.num_layers) for li in layers)
        return cls(lm=lm, vision=vision, vision_layers_used=used, projector_in=vision.hidden * len(layers))


def sample_tflops(stats: Mapping[str, Any], dims: ModelDims) -> dict[str, float]:
    """TFLOPs of one answered question, by stage, and their ``total``.

    Args:
        stats: A reducer's stats: ``tiles_encoded``, ``vision_tokens_encoded``, ``llm_input_len`` (or
            ``llm_tokens_per_layer`` for in-LLM reducers), ``new_tokens`` and ``focus_passes`` (each
            ``{"seq_len", "decoder_layers"}``; a scorer with 0 decoder layers costs nothing here); optional
            ``projector_tokens`` when a reducer projects fewer tokens than it encoded (VisionZip).
        dims: The backbone's dimensions.

    Returns:
        ``{"vision_tower", "projector", "focus", "llm_prefill", "llm_decode", "total"}`` in TFLOPs (1e12 FLOPs).
    """
    lm = dims.lm
    per_layer = stats.get("llm_tokens_per_layer") or flops.uniform_tokens_per_layer(
        int(stats["llm_input_len"]), lm.num_layers
    )
    terms = {
        "vision_tower": flops.vision_tower_flops(int(stats["tiles_encoded"]), dims.vision, dims.vision_layers_used),
        "projector": flops.projector_flops(
            int(stats.get("projector_tokens", stats["vision_tokens_encoded"])), dims.projector_in, lm.hidden
        ),
        "focus": sum(
            flops.focus_flops(int(p["seq_len"]), lm, int(p["decoder_layers"]) + 1)
            for p in stats.get("focus_passes", ())
            if int(p.get("decoder_layers", 0)) > 0
        ),
        "llm_prefill": flops.llm_prefill_flops(per_layer, lm),
        "llm_decode": flops.llm_decode_flops(list(per_layer), max(int(stats.get("new_tokens", 1)) - 1, 0), lm),
    }
    out = {k: v / 1e12 for k, v in terms.items()}
    out["total"] = sum(out.values())
    return out
