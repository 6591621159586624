"""RFM attention distillation (method.md §6): the loss terms, a distillation that lowers its held-out loss, the
released key layout read back by ``focus=rfm``, and the ``lrs-plugin train-rfm`` command."""

from __future__ import annotations

import json

import pytest
import torch

from lrs_plugin.errors import ConfigError
from lrs_plugin.focus.distill import DistillConfig, distill_terms


def test_terms_vanish_when_student_equals_teacher_and_grow_otherwise():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 30, generator=gen)
    span = slice(10, 25)
    same = distill_terms(teacher.clone(), teacher, grid_span=span, valid=None, temperature=2.0)
    assert all(float(t) == pytest.approx(0.0, abs=1e-6) for t in same)
    other = distill_terms(torch.randn(4, 30, generator=gen), teacher, grid_span=span, valid=None, temperature=2.0)
    assert all(float(t) > 1e-3 for t in other)


def test_masked_keys_take_no_part_in_any_term():
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 20, generator=gen), torch.randn(2, 20, generator=gen)
    valid = torch.ones(20, dtype=torch.bool)
    valid[[5, 12, 13]] = False  # a text key and two grid placeholders
    base = distill_terms(student, teacher, grid_span=slice(8, 18), valid=valid, temperature=2.0)
    changed_t, changed_s = teacher.clone(), student.clone()
    changed_t[:, [5, 12, 13]] += 50.0
    changed_s[:, [5, 12, 13]] -= 50.0
    again = distill_terms(changed_s, changed_t, grid_span=slice(8, 18), valid=valid, temperature=2.0)
    for a, b in zip(base, again, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-6)
    # the grid terms see the 8 valid grid keys only: equal to computing them on the compacted slice
    keep = [8, 9, 10, 11, 14, 15, 16, 17]
    import torch.nn.functional as F

    sg, tg = student[:, keep] / 2.0, teacher[:, keep] / 2.0
    assert float(base[2]) == pytest.approx(float(F.mse_loss(sg, tg)), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"llm_layer_list": ()},
        {"llm_layer_list": (1, 2), "skip_stack": (0, 1)},
        {"llm_layer_list": (1,), "steps": 0},
        {"llm_layer_list": (1,), "temperature": 0},
        {"llm_layer_list": (1,), "lr": float("nan")},
    ],
)
def test_bad_configs_are_refused_naming_the_field(kwargs):
    with pytest.raises(ConfigError):
        DistillConfig(**kwargs)


@pytest.fixture(scope="module")
def four_layer(make_tiny_checkpoint, make_lrs_synth_tree):
    """A tiny LLaVA-NeXT / Qwen2 with 4 LM layers and 32-px tiles (the testbed's scale), and 3 synth scenes."""
    ckpt = make_tiny_checkpoint("llava_next", "qwen2", image_size=32, patch_size=8, text_layers=4, init_std=0.1)
    data = make_lrs_synth_tree(split="train", seed=0, num_scenes=3)
    return ckpt, data


def test_distillation_lowers_the_held_out_loss_and_focus_rfm_loads_the_result(four_layer, tmp_path):
    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.focus.distill import train_rfm
    from lrs_plugin.focus.scorers import build_focus

    ckpt, data = four_layer
    out = tmp_path / "rfm.safetensors"
    # [2, 3] -> RFM layers copy LLM layers [1, 2, 3]: the student skips LLM layer 0, so it starts off the teacher.
    config = DistillConfig(llm_layer_list=(2, 3), steps=60, lr=2e-3, skip_stack=(), log_every=20)
    record = train_rfm(ckpt, data, llm_layer_list=(2, 3), out=out, max_questions=12, config=config, log=None)
    assert record["passes"] == 24 and record["questions"] == 12  # base + zoomed pass per question
    assert record["held_out_loss_before"] > 0
    assert record["held_out_loss_after"] < record["held_out_loss_before"]
    assert [c["step"] for c in record["loss"]] == [20, 40, 60]
    assert len(record["loss"][0]["terms"]) == len(record["terms_order"]) == 6
    logged = json.loads((tmp_path / "rfm_train_log.json").read_text())
    assert logged["held_out_loss_after"] == record["held_out_loss_after"]

    from safetensors.torch import load_file

    keys = sorted(load_file(str(out)))
    assert keys and all(k.startswith("model.mm_projector.token_pruner.") for k in keys)
    backbone = Backbone.from_pretrained(ckpt, dtype="float32")
    scorer = build_focus("rfm", backbone, {"llm_layer_list": [2, 3], "rfm_path": str(out)})
    assert scorer.weights_source == str(out)
    seq = torch.randn(1, 40, backbone.hidden_size)
    scores = scorer.score(seq, grid_span=slice(10, 30), query_index=39, key_mask=None, context=None)
    assert scores.shape == (20,) and float(scores.sum()) == pytest.approx(1.0, abs=1e-5)


def test_train_rfm_command_writes_weights_and_the_layer_list(four_layer, tmp_path):
    import shutil

    from lrs_plugin.cli import main

    ckpt, data = four_layer
    local = tmp_path / "ckpt"
    shutil.copytree(ckpt, local)
    argv = ["train-rfm", "--pretrained", str(local), "--data", str(data), "--llm-layer-list", "2,3"]
    argv += ["--steps", "5", "--questions", "4", "--skip-stack", "", "--write-config"]
    assert main(argv) == 0
    assert (local / "rfm.safetensors").is_file() and (local / "rfm_train_log.json").is_file()
    assert json.loads((local / "config.json").read_text())["llm_layer_list"] == [2, 3]

    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.focus.scorers import build_focus

    scorer = build_focus("rfm", Backbone.from_pretrained(local, dtype="float32"), {})  # no knobs: all from the folder
    assert scorer.llm_layer_list == (2, 3)


def test_train_rfm_command_refuses_a_bad_layer_list(four_layer, capsys):
    from lrs_plugin.cli import main

    ckpt, data = four_layer
    assert main(["train-rfm", "--pretrained", str(ckpt), "--data", str(data), "--llm-layer-list", "2,x"]) == 2
    assert "--llm-layer-list='2,x'" in capsys.readouterr().err
    assert main(["train-rfm", "--pretrained", str(ckpt), "--data", str(data), "--llm-layer-list", "0,9"]) == 2
    assert "llm_layer_list" in capsys.readouterr().err
