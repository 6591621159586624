"""Shared fixtures: generated, format-true datasets (never the Hub) and an isolated plugin cache."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own plugin cache; dataset roots come only from what a test sets."""
    monkeypatch.setenv("LRS_PLUGIN_HOME", str(tmp_path_factory.getbasetemp() / "lrs_plugin_home"))
    monkeypatch.delenv("LRS_VQA_ROOT", raising=False)
    monkeypatch.delenv("MME_RW_RS_ROOT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def lrs_vqa_tree(tmp_path_factory) -> Path:
    """A generated LRS-VQA tree (parent of ``LRS_VQA/``), all subsets and categories, one bomb-sized PNG."""
    from lrs_plugin.data.synthetic.lrs_vqa import write_lrs_vqa

    return write_lrs_vqa(tmp_path_factory.mktemp("lrs_vqa_tree"), seed=0)


@pytest.fixture(scope="session")
def mme_rs_root(tmp_path_factory) -> Path:
    """Generated MME-RealWorld parquet shards prepared by the real ``fetch`` (local source folder)."""
    from lrs_plugin.data import mme_realworld_rs
    from lrs_plugin.data.synthetic.mme_realworld_rs import write_mme_parquet

    shards = tmp_path_factory.mktemp("mme_shards")
    write_mme_parquet(shards, seed=0)
    root = tmp_path_factory.mktemp("mme_root")
    return mme_realworld_rs.fetch(root, source_dir=shards, expected_rows=None, progress=False)


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    """Tiny random LLaVA-1.5 (Llama) and LLaVA-NeXT (Qwen2) backbones, float32, built once per test session."""
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.backbone.tiny import build_tiny_llava

    root = tmp_path_factory.mktemp("tiny_backbones")
    variants = [("llava", "llama"), ("llava_next", "qwen2")]
    return {
        v: Backbone.from_pretrained(build_tiny_llava(root / f"{v[0]}_{v[1]}", arch=v[0], lm=v[1]), dtype="float32")
        for v in variants
    }
