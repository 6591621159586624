r"""``lrs-plugin train-rfm``: train a Region Focus Module by attention distillation from its own LLM (method.md §6).

The released code ships the loss but no training script (method.md §6); this module is that script, for any
checkpoint the plugin loads:

* **Student**: the RFM, ``R = len(llm_layer_list) + 1`` decoder layers of the LLM's own class initialised from LLM
  layers ``[l0 - 1] + llm_layer_list`` (:func:`lrs_plugin.focus.rfm.rfm_state_from_backbone`, §3.1). After student layer
  ``i`` (``0 .. R-2``) the raw attention logits of student layer ``i + 1`` are read for the query (the last prompt
  token, the one C2F scores with); stack index ``j`` pairs with teacher LLM layer ``llm_layer_list[j]``.
* **Teacher**: the frozen LLM, its raw logits at layers ``llm_layer_list`` for the same query over the same
  sequence (teacher tensors computed once per sequence, without gradients).
* **Loss** (§6), for every stack index except ``skip_stack`` (the release skips 1 and 2) and every head: the KL of
  the teacher's full-sequence softmax from the student's, the same KL on the grid keys with both logits divided by
  ``temperature`` (2), and the MSE of the grid logits divided by the temperature; the plain mean of all terms.
  Keys masked at inference (C2F's placeholders) are excluded from every term.
* **Data**: the sequences C2F scores at inference, recorded while C2F runs with ``focus=llm_attention`` at the
  layer the RFM will replace (``llm_layer_list[-1]``): the base-level pass and the zoomed pass of each question,
  with their placeholders. Questions come from any benchmark root in the LRS-VQA layout (:mod:`lrs_plugin.data.
  lrs_vqa`; e.g. ``lrs-plugin testbed generate --split train``); answers are not used.

The result is ``rfm.safetensors`` in the released key layout (``model.mm_projector.token_pruner.*``), which
``focus=rfm`` loads unchanged (``rfm_path=...``, or from the checkpoint folder itself, with ``llm_layer_list``
given or written into the checkpoint's ``config.json``), and ``rfm_train_log.json`` with the loss curve.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrs_plugin.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from lrs_plugin.backbone.adapter import Backbone

__all__ = ["DistillConfig", "PassRecord", "distill_rfm", "distill_terms", "record_c2f_passes", "train_rfm"]


@dataclass(frozen=True)
class DistillConfig:
    """Knobs of :func:`distill_rfm` (defaults: the testbed's run)."""

    llm_layer_list: tuple[int, ...]
    steps: int = 300
    lr: float = 5e-4
    weight_decay: float = 0.0
    temperature: float = 2.0
    skip_stack: tuple[int, ...] = (1, 2)
    seed: int = 0
    log_every: int = 25

    def __post_init__(self) -> None:
        for name in ("steps", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DistillConfig.{name}={value!r} is invalid; valid: an int >= 1")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"DistillConfig.{name}={value!r} is invalid; valid: a finite number > 0")
        if not len(self.llm_layer_list):
            raise ConfigError("DistillConfig.llm_layer_list must not be empty")
        kept = [j for j in range(len(self.llm_layer_list)) if j not in self.skip_stack]
        if not kept:
            raise ConfigError(
                f"DistillConfig.skip_stack={list(self.skip_stack)} skips every stack index of "
                f"llm_layer_list={list(self.llm_layer_list)}: nothing to distill"
            )


@dataclass
class PassRecord:
    """One scoring pass C2F made: the sequence and where its grid is."""

    inputs_embeds: torch.Tensor  # [1, L, C], detached, on the CPU
    grid_span: slice
    query_index: int
    key_mask: torch.Tensor | None  # [L] bool


class _Recorder:
    """A focus scorer that delegates to another and records every pass (what the RFM will be asked to score)."""

    def __init__(self, inner: Any, sink: list[PassRecord]) -> None:
        self.inner, self.sink = inner, sink
        self.name = f"recording:{inner.name}"
        self.decoder_layers_per_pass = inner.decoder_layers_per_pass

    def score(self, inputs_embeds, *, grid_span, query_index, key_mask, context):  # noqa: ANN001, ANN201
        mask = None if key_mask is None else key_mask.detach().cpu().clone()
        self.sink.append(PassRecord(inputs_embeds.detach().cpu().clone(), grid_span, int(query_index), mask))
        return self.inner.score(
            inputs_embeds, grid_span=grid_span, query_index=query_index, key_mask=key_mask, context=context
        )


def record_c2f_passes(
    backbone: Backbone,
    docs: Sequence[dict[str, Any]],
    *,
    teacher_layer: int,
    c2f_options: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[PassRecord]:
    """Run C2F (``focus=llm_attention`` at ``teacher_layer``) over ``docs`` and return every scoring pass.

    Args:
        backbone: The loaded backbone.
        docs: LRS-VQA-format docs (``image_path``, ``text``).
        teacher_layer: The LLM layer whose attention drives the zoom (``llm_layer_list[-1]``).
        c2f_options: :class:`lrs_plugin.c2f.C2FConfig` fields (default: the released settings).
        log: Progress lines.

    Returns:
        The passes, in order (about two per question).

    """
    from lrs_plugin.c2f.driver import C2FConfig, run_c2f
    from lrs_plugin.focus.scorers import build_focus
    from lrs_plugin.imagery.large_image import LargeImage

    teacher = build_focus("llm_attention", backbone, {"layer": teacher_layer})
    config = C2FConfig(**(c2f_options or {}))
    records: list[PassRecord] = []
    recorder = _Recorder(teacher, records)
    for n, doc in enumerate(docs):
        with LargeImage(doc["image_path"]) as image:
            run_c2f(backbone, image, doc["text"], recorder, config, doc=doc, max_new_tokens=1)
        if log is not None and (n + 1) % 50 == 0:
            log(f"recorded {n + 1}/{len(docs)} questions, {len(records)} passes")
    return records


def _teacher_logits(backbone: Backbone, rec: PassRecord, layers: Sequence[int]) -> list[torch.Tensor]:
    """``[heads, q + 1]`` raw logits of the LLM at each of ``layers`` for the record's query (no gradients)."""
    import torch

    from lrs_plugin.focus.attention import query_logits, run_layers

    lm = backbone.language_model
    end = rec.query_index + 1
    mask = None if rec.key_mask is None else rec.key_mask[:end]
    out: list[torch.Tensor] = []
    with torch.no_grad():
        hidden = rec.inputs_embeds[:, :end].to(backbone.device, backbone.dtype)
        done = 0
        for layer in layers:
            hidden = run_layers(
                lm.layers[done:layer], hidden, config=lm.config, rotary_emb=lm.rotary_emb, key_mask=mask
            )
            done = layer
            out.append(
                query_logits(
                    lm.layers[layer],
                    hidden,
                    config=lm.config,
                    rotary_emb=lm.rotary_emb,
                    keys=slice(0, end),
                    query_index=rec.query_index,
                ).cpu()
            )
    return out


def _student_logits(module: Any, rec: PassRecord) -> list[torch.Tensor]:
    """``[heads, q + 1]`` raw logits of RFM layer ``i + 1`` after RFM layers ``0 .. i``, for ``i = 0 .. R-2``."""
    from lrs_plugin.focus.attention import query_logits, run_layers

    end = rec.query_index + 1
    mask = None if rec.key_mask is None else rec.key_mask[:end]
    hidden = rec.inputs_embeds[:, :end].to(module.norm.weight.device, module.norm.weight.dtype)
    out = []
    for i in range(len(module.layers) - 1):
        hidden = run_layers(
            module.layers[i : i + 1], hidden, config=module.config, rotary_emb=module.rotary_emb, key_mask=mask
        )
        out.append(
            query_logits(
                module.layers[i + 1],
                hidden,
                config=module.config,
                rotary_emb=module.rotary_emb,
                keys=slice(0, end),
                query_index=rec.query_index,
            )
        )
    return out


def distill_terms(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    grid_span: slice,
    valid: torch.Tensor | None,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three §6 terms of one layer pair: full-sequence KL, grid KL at ``temperature``, grid MSE.

    Args:
        student: ``[heads, K]`` student logits over keys ``0 .. K-1``.
        teacher: ``[heads, K]`` teacher logits (no gradient needed).
        grid_span: The grid keys inside ``0 .. K-1``.
        valid: ``[K]`` bool, keys that count (``None``: all); masked keys get no probability in either softmax.
        temperature: Divides both grid logits (``T = 2`` in the release).

    Returns:
        ``(kl_full, kl_grid, mse_grid)``, each a scalar: KLs are ``KL(teacher || student)`` summed over keys and
        averaged over heads (``F.kl_div(..., reduction="batchmean")``), the MSE is a plain mean.

    """
    import torch
    import torch.nn.functional as F

    s, t = student.float(), teacher.float().to(student.device)
    if valid is not None:
        keep = valid.to(s.device, torch.bool)
        s, t = s[:, keep], t[:, keep]
        inside = keep[grid_span]
        offset = int(keep[: grid_span.start].sum())
        grid = slice(offset, offset + int(inside.sum()))
    else:
        grid = grid_span
    kl_full = F.kl_div(F.log_softmax(s, dim=-1), F.softmax(t, dim=-1), reduction="batchmean")
    sg, tg = s[:, grid] / temperature, t[:, grid] / temperature
    kl_grid = F.kl_div(F.log_softmax(sg, dim=-1), F.softmax(tg, dim=-1), reduction="batchmean")
    return kl_full, kl_grid, F.mse_loss(sg, tg)


def distill_rfm(
    backbone: Backbone,
    records: Sequence[PassRecord],
    config: DistillConfig,
    *,
    log: Callable[[str], None] | None = print,
) -> tuple[Any, dict[str, Any]]:
    """Train an RFM on recorded passes; returns ``(module, record)``.

    The module is a :class:`lrs_plugin.focus.rfm.RegionFocusModule` initialised from the backbone (§3.1); the LLM is
    never updated. ``record`` holds the config, the loss curve (mean per logging window, and per term), the
    held-back loss before and after (the last 10 % of the passes, never trained on) and the time.

    Raises:
        ConfigError: a bad layer list for this backbone, or no passes.

    """
    import torch

    from lrs_plugin.focus.rfm import RegionFocusModule, parse_layer_list, rfm_state_from_backbone

    layers = parse_layer_list(list(config.llm_layer_list), num_layers=backbone.num_layers)
    if not records:
        raise ConfigError("no recorded passes to distill from (no questions?)")
    lm = backbone.language_model
    module = RegionFocusModule(lm, len(layers) + 1).load(
        rfm_state_from_backbone(lm, layers), like=next(lm.parameters())
    )
    module.float().train()
    for p in lm.parameters():
        p.requires_grad_(False)
    start = time.perf_counter()
    held = max(1, len(records) // 10) if len(records) >= 10 else 0
    train_recs, held_recs = list(records[: len(records) - held]), list(records[len(records) - held :])
    teachers = [_teacher_logits(backbone, r, layers) for r in records]
    pairs = [j for j in range(len(layers)) if j not in config.skip_stack]

    def loss_of(i: int) -> tuple[torch.Tensor, list[float]]:
        rec = records[i]
        stu = _student_logits(module, rec)
        valid = None if rec.key_mask is None else rec.key_mask[: rec.query_index + 1]
        terms = []
        for j in pairs:
            terms.extend(
                distill_terms(
                    stu[j], teachers[i][j], grid_span=rec.grid_span, valid=valid, temperature=config.temperature
                )
            )
        return torch.stack(terms).mean(), [float(t.detach()) for t in terms]

    def held_loss() -> float | None:
        if not held_recs:
            return None
        with torch.no_grad():
            n0 = len(train_recs)
            return round(sum(float(loss_of(n0 + k)[0]) for k in range(len(held_recs))) / len(held_recs), 6)

    before = held_loss()
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    curve, window, term_window = [], [], []
    for step in range(config.steps):
        i = int(torch.randint(len(train_recs), (1,), generator=gen))
        loss, terms = loss_of(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        window.append(float(loss.detach()))
        term_window.append(terms)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            mean = sum(window) / len(window)
            per_term = [round(sum(col) / len(col), 5) for col in zip(*term_window, strict=True)]
            curve.append({"step": step + 1, "loss": round(mean, 6), "terms": per_term})
            window, term_window = [], []
            if log is not None:
                log(f"rfm step {step + 1}/{config.steps}  loss {mean:.4f}")
    module.eval()
    after = held_loss()
    record = {
        "config": {**asdict(config), "llm_layer_list": list(layers)},
        "terms_order": [f"{name}@stack{j}" for j in pairs for name in ("kl_full", "kl_grid", "mse_grid")],
        "loss": curve,
        "held_out_passes": len(held_recs),
        "held_out_loss_before": before,
        "held_out_loss_after": after,
        "train_passes": len(train_recs),
        "distill_s": round(time.perf_counter() - start, 1),
    }
    return module, record


def train_rfm(
    pretrained: str | Path,
    data_root: str | Path,
    *,
    llm_layer_list: Sequence[int],
    out: str | Path | None = None,
    max_questions: int | None = 200,
    config: DistillConfig | None = None,
    c2f_options: dict[str, Any] | None = None,
    write_config: bool = False,
    device: str = "cpu",
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Distill an RFM for the checkpoint ``pretrained`` from questions under ``data_root`` and save it.

    Args:
        pretrained: Checkpoint folder (or Hub id) the plugin loads.
        data_root: A benchmark root in the LRS-VQA layout (``LRS_VQA/LRS_VQA_merged.jsonl`` + images).
        llm_layer_list: LLM layers to distill (``R = len + 1`` RFM layers; the last is the one C2F scores with).
        out: Output ``.safetensors`` (default: ``<pretrained>/rfm.safetensors``).
        max_questions: Use the first ``N`` questions of the file (``None``: all).
        config: :class:`DistillConfig` (its ``llm_layer_list`` is replaced by the argument).
        c2f_options: C2F knobs of the recording run (e.g. ``{"num_zoom_steps": 4}``).
        write_config: Also write ``llm_layer_list`` into ``<pretrained>/config.json`` (so ``focus=rfm`` needs no
            knob), only for a local folder.
        device: Device of the backbone.
        log: Progress lines.

    Returns:
        The training record (also written as ``rfm_train_log.json`` beside ``out``), with ``rfm_path``.

    Raises:
        ConfigError: bad arguments; DatasetNotFoundError: no question file under ``data_root``.

    """
    from dataclasses import replace

    from lrs_plugin.backbone.adapter import Backbone
    from lrs_plugin.data import lrs_vqa
    from lrs_plugin.focus.rfm import parse_layer_list, save_rfm_original_layout

    if max_questions is not None and (isinstance(max_questions, bool) or max_questions < 1):
        raise ConfigError(f"max_questions={max_questions!r} must be an int >= 1 or None")
    layers = tuple(int(v) for v in llm_layer_list)
    cfg = replace(config or DistillConfig(llm_layer_list=layers), llm_layer_list=layers)
    start = time.perf_counter()
    backbone = Backbone.from_pretrained(str(pretrained), device=device, dtype="float32")
    layers = parse_layer_list(list(layers), num_layers=backbone.num_layers)  # before any recording
    subsets = _subsets_of(Path(data_root))
    docs = lrs_vqa.build_docs(data_root, subsets=subsets)[: max_questions or None]
    records = record_c2f_passes(backbone, docs, teacher_layer=layers[-1], c2f_options=c2f_options, log=log)
    module, record = distill_rfm(backbone, records, cfg, log=log)
    target = Path(out) if out is not None else Path(pretrained) / "rfm.safetensors"
    save_rfm_original_layout(module, target)
    if write_config:
        config_path = Path(pretrained) / "config.json"
        data = json.loads(config_path.read_text(encoding="utf-8"))
        data["llm_layer_list"] = list(layers)
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    record.update(
        {
            "rfm_path": str(target),
            "questions": len(docs),
            "passes": len(records),
            "total_s": time.perf_counter() - start,
        }
    )
    record["total_s"] = round(record["total_s"], 1)
    (target.parent / "rfm_train_log.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def _subsets_of(root: Path) -> dict[str, Sequence[str]] | None:
    """The testbed's subset table for an ``lrs_synth`` root (ids ``SYNTH_n``), else ``None`` (LRS-VQA's own)."""
    from lrs_plugin.data.lrs_vqa import QUESTION_FILE, subset_of
    from lrs_plugin.testbed import scenes

    try:
        with (root / QUESTION_FILE).open(encoding="utf-8") as fh:
            first = json.loads(fh.readline() or "{}")
    except (OSError, ValueError):
        return None
    if "_" in str(first.get("question_id", "")) and subset_of(first["question_id"]) == scenes.SUBSET:
        return {scenes.SUBSET: scenes.CATEGORIES}
    return None
