"""lmms-eval entry point (group ``lmms_eval.models``): the models this plugin registers.

lmms-eval imports this module every time ``lmms_eval.models`` is imported and drops *every* plugin model if it
raises, so it imports nothing heavy: it describes the classes (imported lazily when selected) and installs the
version-guarded hook that lets ``lmms-eval --tasks lrs_vqa`` find our tasks without ``--include_path``
(:mod:`lrs_plugin.harness.task_hook`).
"""

from __future__ import annotations

__all__ = ["get_manifests"]


def get_manifests() -> list:
    """Return the ``ModelManifest`` of each model of this plugin."""
    from lmms_eval.models.registry_v2 import ModelManifest

    try:  # tasks without --include_path; a failure here must never hide the models
        from lrs_plugin.harness.task_hook import install_task_path_hook

        install_task_path_hook()
    except Exception:  # noqa: BLE001 - lmms-eval would drop every plugin model if this raised
        from loguru import logger

        logger.opt(exception=True).warning("lrs-plugin: task folder hook not installed; use --include_path")
    return [
        ModelManifest(model_id="c2f_llava", simple_class_path="lrs_plugin.models.c2f_llava.C2FLlava"),
        ModelManifest(model_id="lrs_dummy", simple_class_path="lrs_plugin.models.lrs_dummy.LrsDummy"),
    ]
