"""lmms-eval's own high-resolution tasks (``vstar_bench``, ``xlrs-lite``, ``hrbench4k``) with ``c2f_llava``.

Each runs through the built-in task's own ``doc_to_visual`` / ``doc_to_text`` / ``process_results`` and aggregations,
on generated local data in the task's schema (:mod:`lrs_plugin.data.synthetic.builtin_tasks`), through the real
``lmms-eval`` command. HR-Bench's ``process_results`` asks a GPT judge whenever the answer is not an option letter;
the test serves a local stand-in at ``OPENAI_API_URL`` that always answers "A" (only the plumbing is under test).
lmms-eval's ``llava_hf`` runs the same fixtures too (slow), which shows they are what a model outside this plugin
reads.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lrs_plugin.backbone.tiny import TINY_REDUCER_OPTIONS
from lrs_plugin.harness.run import offline_env, run_lmms_eval

TASKS = {  # fixture task -> the built-in task's own metric keys in results["results"]
    "fixture_vstar_bench": ["vstar_overall_acc,none"],
    "fixture_xlrs_lite": ["xlrs_micro_score,none", "xlrs_macro_score,none"],
    "fixture_hrbench4k": ["single,none", "cross,none", "average,none"],
}
DOCS = 6


class _Judge(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"choices": [{"message": {"content": "A"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def setting(tmp_path_factory, make_tiny_checkpoint, decord_stub):
    from lrs_plugin.data.synthetic.builtin_tasks import write_fixture_task

    base = tmp_path_factory.mktemp("builtin")
    names = [write_fixture_task(base / "tasks", t, n=DOCS) for t in ("vstar_bench", "xlrs-lite", "hrbench4k")]
    assert names == list(TASKS)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = offline_env(
        {
            "LRS_PLUGIN_HOME": str(base / "home"),
            "OPENAI_API_URL": f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions",
            "PYTHONPATH": str(decord_stub),
        }
    )
    checkpoint = make_tiny_checkpoint("llava_next", "qwen2")
    yield base, env, checkpoint
    server.shutdown()


def _check(run) -> None:
    for task, metrics in TASKS.items():
        got = run.results["results"][task]
        for metric in metrics:
            assert isinstance(got[metric], (int, float)), (task, metric, got)
        assert len(run.samples[task].read_text().splitlines()) == DOCS, task


def test_c2f_runs_the_builtin_high_resolution_tasks(setting):
    base, env, checkpoint = setting
    run = run_lmms_eval(
        model="c2f_llava",
        model_args=f"pretrained={checkpoint},reducer=c2f,{TINY_REDUCER_OPTIONS['c2f']},device=cpu",
        tasks=list(TASKS),
        output_path=base / "c2f",
        include_path=base / "tasks",
        env=env,
        timeout=900,
    )
    _check(run)
    figures = run.results["throughput"]
    assert figures["avg_eff_samples"] == DOCS * len(TASKS)
    # every document answered, except XLRS's change-detection question: two images, recorded as a failure
    assert figures["avg_eff_failed/fixture_vstar_bench"] == 0 and figures["avg_eff_failed/fixture_hrbench4k"] == 0
    assert figures["avg_eff_failed/fixture_xlrs_lite"] == 1
    for task in TASKS:
        assert figures[f"avg_eff_vision_tokens_to_llm/{task}"] > 0
        assert figures[f"avg_eff_tflops/{task}"] > 0


@pytest.mark.slow
def test_the_fixtures_are_what_lmms_eval_llava_hf_reads(setting):
    base, env, checkpoint = setting
    run = run_lmms_eval(
        model="llava_hf",
        model_args=f"pretrained={checkpoint},device=cpu,device_map=cpu",
        tasks=["fixture_vstar_bench", "fixture_hrbench4k"],  # llava_hf reads one image per doc in this path
        output_path=base / "llava_hf",
        include_path=base / "tasks",
        env=env,
        extra_args=["--force_simple"],
        timeout=900,
    )
    for task in ("fixture_vstar_bench", "fixture_hrbench4k"):
        for metric in TASKS[task]:
            assert isinstance(run.results["results"][task][metric], (int, float))
