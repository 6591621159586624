"""Shared fixtures: generated, format-true data (never the Hub), tiny checkpoints, images, free ports, and an isolated
plugin cache.

The ``make_*`` fixtures are session-scoped factories: each builds a thing once per test session for a given set of
arguments and hands the same path to every module that asks for it again. Treat what they return as read-only; a
test that changes a checkpoint or a tree copies it first (``shutil.copytree``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cached(root: Path, build: Callable[..., Path], defaults: Callable[..., Any]) -> Callable[..., Path]:
    """``build(folder, **kwargs)`` once per distinct ``kwargs`` (arguments equal to ``defaults``' left out)."""
    params = inspect.signature(defaults).parameters
    default = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    built: dict[str, Path] = {}

    def make(**kwargs: Any) -> Path:
        given = {k: v for k, v in kwargs.items() if k not in default or default[k] != v}
        key = json.dumps(given, sort_keys=True, default=repr)
        if key not in built:
            built[key] = build(root / hashlib.sha1(key.encode()).hexdigest()[:12], **kwargs)
        return built[key]

    return make


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own plugin cache; dataset roots come only from what a test sets."""
    monkeypatch.setenv("LRS_PLUGIN_HOME", str(tmp_path_factory.getbasetemp() / "lrs_plugin_home"))
    monkeypatch.delenv("LRS_VQA_ROOT", raising=False)
    monkeypatch.delenv("MME_RW_RS_ROOT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


# ------------------------------------------------------------------------------------------------ tiny checkpoints
@pytest.fixture(scope="session")
def make_tiny_checkpoint(tmp_path_factory) -> Callable[..., Path]:
    """Factory ``make_tiny_checkpoint(arch, lm, **options) -> Path``: a tiny random LLaVA checkpoint folder.

    ``options`` are :func:`lrs_plugin.backbone.tiny.build_tiny_llava`'s (``seed``, ``text_layers``, ``image_size``,
    ``widths``, ...); each distinct set is built once per session.
    """
    from lrs_plugin.backbone.tiny import build_tiny_llava

    make = _cached(tmp_path_factory.mktemp("tiny_checkpoints"), build_tiny_llava, build_tiny_llava)

    def tiny_checkpoint(arch: str, lm: str, **options: Any) -> Path:
        return make(arch=arch, lm=lm, **options)

    return tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_backbones(make_tiny_checkpoint):
    """Tiny random LLaVA-1.5 (Llama) and LLaVA-NeXT (Qwen2) backbones, float32, loaded once per test session."""
    from lrs_plugin.backbone.adapter import Backbone

    variants = [("llava", "llama"), ("llava_next", "qwen2")]
    return {v: Backbone.from_pretrained(make_tiny_checkpoint(*v), dtype="float32") for v in variants}


# ---------------------------------------------------------------------------------------------------------- images
@pytest.fixture(scope="session")
def make_image():
    """Factory ``make_image(h, w, seed=0, *, high=256) -> PIL.Image``: uniform random RGB pixels in ``0 .. high-1``."""
    import numpy as np
    from PIL import Image

    def image(h: int, w: int, seed: int = 0, *, high: int = 256) -> Image.Image:
        return Image.fromarray(np.random.default_rng(seed).integers(0, high, (h, w, 3), dtype=np.uint8))

    return image


@pytest.fixture(scope="session")
def make_image_file(tmp_path_factory, make_image) -> Callable[..., Path]:
    """Factory ``make_image_file(h, w, seed=0, *, high=256, suffix=".png") -> Path``: :func:`make_image`'s pixels
    saved once per session (by Pillow, or by tifffile for ``suffix=".tif"`` as LRS-VQA's FAIR images are)."""

    def write(folder: Path, *, h: int, w: int, seed: int = 0, high: int = 256, suffix: str = ".png") -> Path:
        import numpy as np
        import tifffile

        folder.mkdir(parents=True)
        path = folder / f"{h}x{w}{suffix}"
        image = make_image(h, w, seed, high=high)
        if suffix == ".tif":
            tifffile.imwrite(path, np.asarray(image))
        else:
            image.save(path)
        return path

    make = _cached(tmp_path_factory.mktemp("images"), write, write)

    def image_file(h: int, w: int, seed: int = 0, *, high: int = 256, suffix: str = ".png") -> Path:
        return make(h=h, w=w, seed=seed, high=high, suffix=suffix)

    return image_file


# ----------------------------------------------------------------------------------------------------------- trees
@pytest.fixture(scope="session")
def make_lrs_vqa_tree(tmp_path_factory) -> Callable[..., Path]:
    """Factory ``make_lrs_vqa_tree(**options) -> Path``: a generated LRS-VQA tree (parent of ``LRS_VQA/``).

    ``options`` are :func:`lrs_plugin.data.synthetic.lrs_vqa.write_lrs_vqa`'s (``seed``, ``questions_per_subset``,
    ``bomb_image``, ...); each distinct set is written once per session.
    """
    from lrs_plugin.data.synthetic.lrs_vqa import write_lrs_vqa

    return _cached(tmp_path_factory.mktemp("lrs_vqa_trees"), write_lrs_vqa, write_lrs_vqa)


@pytest.fixture(scope="session")
def lrs_vqa_tree(make_lrs_vqa_tree) -> Path:
    """A generated LRS-VQA tree (parent of ``LRS_VQA/``), all subsets and categories, one bomb-sized PNG."""
    return make_lrs_vqa_tree(seed=0)


@pytest.fixture(scope="session")
def make_lrs_synth_tree(tmp_path_factory) -> Callable[..., Path]:
    """Factory ``make_lrs_synth_tree(**options) -> Path``: generated testbed scenes in the LRS-VQA layout.

    ``options`` are :func:`lrs_plugin.testbed.scenes.write_lrs_synth`'s (``split``, ``seed``, ``num_scenes``);
    each distinct set is written once per session.
    """
    from lrs_plugin.testbed.scenes import write_lrs_synth

    return _cached(tmp_path_factory.mktemp("lrs_synth_trees"), write_lrs_synth, write_lrs_synth)


@pytest.fixture(scope="session")
def mme_rs_root(tmp_path_factory) -> Path:
    """Generated MME-RealWorld parquet shards prepared by the real ``fetch`` (local source folder)."""
    from lrs_plugin.data import mme_realworld_rs
    from lrs_plugin.data.synthetic.mme_realworld_rs import write_mme_parquet

    shards = tmp_path_factory.mktemp("mme_shards")
    write_mme_parquet(shards, seed=0)
    root = tmp_path_factory.mktemp("mme_root")
    return mme_realworld_rs.fetch(root, source_dir=shards, expected_rows=None, progress=False)


# ---------------------------------------------------------------------------------------------- child processes
@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Factory ``free_port() -> int``: a TCP port nothing listens on now (for ``accelerate launch``)."""

    def port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    return port


@pytest.fixture(scope="session")
def accelerate_launch(free_port) -> Callable[[int], list[str] | None]:
    """Factory ``accelerate_launch(num_processes)``: the command prefix that starts lmms-eval in that many processes.

    ``None`` for one process (plain ``python -m lmms_eval``); else ``accelerate launch`` on a free port, in the form
    that really starts several CPU processes when the child runs with ``ACCELERATE_USE_CPU=true``.
    """

    def launcher(num_processes: int) -> list[str] | None:
        if num_processes == 1:
            return None
        return [
            str(Path(sys.executable).with_name("accelerate")),
            "launch",
            "--multi_gpu",  # with ACCELERATE_USE_CPU=true: MULTI_CPU over gloo (plain --cpu runs ONE process)
            f"--num_processes={num_processes}",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            f"--main_process_port={free_port()}",
        ]

    return launcher


@pytest.fixture(scope="session")
def decord_stub(tmp_path_factory) -> Path:
    """A folder to put on a child's ``PYTHONPATH``: a two-name ``decord`` stand-in.

    lmms-eval's ``llava_hf`` imports ``decord`` (a video reader) at module level although images never need it.
    """
    stub = tmp_path_factory.mktemp("decord_stub")
    (stub / "decord.py").write_text("class VideoReader:\n    pass\n\n\ndef cpu(*a, **k):\n    return None\n")
    return stub
