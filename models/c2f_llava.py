"""``c2f_llava``: LLaVA / LLaVA-NeXT with coarse-to-fine pruning (or any registered reducer) for lmms-eval.

Thin on purpose: ``--model_args`` are parsed once into :class:`lrs_plugin.model_args.ModelSettings`, the backbone is
loaded with transformers' ``from_pretrained`` (:class:`lrs_plugin.backbone.Backbone`), and each question goes to the
selected reducer (:mod:`lrs_plugin.reducers`). Documents reach the model with image *paths*; questions are answered
grouped by image so each image is decoded once. Per-sample accounting (vision tokens encoded / sent to the LLM,
TFLOPs by stage, latency, failures) goes to the tasks through :mod:`lrs_plugin.sample_stats`. With ``resume_dir=PATH``
each finished answer is saved at once (:mod:`lrs_plugin.resume`) and a rerun generates only what is missing.

Under ``accelerate launch`` each process takes its rank from accelerate; lmms-eval then overrides ``_rank`` /
``_world_size`` from ``RANK`` / ``WORLD_SIZE``, so everything rank-dependent is read at ``generate_until`` time.

Example::

    lmms-eval --model c2f_llava --model_args pretrained=DIR,reducer=c2f,keep_ratio=0.25 --tasks lrs_vqa
"""

from __future__ import annotations

import time
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger

from lrs_plugin.model_args import parse_model_args
from lrs_plugin.resume import ResumeStore, answer_key, settings_fingerprint
from lrs_plugin.sample_stats import STORE, sample_key

__all__ = ["C2FLlava"]

DEFAULT_MAX_NEW_TOKENS = 32


def _rank_device(accelerator: Any, requested: str | None) -> str:
    """The device of this process, as a string torch and the collectives accept.

    The requested one (a bare ``cuda`` becomes the rank's GPU when several processes run), else the rank's CUDA device
    when accelerate uses CUDA, else the CPU (also with ``ACCELERATE_USE_CPU=true`` on a GPU machine: gloo).
    """
    if requested:
        if requested == "cuda" and accelerator.num_processes > 1:
            return f"cuda:{accelerator.local_process_index}"
        return requested
    if accelerator.device.type == "cuda":
        return f"cuda:{accelerator.local_process_index}"
    return "cpu"


def _apply_until(raw_text: str, until: Any) -> str:
    """Cut the answer at the first of the task's stop strings and strip it."""
    if isinstance(until, str):
        until = [until]
    text = raw_text
    for stop in until or ():
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


class C2FLlava(lmms):
    """lmms-eval model (simple request layout) running a reducer on a LLaVA-family backbone.

    Args:
        **model_args: See :mod:`lrs_plugin.model_args` (``pretrained`` is required).
    """

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        from accelerate import Accelerator

        from lrs_plugin.accounting import ModelDims
        from lrs_plugin.backbone import Backbone
        from lrs_plugin.reducers import build_reducer

        self.settings = parse_model_args(model_args)
        accelerator = Accelerator()
        self.accelerator = accelerator
        self._rank = accelerator.process_index  # global rank: correct across nodes
        self._world_size = accelerator.num_processes
        self._device = _rank_device(accelerator, self.settings.device)
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
        self.reducer = build_reducer(s.reducer, self.backbone, s.reducer_options)
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

    def _answer(self, doc: dict[str, Any], context: str, gen_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Answer one request: ``(raw text before until, stats)``; a failure is recorded in the stats (``error``)."""
        from lrs_plugin.accounting import sample_tflops

        self._check_greedy(gen_kwargs)
        image_path = doc.get("image_path")
        start = time.perf_counter()
        try:
            if not image_path:
                from lrs_plugin.errors import ImageReadError

                raise ImageReadError(doc.get("image_error") or "document has no image")
            out = self.reducer.answer(image_path, context, doc=doc, max_new_tokens=self._max_new_tokens(gen_kwargs))
        except Exception as exc:  # noqa: BLE001 - one broken sample must not end a multi-hour run
            logger.opt(exception=True).error("c2f_llava: {} failed: {}", doc.get("question_id"), exc)
            return "", {"error": f"{type(exc).__name__}: {exc}", "latency_s": time.perf_counter() - start}
        self._synchronize()
        stats = dict(out.stats)
        stats["latency_s"] = time.perf_counter() - start
        stats["tflops_by_stage"] = sample_tflops(stats, self.dims)
        stats["tflops"] = stats["tflops_by_stage"]["total"]
        stats["reducer"] = self.settings.reducer
        return out.text, stats

    def _synchronize(self) -> None:
        import torch

        if str(self._device).startswith("cuda"):
            torch.cuda.synchronize(self._device)

    def _open_resume_store(self) -> ResumeStore | None:
        """This rank's resume store (rank and world size as lmms-eval set them), or ``None`` when resume is off."""
        if self._settings_hash is None:
            return None
        store = ResumeStore(self.settings.resume_dir, rank=self.rank, world_size=self.world_size)  # type: ignore[arg-type]
        logger.info(
            "c2f_llava: resume store {}: {} answers loaded ({} unreadable lines skipped); rank {} appends to {}",
            store.folder,
            store.loaded,
            store.skipped_lines,
            self.rank,
            store.path.name,
        )
        return store

    def _answer_or_resume(
        self, store: ResumeStore | None, request_args: tuple, doc: dict[str, Any], gen_kwargs: dict[str, Any]
    ) -> tuple[str, dict[str, Any], bool]:
        """``(raw text, stats, generated?)``: from the store when it has the answer, else generated and stored."""
        context, _gen, _visual, doc_id, task, split = request_args
        key = None
        if store is not None:
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
            if found is not None:
                return found.raw_text, found.stats, False
        raw_text, stats = self._answer(doc, context, gen_kwargs)
        logger.debug("c2f_llava: generated {}/{} ({}) on rank {}", task, doc_id, doc.get("question_id"), self.rank)
        if store is not None and key is not None and "error" not in stats:  # failures are retried by a rerun
            meta = {"task": task, "split": split, "doc_id": doc_id, "question_id": doc.get("question_id")}
            store.put(key, raw_text, stats, meta=meta)
        return raw_text, stats, True

    def generate_until(self, requests: list) -> list[GenerationResult]:
        """Answer every request, grouped by image (each image decoded once), in the original order."""
        from tqdm import tqdm

        docs = []
        for request in requests:
            context, gen_kwargs, _visual, doc_id, task, split = request.args
            docs.append((self.task_dict[task][split][doc_id], dict(gen_kwargs)))
        order = sorted(range(len(docs)), key=lambda i: (str(docs[i][0].get("image_path") or ""), i))
        results: list[GenerationResult | None] = [None] * len(docs)
        store = self._open_resume_store()
        generated = 0
        try:
            for i in tqdm(order, disable=self.rank != 0, desc="c2f_llava"):
                doc, gen_kwargs = docs[i]
                raw_text, stats, fresh = self._answer_or_resume(store, requests[i].args, doc, gen_kwargs)
                generated += fresh
                STORE.put(sample_key(doc), stats)
                counts = TokenCounts(input_tokens=stats.get("llm_input_len"), output_tokens=stats.get("new_tokens"))
                results[i] = GenerationResult(text=_apply_until(raw_text, gen_kwargs.get("until")), token_counts=counts)
        finally:
            self.reducer.close()
            if store is not None:
                store.close()
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
