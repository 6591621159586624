"""``c2f``: coarse-to-fine text-guided pruning (Dynamic Image Pyramid + Region Focus Module), see docs/c2f.md."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.reducers.base import ImageInput, ReducerOutput, borrow_image
from lrs_plugin.reducers.registry import register_reducer

if TYPE_CHECKING:
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.c2f.features import ImageFeatures
    from lrs_plugin.harness.costs import StageClock

__all__ = ["C2FReducer", "resolve_focus_name"]


def _checkpoint_has_rfm(backbone: Backbone) -> bool:
    """Whether the checkpoint folder holds Region Focus Module tensors in the released key layout."""
    from lrs_plugin.focus.rfm import has_original_rfm_weights

    source = getattr(backbone.model.config, "_name_or_path", "") or ""
    return bool(source) and has_original_rfm_weights(source)


def resolve_focus_name(name: str, backbone: Backbone) -> str:
    """``auto`` -> ``rfm`` when the checkpoint ships Region Focus Module weights, else ``llm_attention`` (logged)."""
    if name != "auto":
        return name
    from loguru import logger

    chosen = "rfm" if _checkpoint_has_rfm(backbone) else "llm_attention"
    logger.info(
        "c2f: focus=auto chose {!r} (RFM weights {}found in the checkpoint)", chosen, "" if chosen == "rfm" else "not "
    )
    return chosen


@register_reducer("c2f", stage="pyramid")
class C2FReducer:
    """Builds the pyramid lazily from the image, scores with a focus module, zooms, prunes, answers.

    Args:
        backbone: The loaded backbone.
        focus: Focus scorer name (``auto``, ``rfm``, ``llm_attention``, ``oracle``, ``uniform``).
        focus_options: Knobs of the scorer (e.g. ``{"layer": 2}``, ``{"rfm_path": ...}``).
        **config: Fields of :class:`lrs_plugin.c2f.C2FConfig` (``keep_ratio``, ``num_zoom_steps``, ...).
    """

    name = "c2f"
    stage = "pyramid"

    def __init__(
        self,
        backbone: Backbone,
        *,
        focus: str = "auto",
        focus_options: Mapping[str, Any] | None = None,
        **config: Any,
    ) -> None:
        from lrs_plugin.c2f.driver import C2FConfig
        from lrs_plugin.focus.scorers import build_focus

        fields = {f.name for f in dataclasses.fields(C2FConfig)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ConfigError(
                f"reducer 'c2f' has no option(s) {unknown}; valid: focus, focus_* knobs, {', '.join(sorted(fields))}"
            )
        self.backbone = backbone
        self.config = C2FConfig(**config)
        self.focus_name = resolve_focus_name(focus, backbone)
        self.focus = build_focus(self.focus_name, backbone, dict(focus_options or {}))
        self.features: ImageFeatures | None = None

    def set_reuse(self, enabled: bool) -> bool:
        """Share the thumbnail and base-level features across the questions on one image; ``True`` when on.

        See :mod:`lrs_plugin.c2f.features`.

        Raises:
            ConfigError: ``enabled`` is not a bool.
        """
        from lrs_plugin.c2f.features import ImageFeatures

        if not isinstance(enabled, bool):
            raise ConfigError(f"reuse must be true or false; got {enabled!r}")
        self.features = ImageFeatures() if enabled else None
        return enabled

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
        """Answer one question with coarse-to-fine pruning (stages timed on ``clock``, see :func:`run_c2f`)."""
        from lrs_plugin.c2f.driver import run_c2f

        with borrow_image(image) as source:
            result = run_c2f(
                self.backbone,
                source,
                question,
                self.focus,
                self.config,
                doc=doc,
                max_new_tokens=max_new_tokens,
                stop_strings=stop_strings,
                clock=clock,
                features=self.features,
            )
        return ReducerOutput(text=result.answer, record=dataclasses.replace(result.record, focus=self.focus_name))

    def close(self) -> None:
        """Forget the last image's kept features (the model owns the open images)."""
        if self.features is not None:
            self.features.clear()
