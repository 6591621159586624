"""The lmms-eval entry point and the task-folder hook."""

from __future__ import annotations

import os
from importlib.metadata import entry_points

from lrs_plugin import tasks_dir
from lrs_plugin.harness import task_hook as _task_hook


def test_entry_point_lists_the_models():
    (ep,) = [e for e in entry_points(group="lmms_eval.models") if e.value.startswith("lrs_plugin.")]
    manifests = ep.load()()
    assert {m.model_id for m in manifests} >= {"lrs_dummy"}
    for manifest in manifests:
        module, _, name = (manifest.simple_class_path or manifest.chat_class_path).rpartition(".")
        assert module.startswith("lrs_plugin.models.")


class _FakeManager:
    """Stands in for TaskManager: indexing a folder returns one entry named after it."""

    def _get_task_and_group(self, task_dir):
        return {os.path.abspath(task_dir): {"type": "task"}}


def test_hook_adds_our_task_folder_once(monkeypatch):
    from lmms_eval.tasks import TaskManager

    monkeypatch.delenv(_task_hook.OPT_OUT_ENV, raising=False)
    monkeypatch.setattr(TaskManager, "initialize_tasks", TaskManager.initialize_tasks)  # restored after the test
    assert _task_hook.install_task_path_hook() is True
    assert _task_hook.install_task_path_hook() is True  # idempotent: not wrapped twice
    assert getattr(TaskManager.initialize_tasks, "__wrapped__", None) is not None
    assert not hasattr(TaskManager.initialize_tasks.__wrapped__, "__wrapped__")
    ours = str(tasks_dir())
    index = TaskManager.initialize_tasks(_FakeManager(), include_path=None, include_defaults=True)
    assert ours in index
    index = TaskManager.initialize_tasks(_FakeManager(), include_path=ours, include_defaults=True)
    assert list(index).count(ours) == 1
    index = TaskManager.initialize_tasks(_FakeManager(), include_path=["/x"], include_defaults=False)
    assert ours not in index and "/x" in index


def test_hook_opt_out(monkeypatch):
    monkeypatch.setenv(_task_hook.OPT_OUT_ENV, "1")
    assert _task_hook.install_task_path_hook() is False
