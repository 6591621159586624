"""The one typed per-sample record, and its hand-off from a model to the task that scores it.

:class:`SampleRecord` carries everything recorded about one answered question: the tokens a reducer encoded and sent
to the language model, its method-specific details, the focus recall, and what the model class adds (latency, the
measured stage times, TTFT, memory and KV-cache bytes of :mod:`lrs_plugin.harness.costs`, TFLOPs by stage, the
reducer's name, a failure and the step where it happened, the resume store's state). Reducers return it
(:class:`~lrs_plugin.reducers.ReducerOutput`), :mod:`lrs_plugin.flops.accounting` reads its fields, the model class
completes it, the resume store writes and reads it (:meth:`SampleRecord.to_dict` / :meth:`SampleRecord.from_dict`:
the same JSON object as the stats dict of earlier versions, so saved resume files stay readable), and the tasks read it
from :data:`STORE`.

JSON rules: a field that still holds its default (``None``, ``False``) is not written (absent = not recorded); the
fields of a *group* (:class:`FocusRecall`, :class:`C2FDetails`, :class:`InLLMDetails`, :class:`FastVKnobs`,
:class:`PDropKnobs`) are written together as top-level keys, ``None`` included, whenever the group is set. Unknown
top-level keys read by :meth:`SampleRecord.from_dict` are kept in :attr:`SampleRecord.extra` and written back as they
were (a file written by a newer version round-trips); a value of the wrong type is a :class:`SampleRecordError`.

The hand-off: lmms-eval 0.7.3 passes only the answer text (and three token counters) from ``generate_until`` to the
task's ``process_results``, and ``process_results`` receives the document but neither a ``doc_id`` nor the task name.
Both run in the same process (each rank scores its own documents), so a model of this plugin puts its record of one
sample in :data:`STORE`, keyed by :func:`sample_key`, and the task reads it, then removes it once the sample is scored
(lmms-eval retries a failed ``process_results``, so reading must not consume the entry). Only tasks that declare
``metadata: {lrs_plugin_sample_stats: true}`` in their YAML (:data:`STATS_METADATA_KEY`; lmms-eval copies task metadata
into every request) get entries: a task that never reads the store must not make it grow. This is the one
process-level object of the plugin; it exists because the harness offers no other channel, holds only pending
samples, and is emptied as they are scored.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lrs_plugin.errors import SampleRecordError
from lrs_plugin.harness._record_json import group, json_keys, read_fields, renamed, to_json_object

__all__ = [
    "STATS_METADATA_KEY",
    "STORE",
    "C2FDetails",
    "C2FLevel",
    "FastVKnobs",
    "FocusPass",
    "FocusRecall",
    "InLLMDetails",
    "PDropKnobs",
    "PruMergeKnobs",
    "SampleRecord",
    "SampleRecordStore",
    "StageSeconds",
    "TileTokenCounts",
    "VisionZipKnobs",
    "sample_key",
]

#: Task metadata flag (YAML ``metadata:``) saying that the task's ``process_results`` reads :data:`STORE`.
STATS_METADATA_KEY = "lrs_plugin_sample_stats"


# ------------------------------------------------------------------------------------------------------- parts
@dataclass(frozen=True, kw_only=True)
class FocusPass:
    """One focus-scoring pass over an LLM input sequence (priced by :func:`lrs_plugin.flops.sample_tflops`)."""

    level: int | None = None
    """Pyramid level whose grid was scored (C2F); ``None`` when the pass belongs to no level."""
    seq_len: int
    """Length of the scored sequence (prompt, thumbnail, separator and grid tokens)."""
    decoder_layers: int
    """Full decoder layers the scorer runs per pass (``0``: the pass costs nothing in the LLM)."""


@dataclass(frozen=True, kw_only=True)
class FocusRecall:
    """How much of the document's target box the tokens sent to the LLM cover (:mod:`lrs_plugin.focus.recall`).

    A group: both keys are written together; both ``None`` when the document has no usable box.
    """

    tile: float | None = renamed("focus_tile_recall")
    """``focus_tile_recall``: 1.0 when the box centre lies in a tile encoded at the finest level visited, else 0.0."""
    token: float | None = renamed("focus_token_recall")
    """``focus_token_recall``: fraction of the box's area covered by the cells of the tokens sent to the LLM."""


