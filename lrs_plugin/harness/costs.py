"""Measured cost of one answered question: wall time per stage, time to first token, peak memory, KV-cache bytes.

The analytic TFLOPs (:mod:`lrs_plugin.flops.accounting`) say what a method *should* cost; these figures say what it
*did* cost on the machine that ran it. The model class makes one :class:`StageClock` per question and hands it down
the answer path (reducer -> backbone); nothing here is global. Stages (:data:`STAGES`):

* ``image_read``: opening and decoding the image (the model), and turning pixels into model input (``to_pil``,
  C2F's tile rendering);
* ``vision_encode``: preprocessing, vision tower and projector (LLaVA-NeXT packing included). VisionZip and PruMerge
  select their tokens inside this pass (cached per image), so their selection is counted here;
* ``focus``: choosing tokens outside the vision pass: C2F's focus passes, top-k and tile votes; ``random``'s draw;
  what a pre-LLM reducer does per question beyond its cached vision tokens;
* ``llm_prefill``: from the start of generation to the first generated token (in-LLM reducers rank and drop their
  tokens here, during the prefill);
* ``llm_decode``: from the first generated token to the last.

Stages nest: a stage's time excludes the stages opened inside it, so the stages never count a second twice and their
sum is at most the latency (the rest is prompt tokenisation, assembly and bookkeeping). Vision tokens cached per image
(questions on one image come in a row) cost nothing on the image's later questions: the figures are what each
question really cost in the order it ran.

On CUDA every stage boundary synchronises the device (``torch.cuda.synchronize``), so queued kernels are charged to
the stage that launched them; on the CPU the clock is plain :func:`time.perf_counter`.

Memory (:class:`PeakMemory`), per question:

* CUDA: ``torch.cuda.reset_peak_memory_stats`` at the start, ``torch.cuda.max_memory_allocated`` at the end: the
  peak of tensor memory the caching allocator handed out (weights included; its reserved but unused blocks and other
  processes are not counted). Growth = that peak minus ``memory_allocated`` at the start.
* CPU on Linux: writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's peak resident set size (``VmHWM``) to
  the current one; ``VmHWM`` at the end is the process's peak RSS during the question, exact (kept by the kernel, not
  sampled) but for the whole process (any other thread's allocations count too; the reset also lowers what
  ``getrusage`` reports as ``ru_maxrss`` for the rest of the run). Growth = that peak minus ``VmRSS`` at the start.
* CPU elsewhere (no writable ``clear_refs``): ``ru_maxrss`` is monotonic over the process's life, so the peak
  recorded is an upper bound (the highest RSS so far) and the growth (its increase during the question) a lower
  bound: 0 unless the question set a new high.

The record names the method used (``peak_memory_method``: ``cuda_max_allocated``, ``linux_vmhwm``, ``ru_maxrss``).

KV cache: the bytes of the keys and values held by the cache at the end of the prefill (when the first token is
stamped), summed over the layers' tensors; with a dense cache that is ``layers x 2 x kv_heads x head_dim x
prefill_len x dtype bytes``, and in-LLM reducers' shorter layers hold fewer positions.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lrs_plugin.harness.record import SampleRecord

__all__ = [
    "STAGES",
    "MemoryPeak",
    "PeakMemory",
    "StageClock",
    "cache_bytes",
    "measured_generation",
    "record_costs",
]

STAGES = ("image_read", "vision_encode", "focus", "llm_prefill", "llm_decode")
"""Stages a :class:`StageClock` times, in pipeline order (module docstring)."""

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _is_cuda(device: str | torch.device | None) -> bool:
    return device is not None and str(device).startswith("cuda")


class StageClock:
    """Wall time per stage of one question, its first-token time and KV-cache size.

    Args:
        device: Where the model runs; a CUDA device is synchronised at every stage boundary. ``None`` or a CPU device:
            plain :func:`time.perf_counter`.

    The clock starts when built (the question's start, also the origin of :attr:`ttft_s`).
    """

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = device
        self._cuda = _is_cuda(device)
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        """Exclusive seconds per stage so far."""
        self.kv_cache_bytes: int | None = None
        """Bytes of the KV cache at the end of the first prefill (``None``: nothing generated yet)."""
        self._children: list[float] = []  # per open stage: seconds spent in the stages opened inside it
        self._first_token: float | None = None  # of the question
        self._generation_first: float | None = None  # of the generation now running
        self.start = self.now()

    def now(self) -> float:
        """:func:`time.perf_counter`, after the device has finished the work queued so far."""
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the clock started."""
        return self.now() - self.start

    @property
    def ttft_s(self) -> float | None:
        """Seconds from the start to the first generated token (``None`` before it)."""
        return None if self._first_token is None else self._first_token - self.start

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Charge the block's time to ``name`` (one of :data:`STAGES`), minus the stages opened inside it.

        A block that raises records nothing (the question failed; its error propagates unchanged).

        Raises:
            ValueError: ``name`` is not a stage.
        """
        if name not in self.seconds:
            raise ValueError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}")
        begin = self.now()
        self._children.append(0.0)
        try:
            yield
        except BaseException:
            self._children.pop()  # a failed question's stages are not recorded; never mask its error
            raise
        total = self.now() - begin
        inner = self._children.pop()
        self.seconds[name] += max(total - inner, 0.0)
        if self._children:
            self._children[-1] += total

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """Time one generation: ``llm_prefill`` up to :meth:`first_token`, ``llm_decode`` after it.

        Without a first-token stamp the whole block is prefill. A block that raises records nothing.
        """
        begin = self.now()
        self._generation_first = None
        yield
        end = self.now()
        first = end if self._generation_first is None else self._generation_first
        self.seconds["llm_prefill"] += first - begin
        self.seconds["llm_decode"] += end - first
        if self._children:
            self._children[-1] += end - begin

    def first_token(self, cache: Any = None) -> None:
        """Stamp the first token of the running generation; ``cache`` (its KV cache, prefill only) is measured.

        Later calls within one generation are ignored.
        """
        if self._generation_first is not None:
            return
        stamp = self.now()
        self._generation_first = stamp
        if self._first_token is None:
            self._first_token = stamp
            if cache is not None:
                self.kv_cache_bytes = cache_bytes(cache)


def cache_bytes(cache: Any) -> int:
    """Bytes of the key and value tensors of a transformers cache (``cache.layers[i].keys`` / ``.values``)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None and hasattr(tensor, "element_size"):
                total += int(tensor.numel()) * int(tensor.element_size())
    return total


def _first_token_streamer(clock: StageClock, cache: Any) -> Any:
    """A ``generate`` streamer that stamps the first generated token on ``clock`` (and measures ``cache`` then)."""
    from transformers.generation.streamers import BaseStreamer

    class FirstTokenStamp(BaseStreamer):
        # generate() calls put() with the prompt ids first (empty for inputs_embeds), then once per new token, after
        # copying it to the host: the first non-empty put is the moment the prefill's token exists.
        def put(self, value: Any) -> None:
            if getattr(value, "numel", lambda: 0)():
                clock.first_token(cache)

        def end(self) -> None:
            pass

    return FirstTokenStamp()


@contextlib.contextmanager
def measured_generation(clock: StageClock | None, model: Any, cache: Any = None) -> Iterator[dict[str, Any]]:
    """Extra ``model.generate`` keyword arguments that time a generation on ``clock`` and pass it ``cache``.

    A first-token streamer splits prefill from decoding, and an explicit ``DynamicCache`` (``cache``, a kept prefix
    of the prompt, or an empty one: what ``generate`` builds itself otherwise) lets the streamer measure the cache at
    the end of the prefill. Greedy decoding is unchanged: the streamer only reads the tokens. Without a clock the
    arguments are just the cache (``{}`` when there is none).
    """
    from transformers.generation import utils

    # transformers 5.x renamed generate's ``past_key_values`` to ``cache`` (the old name warns until 6.0)
    name = "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"
    if clock is None:
        yield {} if cache is None else {name: cache}
        return
    if cache is None:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    with clock.generation():
        yield {"streamer": _first_token_streamer(clock, cache), name: cache}


@dataclass(frozen=True)
class MemoryPeak:
    """One question's memory high-water mark (see the module docstring for each method's meaning)."""

    peak_bytes: int
    """Highest memory in use during the question."""
    growth_bytes: int
    """``peak_bytes`` minus what was in use when the question started (never negative)."""
    method: str
    """``cuda_max_allocated``, ``linux_vmhwm`` or ``ru_maxrss``."""


def _status_bytes(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{_STATUS} has no {key}")
    return int(match.group(1)) * 1024


def _ru_maxrss_bytes() -> int:
    import resource

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux kilobytes


class PeakMemory:
    """Memory high-water mark of one question, started when built; :meth:`stop` reads it.

    Args:
        device: Where the model runs: a CUDA device measures that device's allocator, anything else the process RSS.
    """

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = device
        if _is_cuda(device):
            import torch

            torch.cuda.reset_peak_memory_stats(device)
            self.method, self._start = "cuda_max_allocated", int(torch.cuda.memory_allocated(device))
            return
        try:
            _CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
            self.method, self._start = "linux_vmhwm", _status_bytes("VmRSS")
        except OSError:
            self.method, self._start = "ru_maxrss", _ru_maxrss_bytes()

    def stop(self) -> MemoryPeak | None:
        """The peak since the start and its growth over the memory in use then; ``None`` if it cannot be read."""
        if self.method == "cuda_max_allocated":
            import torch

            peak = int(torch.cuda.max_memory_allocated(self.device))
        elif self.method == "linux_vmhwm":
            try:
                peak = _status_bytes("VmHWM")
            except OSError:  # a measurement must never fail the answer it measures
                return None
        else:
            peak = _ru_maxrss_bytes()
        return MemoryPeak(peak_bytes=peak, growth_bytes=max(peak - self._start, 0), method=self.method)


def record_costs(record: SampleRecord, clock: StageClock, memory: PeakMemory | None = None) -> None:
    """Write the measured figures of one answered question into its record (latency, stages, TTFT, KV, memory)."""
    from lrs_plugin.harness.record import StageSeconds

    record.latency_s = clock.elapsed()
    record.stage_seconds = StageSeconds(**{f"{name}_s": clock.seconds[name] for name in STAGES})
    record.ttft_s = clock.ttft_s
    record.kv_cache_bytes = clock.kv_cache_bytes
    peak = None if memory is None else memory.stop()
    if peak is not None:
        record.peak_memory_bytes = peak.peak_bytes
        record.peak_memory_growth_bytes = peak.growth_bytes
        record.peak_memory_method = peak.method
