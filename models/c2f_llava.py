"""``c2f_llava``: LLaVA / LLaVA-NeXT with coarse-to-fine pruning (or any registered reducer) for lmms-eval.

Thin on purpose: ``--model_args`` are parsed once into :class:`lrs_plugin.model_args.ModelSettings`, the backbone is
loaded with transformers' ``from_pretrained`` (:class:`lrs_plugin.backbone.Backbone`), and each question goes to the
selected reducer (:mod:`lrs_plugin.reducers`). Documents reach the model with image *paths*; questions are answered
grouped by image so each image is decoded once. Per-sample accounting (vision tokens encoded / sent to the LLM,
TFLOPs by stage, latency, failures) goes to the tasks through :mod:`lrs_plugin.sample_stats`.

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
from lrs_plugin.sample_stats import STORE, sample_key

__all__ = ["C2FLlava"]

DEFAULT_MAX_NEW_TOKENS = 32


def _rank_device(accelerator: Any, requested: str | None) -> str:
    """The device of this process: the requested one, else the rank's CUDA device, else the CPU."""
    if requested:
        return requested
    import torch

    if torch.cuda.is_available():
        return f"cuda:{accelerator.local_process_index}"
    return "cpu"


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
        )
        self.reducer = build_reducer(s.reducer, self.backbone, s.reducer_options)
        self.dims = ModelDims.from_config(self.backbone.config)
        self._warned_sampling = False
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
        """Answer one request; any failure is recorded on the sample instead of aborting the run."""
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
        text = out.text
        for stop in gen_kwargs.get("until") or ():
            if stop:
                text = text.split(stop, 1)[0]
        stats = dict(out.stats)
        stats["latency_s"] = time.perf_counter() - start
        stats["tflops_by_stage"] = sample_tflops(stats, self.dims)
        stats["tflops"] = stats["tflops_by_stage"]["total"]
        stats["reducer"] = self.settings.reducer
        return text.strip(), stats

    def _synchronize(self) -> None:
        import torch

        if str(self._device).startswith("cuda"):
            torch.cuda.synchronize(self._device)

    def generate_until(self, requests: list) -> list[GenerationResult]:
        """Answer every request, grouped by image (each image decoded once), in the original order."""
        from tqdm import tqdm

        docs = []
        for request in requests:
            context, gen_kwargs, _visual, doc_id, task, split = request.args
            docs.append((self.task_dict[task][split][doc_id], context, dict(gen_kwargs)))
        order = sorted(range(len(docs)), key=lambda i: (str(docs[i][0].get("image_path") or ""), i))
        results: list[GenerationResult | None] = [None] * len(docs)
        try:
            for i in tqdm(order, disable=self._rank != 0, desc="c2f_llava"):
                doc, context, gen_kwargs = docs[i]
                text, stats = self._answer(doc, context, gen_kwargs)
                STORE.put(sample_key(doc), stats)
                counts = TokenCounts(input_tokens=stats.get("llm_input_len"), output_tokens=stats.get("new_tokens"))
                results[i] = GenerationResult(text=text, token_counts=counts)
        finally:
            self.reducer.close()
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests: list) -> list:
        """Not supported: the benchmarks are generative."""
        raise NotImplementedError("c2f_llava implements generate_until only")

    def generate_until_multi_round(self, requests: list) -> list:
        """Not supported."""
        raise NotImplementedError("c2f_llava implements generate_until only")