@dataclass(frozen=True, kw_only=True)
class C2FLevel:
    """One pyramid level C2F visited (``levels`` entries; drawn by :func:`lrs_plugin.c2f.visualize.draw_focus`)."""

    level: int
    """Index of the level in the pyramid (0 = base)."""
    scale: float
    """Scale of the level relative to the source image."""
    tile_grid_hw: list[int]
    """``[rows, cols]`` of the level's tile grid."""
    tiles_encoded: int
    """Tiles of this level that were rendered and encoded."""
    tiles: list[list[int]]
    """``[row, col]`` of each encoded tile."""
    grid_shape_hw: list[int]
    """``[rows, width]`` of the level's token grid (newline column included)."""
    tokens_in_grid: int
    """Grid tokens, placeholders included."""
    tokens_valid: int
    """Grid tokens that belong to an encoded tile (not placeholders)."""
    newline_tokens: int
    """Newline tokens of the grid (always kept)."""
    tokens_picked: int
    """Tokens voting for the next level's tiles (zoom levels) or kept (last level), newlines included."""
    picked_indices: list[int]
    """Grid indices of those tokens."""
    scores: list[float]
    """Focus score of every grid token (rounded to 7 digits)."""
    selected_tiles: list[list[int]] | None = None
    """Zoom levels: ``[row, col]`` of the next level's tiles chosen by the votes."""
    tile_votes: dict[str, int] | None = None
    """Zoom levels: votes per next-level tile, keyed ``"row,col"``."""
    tokens_kept: int | None = None
    """Last level: tokens sent to the LLM from the grid."""


@dataclass(frozen=True, kw_only=True)
class C2FDetails:
    """What only C2F records (a group: its keys are written together)."""

    levels: list[C2FLevel]
    """Every visited level, base first."""
    pyramid_levels: int
    """Levels of the image's pyramid."""
    token_budget: int | None
    """The ``token_budget`` knob (``None``: no cap)."""
    kept_topk: int
    """Grid tokens kept by score at the last level (before adding newline tokens)."""


@dataclass(frozen=True, kw_only=True)
class InLLMDetails:
    """What every in-LLM reducer records about its pruned prefill (a group)."""

    vision_tokens_per_layer: list[int]
    """Image tokens entering each decoder layer."""
    equivalent_vision_tokens: float
    """Layer-averaged image tokens ``Σ_l n_l / L``, the budget unit of FastV / PDrop."""
    position_ids: str
    """Position-id convention after a drop: ``original`` (FastV) or ``renumber`` (PyramidDrop)."""


@dataclass(frozen=True, kw_only=True)
class FastVKnobs:
    """FastV's per-sample schedule (a group)."""

    k: int = renamed("fastv_k")
    """``fastv_k``: image tokens are dropped before layer K."""
    r: float = renamed("fastv_r")
    """``fastv_r``: fraction of the image tokens dropped."""
    keep: int = renamed("fastv_keep")
    """``fastv_keep``: image tokens kept from layer K on."""
    budget: float | None
    """The ``budget`` knob (layer-averaged vision tokens); ``None``: the ``r`` knob decides."""


@dataclass(frozen=True, kw_only=True)
class PDropKnobs:
    """PyramidDrop's per-sample schedule (a group)."""

    layer_list: list[int] = renamed("pdrop_layer_list")
    """``pdrop_layer_list``: layers before which image tokens are dropped."""
    lam: float = renamed("pdrop_lambda")
    """``pdrop_lambda``: fraction kept at each stage."""
    keeps: list[int] = renamed("pdrop_keeps")
    """``pdrop_keeps``: image tokens kept from each stage on."""
    budget: float | None
    """The ``budget`` knob (layer-averaged vision tokens); ``None``: the ``lam`` knob decides."""


@dataclass(frozen=True, kw_only=True)
class VisionZipKnobs:
    """VisionZip's settings (written as the object ``visionzip``)."""

    dominant: int
    """Dominant tokens per tile, the [CLS] state included."""
    contextual: int
    """Contextual (merged) tokens per tile."""
    max_tiles: int | None
    """The anyres tile limit (``None``: the checkpoint's grid)."""


@dataclass(frozen=True, kw_only=True)
class TileTokenCounts:
    """Tokens per tile sent to the LLM, over an image's tiles."""

    min: int
    """Fewest tokens of a tile."""
    mean: float
    """Mean tokens per tile (rounded to 3 digits)."""
    max: int
    """Most tokens of a tile."""


@dataclass(frozen=True, kw_only=True)
class PruMergeKnobs:
    """LLaVA-PruMerge's settings and outcome (written as the object ``prumerge``)."""

    variant: str
    """``plus`` (PruMerge+) or ``base`` (PruMerge)."""
    adaptive: bool
    """Whether the kept count per tile comes from the IQR outlier rule."""
    reduction_ratio: float
    """Fraction of patches kept per tile when not adaptive."""
    max_tiles: int | None
    """The anyres tile limit (``None``: the checkpoint's grid)."""
    tokens_per_tile: TileTokenCounts
    """Kept patches (+ uniform samples) + the pruned-summary token, per tile."""


