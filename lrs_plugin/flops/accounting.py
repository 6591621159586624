"""Per-sample efficiency accounting recorded by the models: analytic TFLOPs in the ``full`` convention.

Every term comes from :mod:`lrs_plugin.flops.terms` (formulas in its docstrings) and the token counts a reducer records
in its :class:`~lrs_plugin.harness.record.SampleRecord`, so all methods are counted the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lrs_plugin import flops
from lrs_plugin.errors import SampleRecordError
from lrs_plugin.harness.record import SampleRecord

__all__ = [
    "EFFICIENCY_KEYS",
    "MEASURED_KEYS",
    "EfficiencyTally",
    "ModelDims",
    "efficiency_figures",
    "sample_tflops",
    "sample_tflops_computed",
]

#: Per-sample efficiency figures every model of this plugin records (:func:`efficiency_figures`); this plugin's tasks
#: report each as a metric ``eff_<key>`` (the mean over the samples that have it), and :class:`EfficiencyTally` reports
#: the same means for any task in lmms-eval's ``results["throughput"]``.
EFFICIENCY_KEYS = (
    "vision_tokens_encoded",
    "vision_tokens_to_llm",
    "tflops",
    "tflops_computed",  # what this run computed: work reused from an earlier question on the image left out
    "latency_s",
    "focus_tile_recall",  # lrs_plugin.focus.recall: docs with a target box, reducers that report it
    "focus_token_recall",
    # measured on the machine that ran (lrs_plugin.harness.costs): seconds per stage, time to first token, memory
    "image_read_s",
    "vision_encode_s",
    "focus_s",
    "llm_prefill_s",
    "llm_decode_s",
    "ttft_s",
    "peak_memory_mib",
    "peak_memory_growth_mib",
    "kv_cache_mib",
)

#: The :data:`EFFICIENCY_KEYS` that differ between two runs giving the same answers (a resumed answer keeps those of
#: the run that generated it): the ones read off a clock or a memory counter, and ``tflops_computed``, which depends on
#: what the process had computed for earlier questions on the image (a run resumed in the middle of an image's
#: questions computes its prefix again). KV-cache bytes and ``tflops`` are not among them.
MEASURED_KEYS = (
    "tflops_computed",
    "latency_s",
    "image_read_s",
    "vision_encode_s",
    "focus_s",
    "llm_prefill_s",
    "llm_decode_s",
    "ttft_s",
    "peak_memory_mib",
    "peak_memory_growth_mib",
)

_MIB = 1024 * 1024


def efficiency_figures(record: SampleRecord) -> dict[str, float | None]:
    """The :data:`EFFICIENCY_KEYS` figures of one sample, in that order (``None`` where it recorded none).

    Bytes are reported in MiB (``peak_memory_mib``, ``peak_memory_growth_mib``, ``kv_cache_mib``).
    """
    recall, stages = record.focus_recall, record.stage_seconds
    return {
        "vision_tokens_encoded": record.vision_tokens_encoded,
        "vision_tokens_to_llm": record.vision_tokens_to_llm,
        "tflops": record.tflops,
        "tflops_computed": record.tflops_computed,
        "latency_s": record.latency_s,
        "focus_tile_recall": None if recall is None else recall.tile,
        "focus_token_recall": None if recall is None else recall.token,
        "image_read_s": None if stages is None else stages.image_read_s,
        "vision_encode_s": None if stages is None else stages.vision_encode_s,
        "focus_s": None if stages is None else stages.focus_s,
        "llm_prefill_s": None if stages is None else stages.llm_prefill_s,
        "llm_decode_s": None if stages is None else stages.llm_decode_s,
        "ttft_s": record.ttft_s,
        "peak_memory_mib": _mib(record.peak_memory_bytes),
        "peak_memory_growth_mib": _mib(record.peak_memory_growth_bytes),
        "kv_cache_mib": _mib(record.kv_cache_bytes),
    }


def _mib(value: int | None) -> float | None:
    return None if value is None else value / _MIB


@dataclass(frozen=True)
class ModelDims:
    """Dimensions of one backbone, read from its config.

    Attributes:
        lm: Language model dimensions.
        vision: Vision tower dimensions.
        vision_layers_used: Vision encoder layers actually run (up to the feature layer).
        projector_in: Projector input width (vision hidden size times the number of feature layers).
    """

    lm: flops.LMDims
    vision: flops.VisionDims
    vision_layers_used: int
    projector_in: int

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        """Build from a LLaVA / LLaVA-NeXT transformers config."""
        lm = flops.LMDims.from_config(config.text_config)
        vision = flops.VisionDims.from_config(config.vision_config)
        layer = config.vision_feature_layer
        layers = [layer] if isinstance(layer, int) else list(layer)
        used = max(flops.vision_layers_used(li, vision.num_layers) for li in layers)
        return cls(lm=lm, vision=vision, vision_layers_used=used, projector_in=vision.hidden * len(layers))


def sample_tflops(record: SampleRecord, dims: ModelDims) -> dict[str, float]:
    """TFLOPs of one answered question, by stage, and their ``total``.

    Args:
        record: A reducer's record: ``tiles_encoded``, ``vision_tokens_encoded``, ``llm_input_len`` (or
            ``llm_tokens_per_layer`` for in-LLM reducers), ``new_tokens`` (the decode steps are ``new_tokens - 1``:
            the first token comes from the prefill) and ``focus_passes`` (a scorer with 0 decoder layers costs
            nothing here); ``projector_tokens`` when a reducer projects fewer tokens than it encoded (VisionZip).
        dims: The backbone's dimensions.

    Returns:
        ``{"vision_tower", "projector", "focus", "llm_prefill", "llm_decode", "total"}`` in TFLOPs (1e12 FLOPs).

    Raises:
        SampleRecordError: the record lacks ``tiles_encoded``, ``vision_tokens_encoded`` or the LLM input length.
    """
    lm = dims.lm
    tiles, encoded = _needed(record, "tiles_encoded"), _needed(record, "vision_tokens_encoded")
    per_layer = record.llm_tokens_per_layer or flops.uniform_tokens_per_layer(
        _needed(record, "llm_input_len"), lm.num_layers
    )
    projected = encoded if record.projector_tokens is None else record.projector_tokens
    new_tokens = 1 if record.new_tokens is None else record.new_tokens
    terms = {
        "vision_tower": flops.vision_tower_flops(int(tiles), dims.vision, dims.vision_layers_used),
        "projector": flops.projector_flops(int(projected), dims.projector_in, lm.hidden),
        "focus": sum(
            flops.focus_flops(int(p.seq_len), lm, int(p.decoder_layers) + 1)
            for p in record.focus_passes or ()
            if p.decoder_layers > 0
        ),
        "llm_prefill": flops.llm_prefill_flops(per_layer, lm),
        "llm_decode": flops.llm_decode_flops(list(per_layer), max(int(new_tokens) - 1, 0), lm),
    }
    out = {k: v / 1e12 for k, v in terms.items()}
    out["total"] = sum(out.values())
    return out


def sample_tflops_computed(record: SampleRecord, dims: ModelDims, by_stage: Mapping[str, float]) -> float:
    """TFLOPs this run computed for the question: :func:`sample_tflops` less the work reused across questions.

    ``tflops`` counts every tile and prompt position a question uses (the paper's convention, comparable across runs
    and with the paper); with ``reuse=true`` some were computed for an earlier question on the same image. Left out
    here: the vision tower and projector on ``tiles_reused`` of ``tiles_encoded`` tiles, and the prefill of the
    ``prefix_tokens_reused`` first positions (the later positions still attend to them: their cost stays).

    Args:
        record: The record :func:`sample_tflops` priced.
        dims: The backbone's dimensions.
        by_stage: :func:`sample_tflops` of ``record``.

    Returns:
        TFLOPs; ``by_stage["total"]`` when nothing was reused.
    """
    tiles, reused_tiles = int(record.tiles_encoded or 0), int(record.tiles_reused or 0)
    reused = 0.0
    if tiles and reused_tiles:
        reused += (by_stage["vision_tower"] + by_stage["projector"]) * reused_tiles / tiles
    prefix = int(record.prefix_tokens_reused or 0)
    if prefix:
        tokens = flops.uniform_tokens_per_layer(prefix, dims.lm.num_layers)
        reused += flops.llm_prefill_flops(tokens, dims.lm, lm_head_tokens=0) / 1e12
    return by_stage["total"] - reused


def _needed(record: SampleRecord, name: str) -> int:
    value = getattr(record, name)
    if value is None:
        raise SampleRecordError(f"sample_tflops needs the record's {name}; it has none")
    return int(value)


class EfficiencyTally:
    """Efficiency figures of every request a model answered, summed per task, for tasks that report none.

    This plugin's own tasks turn the per-sample records into ``eff_*`` metrics. A task from anywhere else (lmms-eval's
    built-in ``hrbench4k``, ``vstar_bench``...) only scores the answer text, so the model also reports, through
    lmms-eval's documented per-model channel (``log_metrics``, summarised into ``results["throughput"]`` with an
    ``avg_`` prefix), for all tasks together and for each task ``T``:

    * ``eff_<key>`` and ``eff_<key>/T`` for each of :data:`EFFICIENCY_KEYS`: the mean over the samples that
      recorded it (the same rule as the ``eff_*`` task metrics, so both agree on this plugin's tasks);
    * ``eff_samples``, ``eff_failed`` (samples with a recorded error) and ``eff_text_only`` (requests without an
      image), and the same per task;
    * ``eff_resume_disabled`` (and per task), only when some answers were generated while the resume store could not
      be written (:attr:`SampleRecord.resume_disabled <lrs_plugin.harness.record.SampleRecord.resume_disabled>`,
      :mod:`lrs_plugin.harness.resume`): that many would be generated again by a rerun.

    Under several processes the sums of every rank are gathered first (every rank calls :meth:`report`, as every
    rank runs ``generate_until``), so the figures cover the whole run.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, dict[str, float]] = {}

    def add(self, task: str, record: SampleRecord) -> None:
        """Count one answered request of ``task`` from its record."""
        row = self._tasks.setdefault(str(task), {})
        row["samples"] = row.get("samples", 0) + 1
        row["failed"] = row.get("failed", 0) + (record.error is not None)
        row["text_only"] = row.get("text_only", 0) + bool(record.text_only)
        row["resume_disabled"] = row.get("resume_disabled", 0) + bool(record.resume_disabled)
        row["new_tokens"] = row.get("new_tokens", 0) + int(record.new_tokens or 0)
        for key, value in efficiency_figures(record).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"sum:{key}"] = row.get(f"sum:{key}", 0.0) + float(value)
                row[f"n:{key}"] = row.get(f"n:{key}", 0) + 1

    @property
    def sums(self) -> dict[str, dict[str, float]]:
        """Per-task sums and counts (what :meth:`merge` adds up across ranks)."""
        return {task: dict(row) for task, row in self._tasks.items()}

    def merge(self, sums: Mapping[str, Mapping[str, float]]) -> None:
        """Add another tally's :attr:`sums` (another rank's) to this one."""
        for task, other in sums.items():
            row = self._tasks.setdefault(task, {})
            for key, value in other.items():
                row[key] = row.get(key, 0) + value

    def metrics(self) -> dict[str, float]:
        """The flat figures described in the class docstring (empty when nothing was counted)."""
        if not self._tasks:
            return {}
        total: dict[str, float] = {}
        for row in self._tasks.values():
            for key, value in row.items():
                total[key] = total.get(key, 0) + value
        out: dict[str, float] = {}
        counts = ("samples", "failed", "text_only") + (("resume_disabled",) if total.get("resume_disabled") else ())
        for suffix, row in [("", total)] + [(f"/{task}", row) for task, row in sorted(self._tasks.items())]:
            for key in EFFICIENCY_KEYS:
                if row.get(f"n:{key}"):
                    out[f"eff_{key}{suffix}"] = row[f"sum:{key}"] / row[f"n:{key}"]
            for key in counts:
                out[f"eff_{key}{suffix}"] = float(row.get(key, 0))
        return out

    def report(self, world_size: int = 1) -> dict[str, float]:
        """Gather every rank's sums (when ``world_size > 1``) and hand the figures to lmms-eval's ``log_metrics``.

        Returns:
            The figures logged (also when lmms-eval's metric logger cannot be imported).
        """
        if world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                gathered: list[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, self.sums)
                merged = EfficiencyTally()
                for sums in gathered:
                    merged.merge(sums or {})
                self._tasks = merged._tasks
        figures = self.metrics()
        if not figures:
            return figures
        total_latency = sum(row.get("sum:latency_s", 0.0) for row in self._tasks.values())
        total_tokens = int(sum(row.get("new_tokens", 0) for row in self._tasks.values()))
        try:
            from lmms_eval.models.model_utils.gen_metrics import log_metrics
        except ImportError:  # pragma: no cover - lmms-eval is a dependency; direct library use still works
            return figures
        log_metrics(
            total_elapsed_time=total_latency,
            total_gen_tokens=total_tokens,
            avg_speed=total_tokens / total_latency if total_latency > 0 else 0.0,
            additional_metrics={"total_requests": figures["eff_samples"], **figures},
        )
        return figures
