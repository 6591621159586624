"""lrs-plugin: large remote-sensing image benchmarks for lmms-eval, and coarse-to-fine token pruning for LLaVA.

Public entry points:

* ``lrs-plugin`` command (:func:`lrs_plugin.cli.main`): fetch data, score answer files, run the demo.
* lmms-eval tasks ``lrs_vqa`` (``lrs_vqa_fair`` / ``_bridge`` / ``_star``) and ``mmerealworld_rs``, in
  :func:`tasks_dir` (pass it to ``lmms-eval --include_path``).
* Data: :mod:`lrs_plugin.data.lrs_vqa`, :mod:`lrs_plugin.data.mme_realworld_rs`; scoring:
:mod:`lrs_plugin.scoring.rules`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from lrs_plugin import errors
from lrs_plugin.harness.run import tasks_dir

try:
    __version__ = version("lrs-plugin")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "errors", "tasks_dir"]
