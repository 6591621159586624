"""``c2f_llava``: LLaVA / LLaVA-NeXT with coarse-to-fine pruning (or any registered reducer) for lmms-eval.

Thin on purpose: ``--model_args`` are parsed once into :class:`lrs_plugin.harness.ModelSettings`, the backbone is
loaded with transformers' ``from_pretrained`` (:class:`lrs_plugin.backbone.Backbone`), and each question goes to the
selected reducer (:mod:`lrs_plugin.reducers.base`). The image is whatever the task's ``doc_to_visual`` returns (a lazy
or eager PIL image, a path, an array, or a list of one), read through one :class:`lrs_plugin.imagery.LargeImage` for
every reducer, so any lmms-eval image task works; a request without an image is answered text-only. Questions on the
same image file are answered in a row (requests are sorted by ``image_path``, answers returned in the request order,
as lmms-eval's own models reorder with a Collator) so each file is decoded once, and, with ``reuse=true`` (default),
a question-independent reducer computes the KV cache of the prompt up to the last image token once per image
(:mod:`lrs_plugin.backbone.prefix_cache`). Generation stops at the task's ``until`` stop
strings (:mod:`lrs_plugin.backbone.stops`). Each answer's :class:`~lrs_plugin.harness.record.SampleRecord` (vision
tokens encoded / sent to the LLM, TFLOPs by stage, latency, failures) goes to this plugin's tasks through
:data:`lrs_plugin.harness.record.STORE`, and its means to lmms-eval's ``results["throughput"]`` for every task
(:class:`lrs_plugin.flops.EfficiencyTally`).
A failure of one sample, at any step, is recorded on that sample and the run goes on. With ``resume_dir=PATH``
each finished answer is saved at once (:mod:`lrs_plugin.harness.resume`) and a rerun generates only what is missing; a
folder that cannot be written is reported once and the run goes on without saving (``resume_strict=true`` stops it).

Under ``accelerate launch`` each process takes its rank from accelerate; lmms-eval then overrides ``_rank`` /
``_world_size`` from ``RANK`` / ``WORLD_SIZE``, so everything rank-dependent is read at ``generate_until`` time.

Example::

    lmms-eval --model c2f_llava --model_args pretrained=DIR,reducer=c2f,keep_ratio=0.25 --tasks lrs_vqa
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger

from lrs_plugin.backbone.stops import cut_at_stop
from lrs_plugin.harness.costs import PeakMemory, StageClock, record_costs
from lrs_plugin.harness.record import STATS_METADATA_KEY, STORE, FocusRecall, SampleRecord, sample_key
from lrs_plugin.harness.requests import rank_device, request_image, request_image_path, request_stop_strings
from lrs_plugin.harness.resume import ResumeStore, ResumeStoreError, answer_key, settings_fingerprint
from lrs_plugin.harness.settings import parse_model_args

__all__ = ["C2FLlava"]

DEFAULT_MAX_NEW_TOKENS = 32


KEEP_ALL_REDUCERS = ("none", "anyres", "downsample")
"""Reducers that send every encoded tile's every token: their focus recall is 1.0 whenever the doc has a box."""


def _keep_all_recall(reducer: str, doc: Any, image_wh: tuple[int, int]) -> FocusRecall | None:
    """Recall 1.0 (tile and token) for :data:`KEEP_ALL_REDUCERS` when ``doc`` has a box inside the image.

    ``None`` otherwise: the other reducers record their own figures (``c2f``, and the stock-layout reducers through
    :mod:`lrs_plugin.reducers._cells`; both ``None`` without a box), so this fallback only runs for a reducer that
    records none.
    """
    from lrs_plugin.focus.recall import doc_box

    if reducer not in KEEP_ALL_REDUCERS or doc_box(doc, image_wh) is None:
        return None
    return FocusRecall(tile=1.0, token=1.0)