@dataclass(frozen=True, kw_only=True)
class StageSeconds:
    """Measured wall seconds per stage of one question (a group; :mod:`lrs_plugin.harness.costs` defines each stage).

    Exclusive times: their sum is at most ``latency_s``. A stage a method does not have is ``0.0``.
    """

    image_read_s: float
    """Opening and decoding the image, and turning pixels into model input (rendering C2F's tiles)."""
    vision_encode_s: float
    """Preprocessing, vision tower and projector (VisionZip / PruMerge select inside this pass)."""
    focus_s: float
    """Token selection outside the vision pass (C2F's focus passes and votes, ``random``'s draw)."""
    llm_prefill_s: float
    """Generation start to the first generated token (in-LLM reducers drop their tokens here)."""
    llm_decode_s: float
    """First generated token to the last."""


# ------------------------------------------------------------------------------------------------------ record
@dataclass(kw_only=True)
class SampleRecord:
    """Everything recorded about one answered question (see the module docstring for the JSON rules)."""

    tiles_encoded: int | None = None
    """Tiles the vision tower encoded (LLaVA-NeXT: anyres grid + base image; C2F: thumbnail + pyramid tiles)."""
    tiles_reused: int | None = None
    """With feature reuse (``reuse=true``, C2F): tiles among ``tiles_encoded`` whose features came from an earlier
    question on the same image (thumbnail, base level, zoomed tiles kept); the vision tower ran on
    ``tiles_encoded - tiles_reused``."""
    vision_tokens_encoded: int | None = None
    """``tiles_encoded`` times the tokens of one tile."""
    vision_tokens_to_llm: int | None = None
    """Vision tokens in the LLM input (newline tokens included); in-LLM reducers: before their first drop."""
    llm_input_len: int | None = None
    """Length of the LLM input sequence (prompt text + vision tokens)."""
    new_tokens: int | None = None
    """Tokens generated (the EOS or the token completing a stop string included; none past it)."""
    focus_passes: list[FocusPass] | None = None
    """Focus-scoring passes (C2F); ``[]`` for a method that scores nothing."""
    projector_tokens: int | None = None
    """Tokens that went through the projector when fewer than encoded (VisionZip, PruMerge)."""
    llm_tokens_per_layer: list[int] | None = None
    """Sequence length entering each decoder layer (in-LLM reducers; otherwise ``llm_input_len`` in every layer)."""
    in_llm: InLLMDetails | None = group()
    """In-LLM reducers: the vision tokens per layer and the position-id convention."""
    fastv: FastVKnobs | None = group()
    """FastV's schedule for this sample."""
    pdrop: PDropKnobs | None = group()
    """PyramidDrop's schedule for this sample."""
    budget_met: bool | None = None
    """Whether the method's token budget was reached (``random``; FastV / PDrop with a ``budget``)."""
    max_tiles: int | None = None
    """The anyres-pN tile limit the tokens were encoded under, when one is set."""
    prefix_reused: bool | None = None
    """With prefix reuse (``reuse=true``, a question-independent reducer): whether the keys / values of the prompt up
    to the last image token came from an earlier question on the same image (``False``: computed for this one)."""
    prefix_tokens_reused: int | None = None
    """LLM input positions whose keys / values were reused (``0`` when computed): the prefill computed
    ``llm_input_len - prefix_tokens_reused`` positions. TFLOPs keep counting the whole prompt (the paper's rule)."""
    visionzip: VisionZipKnobs | None = None
    """VisionZip's settings."""
    prumerge: PruMergeKnobs | None = None
    """PruMerge's settings and tokens per tile."""
    c2f: C2FDetails | None = group()
    """C2F's levels and knobs."""
    focus: str | None = None
    """C2F's focus scorer (``rfm``, ``llm_attention``, ``oracle``, ``uniform``; ``auto`` resolved)."""
    focus_recall: FocusRecall | None = group()
    """Focus recall of the document's box; ``None`` when the method reports none."""
    text_only: bool = False
    """The request held no image and was answered by the language model alone."""
    latency_s: float | None = None
    """Wall time of the answer in seconds (reading the image included)."""
    stage_seconds: StageSeconds | None = group()
    """Measured seconds per stage (:mod:`lrs_plugin.harness.costs`), keys ``image_read_s`` ... ``llm_decode_s``."""
    ttft_s: float | None = None
    """Seconds from the start of the answer (reading the image included) to the first generated token."""
    kv_cache_bytes: int | None = None
    """Bytes of the KV cache at the end of the prefill (keys and values of every layer)."""
    peak_memory_bytes: int | None = None
    """Highest memory in use during the answer (CUDA: allocated tensors; CPU: process RSS; ``peak_memory_method``)."""
    peak_memory_growth_bytes: int | None = None
    """``peak_memory_bytes`` minus the memory in use when the answer started."""
    peak_memory_method: str | None = None
    """How memory was measured: ``cuda_max_allocated``, ``linux_vmhwm`` or ``ru_maxrss`` (an upper bound of the peak
    and a lower bound of the growth)."""
    tflops_by_stage: dict[str, float] | None = None
    """Analytic TFLOPs by stage (:func:`lrs_plugin.flops.sample_tflops`: ``vision_tower`` ... ``total``)."""
    tflops: float | None = None
    """Total analytic TFLOPs (``tflops_by_stage["total"]``): every tile and prompt position the question uses, reused
    or not (the paper's convention)."""
    tflops_computed: float | None = None
    """Analytic TFLOPs this run computed (:func:`lrs_plugin.flops.accounting.sample_tflops_computed`): ``tflops``
    less the tiles and prompt prefix reused from an earlier question on the image (equal without reuse)."""
    reducer: str | None = None
    """The reducer that answered (``--model_args reducer=``)."""
    error: str | None = None
    """``"<ErrorClass>: <message>"`` when the sample failed (its answer is empty and scored wrong)."""
    error_step: str | None = None
    """Where it failed: ``document``, ``read``, ``answer`` or ``accounting``."""
    resume_error: str | None = None
    """Why the answer could not be saved to the resume store (the answer itself is kept)."""
    resume_disabled: bool = False
    """Generated while the resume store could not be written (a rerun would generate it again)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level keys read by :meth:`from_dict` that are no field (written back by :meth:`to_dict`)."""

    @classmethod
    def json_keys(cls) -> tuple[str, ...]:
        """Every key a record can write (groups expanded), in writing order."""
        return json_keys(cls)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the record: the per-sample stats dict of resume files.

        Raises:
            SampleRecordError: an :attr:`extra` key is also a field's key.
        """
        out = to_json_object(self)
        clash = sorted(set(out) & set(self.extra))
        if clash:
            raise SampleRecordError(f"SampleRecord.extra holds {clash}, which are fields of the record")
        out.update(copy.deepcopy(self.extra))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleRecord:
        """Read a record from its JSON object (as written by :meth:`to_dict` or by earlier versions).

        Raises:
            SampleRecordError: ``data`` is not a mapping, or a value does not fit its field (the message names the key
                and the expected type).
        """
        if not isinstance(data, Mapping):
            raise SampleRecordError(f"a sample record is a JSON object; got {type(data).__name__}")
        rest = copy.deepcopy(dict(data))
        return cls(**read_fields(cls, rest), extra=rest)


# ---------------------------------------------------------------------------------------------------- hand-off
def sample_key(
    doc: Mapping[str, Any], *, task: str | None = None, split: str | None = None, doc_id: int | None = None
) -> str:
    """Key of one sample.

    A document with a ``question_id`` (this plugin's tasks) is keyed by its ``benchmark`` field and that id, which
    the task's ``process_results`` can rebuild from the document alone. Any other document is keyed by where it
    comes from, ``task/split/doc_id``.

    Raises:
        KeyError: the document has no ``question_id`` and ``task`` / ``doc_id`` are not given.
    """
    question_id = doc.get("question_id")
    if question_id is not None:
        return f"{doc.get('benchmark', '')}/{question_id}"
    if task is None or doc_id is None:
        raise KeyError("a document without question_id needs task, split and doc_id to name its sample")
    return f"{task}/{split}/{doc_id}"


class SampleRecordStore:
    """Thread-safe mapping from sample key to the record a model made of it (copies in, copies out)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, SampleRecord] = {}

    def put(self, key: str, record: SampleRecord) -> None:
        """Record (or replace) the record of one sample.

        Raises:
            TypeError: ``record`` is not a :class:`SampleRecord`.
        """
        if not isinstance(record, SampleRecord):
            raise TypeError(f"the store holds SampleRecord objects; got {type(record).__name__}")
        with self._lock:
            self._items[key] = copy.deepcopy(record)

    def get(self, key: str) -> SampleRecord | None:
        """A copy of the record of one sample, left in the store (``None`` when the model recorded nothing)."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else copy.deepcopy(item)

    def pop(self, key: str) -> SampleRecord | None:
        """Take the record of one sample out of the store; ``None`` when the model recorded nothing."""
        with self._lock:
            return self._items.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        """Forget every pending sample."""
        with self._lock:
            self._items.clear()


#: The store shared by this plugin's models and tasks within one process.
STORE = SampleRecordStore()
