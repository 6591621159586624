"""Running the real ``lmms-eval`` command and finding what it wrote.

lmms-eval 0.7.3 exits 0 even when the evaluation raised, so success is judged by the results file, never by the
exit code. Used by ``lrs-plugin demo`` and by the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lrs_plugin.errors import EvaluationFailedError

__all__ = ["tasks_dir", "EvalRun", "run_lmms_eval", "offline_env"]


def tasks_dir() -> Path:
    """Folder of this plugin's lmms-eval task YAMLs (the value for ``--include_path``)."""
    import lrs_plugin.tasks

    return Path(lrs_plugin.tasks.__file__).resolve().parent


def offline_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus the variables that keep Hugging Face libraries off the network."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class EvalRun:
    """Files written by one lmms-eval run.

    Attributes:
        results: Parsed ``*_results.json``.
        results_path: Its path.
        samples: Per-task ``*_samples_<task>.jsonl`` paths (only with ``--log_samples``).
        log: Combined stdout/stderr of the command.
        wall_s: Wall time of the command in seconds.
    """

    results: dict
    results_path: Path
    samples: dict[str, Path] = field(default_factory=dict)
    log: str = ""
    wall_s: float = 0.0


def _newest_results(output_path: Path, since: float) -> Path | None:
    found = [p for p in output_path.rglob("*_results.json") if p.stat().st_mtime >= since - 1]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def run_lmms_eval(
    *,
    model: str,
    tasks: Sequence[str],
    output_path: Path,
    model_args: str = "",
    include_path: Path | None = None,
    use_task_hook: bool = False,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    launcher: Sequence[str] | None = None,
    timeout: float | None = None,
    stream: bool = False,
) -> EvalRun:
    """Run ``python -m lmms_eval`` (optionally under a launcher such as ``accelerate launch``) and collect outputs.

    Args:
        model: lmms-eval model id (``--model``).
        tasks: Task or group names.
        output_path: ``--output_path`` folder.
        model_args: ``--model_args`` string.
        include_path: Task folder; defaults to this plugin's :func:`tasks_dir`.
        use_task_hook: Run the ``lmms-eval`` console script with no ``--include_path``, relying on the plugin's
            task-folder hook: the plain command users type (``lmms-eval --model c2f_llava --tasks lrs_vqa ...``).
        extra_args: More CLI arguments (e.g. ``["--limit", "4"]``).
        env: Environment of the child process (default: :func:`offline_env`).
        launcher: Command prefix replacing ``[sys.executable]`` (its last element must accept ``-m lmms_eval``).
        timeout: Seconds before the child is killed.
        stream: Echo the child's output while it runs (for interactive commands such as the demo).

    Returns:
        The parsed results and the paths of the sample logs.

    Raises:
        EvaluationFailedError: No results file was written; the message carries the tail of the log.
    """
    output_path = Path(output_path)
    output_path.mkdir(parents=True, exist_ok=True)
    if launcher is None and use_task_hook:
        # The exact command users type: the `lmms-eval` console script next to this interpreter.
        cmd = [str(Path(sys.executable).with_name("lmms-eval"))]
    else:
        cmd = [*(launcher or [sys.executable]), "-m", "lmms_eval"]
    cmd += ["--model", model, "--tasks", ",".join(tasks)]
    if model_args:
        cmd += ["--model_args", model_args]
    if not use_task_hook:
        cmd += ["--include_path", str(include_path or tasks_dir())]
    cmd += ["--output_path", str(output_path)]
    cmd += ["--log_samples", *extra_args]
    start = time.time()
    proc = subprocess.Popen(
        cmd,
        env=dict(env) if env is not None else offline_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if stream:
            sys.stderr.write(line)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log = "".join(lines)
    results_path = _newest_results(output_path, start)
    if results_path is None:
        tail = "\n".join(log.splitlines()[-40:])
        raise EvaluationFailedError(
            f"lmms-eval wrote no results file under {str(output_path)!r} (exit code {proc.returncode}); "
            f"command: {' '.join(cmd)}\n--- last lines of its output ---\n{tail}"
        )
    stamp = results_path.name[: -len("_results.json")]
    samples = {}
    for path in results_path.parent.glob(f"{stamp}_samples_*.jsonl"):
        samples[path.name[len(stamp) + len("_samples_") : -len(".jsonl")]] = path
    return EvalRun(
        results=json.loads(results_path.read_text()),
        results_path=results_path,
        samples=samples,
        log=log,
        wall_s=time.time() - start,
    )
