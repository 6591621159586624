"""lmms-eval entry point (group ``lmms_eval.models``): the models this plugin registers.

lmms-eval imports this module every time ``lmms_eval.models`` is imported and drops *every* plugin model if it
raises, so it imports nothing heavy and does nothing but describe the classes (imported lazily when selected).
"""

from __future__ import annotations

__all__ = ["get_manifests"]


def get_manifests() -> list:
    """Return the ``ModelManifest`` of each model of this plugin."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id="lrs_dummy", simple_class_path="lrs_plugin.models.lrs_dummy.LrsDummy"),
    ]
