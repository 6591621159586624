"""The trained testbed checkpoint shipped in the package: complete, loadable by stock transformers, reproducible."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lrs_plugin.errors import ConfigError
from lrs_plugin.testbed.table import (
    CHECKPOINT_FILES,
    TestbedConfig,
    check_checkpoint,
    make_checkpoint,
    shipped_checkpoint,
)

MAX_SHIPPED_MB = 15


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_the_shipped_checkpoint_is_complete_and_small():
    folder = shipped_checkpoint()
    assert all((folder / name).is_file() for name in CHECKPOINT_FILES)
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    assert size_mb <= MAX_SHIPPED_MB, size_mb
    record = json.loads((folder / "rfm_train_log.json").read_text())
    assert record["held_out_loss_after"] < record["held_out_loss_before"]  # the distillation it ships did learn


def test_stock_transformers_reads_the_shipped_checkpoint():
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    folder = shipped_checkpoint()
    model = LlavaNextForConditionalGeneration.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert model.config.model_type == "llava_next" and model.config.text_config.model_type == "qwen2"
    assert processor.tokenizer.chat_template
    rfm = _tensors(folder / "rfm.safetensors")
    assert rfm and all(torch.isfinite(t).all() for t in rfm.values())


def test_an_incomplete_checkpoint_is_refused_naming_the_missing_files(tmp_path):
    shutil.copy(shipped_checkpoint() / "config.json", tmp_path / "config.json")
    with pytest.raises(ConfigError, match="rfm.safetensors") as info:
        check_checkpoint(tmp_path)
    assert "model.safetensors" in str(info.value) and "testbed checkpoint --out" in str(info.value)
    with pytest.raises(ConfigError, match="lacks"):
        TestbedConfig(checkpoint=tmp_path / "nowhere")


@pytest.mark.slow
def test_make_checkpoint_reproduces_the_shipped_checkpoint(tmp_path):
    """The recipe (``lrs-plugin testbed checkpoint --out DIR``, ~20 min on 2 cores) gives the shipped weights."""
    shipped = shipped_checkpoint()
    made = make_checkpoint(tmp_path / "ckpt", log=None)
    for name in ("model.safetensors", "rfm.safetensors"):
        ours, theirs = _tensors(made / name), _tensors(shipped / name)
        assert ours.keys() == theirs.keys(), name
        worst = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
        assert worst <= 1e-4, (name, worst)
    ours_log, shipped_log = (json.loads((f / "train_log.json").read_text()) for f in (made, shipped))
    assert ours_log["config"] == shipped_log["config"]
    assert [w["loss"] for w in ours_log["loss"]] == pytest.approx([w["loss"] for w in shipped_log["loss"]])
