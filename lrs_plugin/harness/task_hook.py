"""Make this plugin's tasks visible to ``lmms-eval`` without ``--include_path``.

lmms-eval 0.7.3 has an entry point for models (``lmms_eval.models``) but none for tasks, and its
``LMMS_EVAL_PLUGINS`` variable adds plugin task folders only after the task index is built. The CLI does import
``lmms_eval.models`` (and so calls our model entry point) before it builds its ``TaskManager``; the entry point
therefore installs this hook, which appends our task folder to the paths every ``TaskManager`` indexes.

Guard rails: it is installed only for the lmms-eval versions in :data:`SUPPORTED_VERSIONS` (elsewhere
``--include_path`` is needed, as documented), only once, and never when ``LRS_PLUGIN_NO_TASK_HOOK=1``. Built-in
tasks still win on a name clash (lmms-eval indexes its own folder first), so our task names avoid built-in ones.
``lmms-eval tasks list`` does not import the models and so does not list our tasks.
"""

from __future__ import annotations

import os

__all__ = ["SUPPORTED_VERSIONS", "OPT_OUT_ENV", "install_task_path_hook"]

SUPPORTED_VERSIONS = ("0.7.3",)
OPT_OUT_ENV = "LRS_PLUGIN_NO_TASK_HOOK"
_MARK = "_lrs_plugin_task_hook"


def install_task_path_hook() -> bool:
    """Install the hook if allowed; return whether it is active."""
    if os.environ.get(OPT_OUT_ENV, "").strip() not in ("", "0"):
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        if version("lmms-eval") not in SUPPORTED_VERSIONS:
            return False
    except PackageNotFoundError:
        return False
    from lmms_eval.tasks import TaskManager

    original = TaskManager.initialize_tasks
    if getattr(original, _MARK, False):
        return True

    from lrs_plugin.harness.run import tasks_dir

    ours = str(tasks_dir())

    def initialize_tasks(self, include_path=None, include_defaults=True):
        paths = [] if include_path is None else [include_path] if isinstance(include_path, str) else list(include_path)
        if include_defaults and all(os.path.abspath(p) != ours for p in paths):
            paths.append(ours)
        return original(self, include_path=paths or None, include_defaults=include_defaults)

    setattr(initialize_tasks, _MARK, True)
    initialize_tasks.__wrapped__ = original
    initialize_tasks.__doc__ = original.__doc__
    TaskManager.initialize_tasks = initialize_tasks
    return True