class C2FLlava(lmms):
    """lmms-eval model (simple request layout) running a reducer on a LLaVA-family backbone.

    Args:
        **model_args: See :mod:`lrs_plugin.harness.settings` (``pretrained`` is required).
    """

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        from accelerate import Accelerator

        from lrs_plugin.backbone.adapter import Backbone
        from lrs_plugin.flops.accounting import ModelDims
        from lrs_plugin.imagery.large_image import ImageCache
        from lrs_plugin.reducers.registry import build_reducer

        self.settings = parse_model_args(model_args)
        accelerator = Accelerator()
        self.accelerator = accelerator
        self._rank = accelerator.process_index  # global rank: correct across nodes
        self._world_size = accelerator.num_processes
        self._device = rank_device(accelerator, self.settings.device)
        s = self.settings
        self.backbone = Backbone.from_pretrained(
            s.pretrained,
            dtype=s.dtype,
            device=self._device,
            device_map=s.device_map,
            attn_implementation=s.attn_implementation,
            trust_remote_code=s.trust_remote_code,
            tile_batch_size=s.tile_batch_size,
            vision_dtype=s.vision_dtype,
        )
        self.reducer = build_reducer(s.reducer, self.backbone, s.reducer_options, reuse=s.reuse)
        self.images = ImageCache(max_open=s.image_cache)
        self.dims = ModelDims.from_config(self.backbone.config)
        self._warned_sampling = False
        self._settings_hash: str | None = None
        if s.resume and s.resume_dir:
            from lrs_plugin import __version__

            self._settings_hash = settings_fingerprint(s, plugin_version=__version__)
        logger.info(
            "c2f_llava: {} ({}), reducer={}, rank {}/{} on {}",
            s.pretrained,
            self.backbone.arch,
            s.reducer,
            self._rank,
            self._world_size,
            self._device,
        )

    @property
    def device(self) -> Any:
        """This rank's device (lmms-eval allocates its collective buffers there)."""
        return self._device

    def _max_new_tokens(self, gen_kwargs: dict[str, Any]) -> int:
        if self.settings.max_new_tokens is not None:
            return self.settings.max_new_tokens
        return int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))

    def _check_greedy(self, gen_kwargs: dict[str, Any]) -> None:
        sampling = bool(gen_kwargs.get("do_sample")) or float(gen_kwargs.get("temperature", 0) or 0) > 0
        if sampling and not self._warned_sampling:
            logger.warning("c2f_llava decodes greedily for every method (fair comparison); sampling kwargs ignored")
            self._warned_sampling = True

    def _answer(
        self,
        doc: Mapping[str, Any],
        context: str,
        gen_kwargs: dict[str, Any],
        visuals: Any,
        name: str,
        stop_strings: tuple[str, ...],
    ) -> tuple[str, SampleRecord]:
        """Answer one request: ``(text, record)``; a failure is recorded in the record (``error``, ``error_step``).

        Generation ends at the first of ``stop_strings``; the text is cut before it.
        """
        from lrs_plugin.flops.accounting import sample_tflops, sample_tflops_computed

        self._check_greedy(gen_kwargs)
        start = time.perf_counter()
        step = "read"
        image, owned = None, False
        try:
            memory = PeakMemory(self._device)
            clock = StageClock(self._device)  # one per question: stage times, TTFT, KV bytes (lrs_plugin.harness.costs)
            with clock.stage("image_read"):
                if callable(visuals):
                    visuals = visuals(doc)
                image, owned = request_image(visuals, doc, self.images, self.settings.reducer)
                if image is not None:
                    image.load()  # decode now (every method needs the pixels): a broken file is a read failure
            step = "answer"
            max_new = self._max_new_tokens(gen_kwargs)
            if image is None:
                out = self._answer_text_only(context, max_new, stop_strings, clock)
            else:
                out = self.reducer.answer(
                    image, context, doc=doc, max_new_tokens=max_new, stop_strings=stop_strings, clock=clock
                )
            record = out.record
            record_costs(record, clock, memory)  # latency (the device synchronised), stages, TTFT, KV, memory
            if image is not None and record.focus_recall is None:
                record.focus_recall = _keep_all_recall(self.settings.reducer, doc, image.size)
            step = "accounting"
            record.tflops_by_stage = sample_tflops(record, self.dims)
            record.tflops = record.tflops_by_stage["total"]
            record.tflops_computed = sample_tflops_computed(record, self.dims, record.tflops_by_stage)
            record.reducer = self.settings.reducer
            return out.text, record
        except Exception as exc:  # noqa: BLE001 - one broken sample must not end a multi-hour run
            logger.opt(exception=True).error("c2f_llava: {} failed ({}): {}", name, step, exc)
            failure = SampleRecord(
                error=f"{type(exc).__name__}: {exc}", error_step=step, latency_s=time.perf_counter() - start
            )
            return "", failure
        finally:
            if owned:
                image.close()

    def _answer_text_only(
        self, context: str, max_new_tokens: int, stop_strings: tuple[str, ...], clock: StageClock
    ) -> Any:
        """Answer a request that holds no image as ``reducer=blind`` does (recorded as ``text_only``)."""
        from lrs_plugin.reducers.blind import answer_without_image

        out = answer_without_image(
            self.backbone, context, max_new_tokens=max_new_tokens, stop_strings=stop_strings, clock=clock
        )
        out.record.text_only = True
        return out

    def _open_resume_store(self) -> ResumeStore | None:
        """This rank's resume store (rank and world size as lmms-eval set them), or ``None`` when resume is off.

        Raises:
            ResumeStoreError: with ``resume_strict=true``, the folder cannot be created, read or written.
        """
        if self._settings_hash is None:
            return None
        store = ResumeStore(
            self.settings.resume_dir,  # type: ignore[arg-type]
            rank=self.rank,
            world_size=self.world_size,
            strict=self.settings.resume_strict,
        )
        logger.info(
            "c2f_llava: resume store {}: {} answers loaded ({} unreadable lines skipped); rank {} {} {}",
            store.folder,
            store.loaded,
            store.skipped_lines,
            self.rank,
            "cannot write to" if store.disabled else "appends to",
            store.path.name,
        )
        return store

    def _one(self, request: Any, store: ResumeStore | None) -> tuple[GenerationResult, SampleRecord, bool]:
        """Answer one request; ``(result, record, generated?)``.

        Every failure lands in the record, except a resume write failure under ``resume_strict=true``.

        Raises:
            ResumeStoreError: ``resume_strict=true`` and the answer cannot be saved.
        """
        context, gen_kwargs, visuals, doc_id, task, split = request.args
        gen_kwargs = dict(gen_kwargs or {})
        name = f"{task}/{split}/{doc_id}"
        try:
            doc = self.task_dict[task][split][doc_id]
            name = sample_key(doc, task=task, split=split, doc_id=doc_id)
        except Exception as exc:  # noqa: BLE001
            logger.opt(exception=True).error("c2f_llava: {}: cannot read the document: {}", name, exc)
            failure = SampleRecord(error=f"{type(exc).__name__}: {exc}", error_step="document")
            return GenerationResult(text=""), failure, True
        stops = request_stop_strings(gen_kwargs, name)
        key = None
        found = None
        if store is not None:
            try:
                key = answer_key(
                    settings_hash=self._settings_hash or "",
                    task=task,
                    split=split,
                    doc_id=doc_id,
                    doc=doc,
                    context=context,
                    gen_kwargs=gen_kwargs,
                )
                found = store.get(key)
                if found is not None and found.stop_strings not in (None, stops):
                    found = None  # generated under other stop strings: its text may end elsewhere
            except Exception as exc:  # noqa: BLE001 - the answer is generated again
                logger.opt(exception=True).warning("c2f_llava: {}: resume lookup failed: {}", name, exc)
        if found is not None:
            # A line written before stop strings ended generation holds the whole answer: cut it the same way.
            text, record, fresh = cut_at_stop(found.raw_text, stops), found.record, False
        else:
            text, record = self._answer(doc, context, gen_kwargs, visuals, name, stops)
            fresh = True
            logger.debug("c2f_llava: generated {}/{} ({}) on rank {}", task, doc_id, name, self.rank)
            if store is not None and key is not None and record.error is None:  # failures are retried by a rerun
                try:
                    meta = {"task": task, "split": split, "doc_id": doc_id, "question_id": doc.get("question_id")}
                    store.put(key, text, record, stop_strings=stops, meta=meta)
                except ResumeStoreError:  # raised by a strict store only (resume_strict=true): stop the run
                    raise
                except Exception as exc:  # noqa: BLE001 - the answer is kept; only resuming it is lost
                    logger.opt(exception=True).error("c2f_llava: {}: resume write failed: {}", name, exc)
                    record.resume_error = f"{type(exc).__name__}: {exc}"
            if store is not None and store.disabled:  # warned once by the store; the results show it per sample
                record.resume_disabled = True
        if (request.metadata or {}).get(STATS_METADATA_KEY):
            try:
                STORE.put(name, record)
            except Exception as exc:  # noqa: BLE001
                logger.opt(exception=True).error("c2f_llava: {}: record hand-off failed: {}", name, exc)
        counts = TokenCounts(input_tokens=record.llm_input_len, output_tokens=record.new_tokens)
        return GenerationResult(text=text, token_counts=counts), record, fresh

    def generate_until(self, requests: list) -> list[GenerationResult]:
        """Answer every request, grouped by image file (each decoded once), in the original order.

        Padding requests lmms-eval adds to even out ranks are answered empty (their answers are discarded). A
        summary of the efficiency figures goes to lmms-eval's ``results["throughput"]`` (see
        :class:`lrs_plugin.flops.EfficiencyTally`).
        """
        from tqdm import tqdm

        from lrs_plugin.flops.accounting import EfficiencyTally

        columns: dict[tuple[str, str], list[Any] | None] = {}
        order = sorted(
            range(len(requests)), key=lambda i: (request_image_path(self.task_dict, requests[i], columns), i)
        )
        results: list[GenerationResult | None] = [None] * len(requests)
        tally = EfficiencyTally()
        store = None
        generated = 0
        try:
            store = self._open_resume_store()
            for i in tqdm(order, disable=self.rank != 0, desc="c2f_llava"):
                request = requests[i]
                if (request.metadata or {}).get("__padding_only__"):
                    results[i] = GenerationResult(text="")
                    continue
                results[i], record, fresh = self._one(request, store)
                generated += fresh
                tally.add(request.args[4], record)
        finally:
            for close in (self.reducer.close, self.images.close_all, getattr(store, "close", None)):
                if close is None:
                    continue
                try:
                    close()
                except Exception as exc:  # noqa: BLE001
                    logger.opt(exception=True).warning("c2f_llava: cleanup failed: {}", exc)
        tally.report(self.world_size)
        if store is not None:
            logger.info(
                "c2f_llava: rank {}: {} requests, {} from the resume store, {} generated",
                self.rank,
                len(requests),
                len(requests) - generated,
                generated,
            )
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests: list) -> list:
        """Not supported: the benchmarks are generative."""
        raise NotImplementedError("c2f_llava implements generate_until only")

    def generate_until_multi_round(self, requests: list) -> list:
        """Not supported."""
        raise NotImplementedError("c2f_llava implements generate_until only")
