"""``lrs_dummy``: a deterministic stand-in model for testing the benchmark tasks end to end without weights.

It answers from the document itself with a documented, reproducible policy, so that a test can compute the
expected metrics by hand:

* the sample's image header is read (through :mod:`lrs_plugin.imagery.large_image`, pixels are never decoded); a missing
or
  unreadable image makes the answer empty and the failure is recorded for the task, which scores it wrong;
* otherwise, with ``h = int(sha256(question_id))``, the answer is correct when ``h % correct_every == 0`` and wrong
  otherwise. A correct LRS-VQA answer is the ground truth, spelled with WordNet's other spelling for ``gray``/``grey``
  (so the synonym rule is exercised); a wrong one is ``"unknown"``. A correct MME-RealWorld answer is the option
  letter, a wrong one the next letter (E wraps to A).

Not a baseline: its accuracies mean nothing.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms

from lrs_plugin.errors import ConfigError, ImageReadError
from lrs_plugin.harness.record import STORE, SampleRecord, sample_key
from lrs_plugin.imagery.large_image import image_size

__all__ = ["LrsDummy", "dummy_answer"]

_SPELLING = {"gray": "grey", "grey": "gray"}
_LETTERS = "ABCDE"


def dummy_answer(doc: dict[str, Any], correct_every: int) -> str:
    """The answer ``lrs_dummy`` gives to ``doc`` when its image is readable (see the module docstring)."""
    digest = int(hashlib.sha256(str(doc["question_id"]).encode()).hexdigest(), 16)
    correct = digest % correct_every == 0
    if "ground_truth" in doc:  # LRS-VQA
        truth = doc["ground_truth"]
        return _SPELLING.get(truth, truth) if correct else "unknown"
    letter = doc["answer"]  # MME-RealWorld
    return letter if correct else _LETTERS[(_LETTERS.index(letter) + 1) % len(_LETTERS)]


class LrsDummy(lmms):
    """Deterministic test model (simple request layout).

    Args:
        pretrained: Only names the output folder (lmms-eval uses ``pretrained=`` for that).
        correct_every: One answer in ``correct_every`` (by question-id hash) is right.
        batch_size: Accepted for CLI compatibility; requests are answered one by one.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str = "lrs-dummy",
        correct_every: int = 3,
        batch_size: int | str = 1,
        max_batch_size: int | str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ConfigError(
                f"lrs_dummy: unknown model_args {sorted(kwargs)}; valid: pretrained, correct_every, batch_size"
            )
        if isinstance(correct_every, bool) or not isinstance(correct_every, (int, float)) or int(correct_every) < 1:
            raise ConfigError(f"lrs_dummy: correct_every must be an integer >= 1, got {correct_every!r}")
        self.pretrained = pretrained
        self.correct_every = int(correct_every)
        self.batch_size_per_gpu = int(batch_size)
        self._device = "cpu"

    @property
    def device(self) -> str:
        """Device of the (non-existent) weights; lmms-eval reads it in multi-process runs."""
        return self._device

    def generate_until(self, requests) -> list[GenerationResult]:
        """Answer each request from its document (see the module docstring)."""
        outputs = []
        for request in requests:
            context, _gen_kwargs, _doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            start = time.perf_counter()
            record = SampleRecord()
            image_path = doc.get("image_path")
            try:
                if not image_path:
                    raise ImageReadError(doc.get("image_error") or "document has no image")
                image_size(image_path)
                text = dummy_answer(doc, self.correct_every)
            except ImageReadError as exc:
                text = ""
                record.error = f"ImageReadError: {exc}"
            record.latency_s = time.perf_counter() - start
            STORE.put(sample_key(doc), record)
            counts = TokenCounts(input_tokens=len(context.split()), output_tokens=len(text.split()))
            outputs.append(GenerationResult(text=text, token_counts=counts))
        return outputs

    def loglikelihood(self, requests):
        """Not supported: the benchmarks of this plugin are generative."""
        raise NotImplementedError("lrs_dummy only implements generate_until")

    def generate_until_multi_round(self, requests):
        """Not supported."""
        raise NotImplementedError("lrs_dummy only implements generate_until")
