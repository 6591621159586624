"""Stop strings: the task's ``until``, one stopping rule during generation, one cut of the text.

lmms-eval hands a task's stop strings to the model as ``gen_kwargs["until"]`` (a string or a list of strings;
a blank line when the task sets none). They are applied once, while generating:

* :func:`stop_strings_of` reads them;
* :func:`stop_criterion` ends generation after the token with which the answer (decoded, special tokens skipped,
  leading whitespace dropped) first contains one. :meth:`Backbone.generate <lrs_plugin.backbone.Backbone.generate>`
  hands it to transformers' ``generate`` as a ``StoppingCriteria`` (:func:`stopping_criteria`); the hand-written
  decoding loop of the in-LLM reducers asks the same predicate;
* :func:`cut_at_stop` cuts the decoded text before the first stop string and strips it.

The answer is therefore the text that generating to the end and cutting afterwards gives (as this plugin did before
stopping during generation), while the tokens past the stop, and their decode FLOPs, are never spent. (Exception: one
stop string containing another, listed after it, may cut earlier than cutting the full text would.) The criterion
reads the decoded text rather than token strings (transformers' ``StopStringCriteria``) so that a stop string inside
the answer's leading whitespace, which the cut strips, does not end generation with an empty answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lrs_plugin.errors import ConfigError

__all__ = ["cut_at_stop", "stop_criterion", "stop_strings_of", "stopping_criteria"]


def stop_strings_of(until: Any) -> tuple[str, ...]:
    """The non-empty stop strings of lmms-eval's ``until`` (``None``, a string, or a list / tuple of strings).

    Raises:
        ConfigError: ``until`` is another type or holds a non-string (the message shows it).
    """
    if until is None:
        return ()
    items = [until] if isinstance(until, str) else until
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise ConfigError(f"until={until!r} must be a string or a list of strings (the task's stop strings)")
    return tuple(dict.fromkeys(s for s in items if s))


def cut_at_stop(text: str, stop_strings: Sequence[str] | None) -> str:
    """``text`` stripped, cut before its first stop string, stripped again.

    Each stop string cuts in turn (``text.split(stop, 1)[0]``, as lmms-eval's own models apply ``until``).
    """
    text = text.strip()
    for stop in stop_strings or ():
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


def stop_criterion(tokenizer: Any, stop_strings: Sequence[str] | None) -> Callable[[Sequence[int]], bool] | None:
    """Whether the answer generated so far contains a stop string (after its leading whitespace).

    Args:
        tokenizer: The backbone's tokenizer (``decode`` with special tokens skipped, as the answer is decoded).
        stop_strings: Stop strings from :func:`stop_strings_of` (``None`` or empty: none).

    Returns:
        ``predicate(generated_ids) -> bool``, or ``None`` when there is no stop string.
    """
    stops = tuple(s for s in stop_strings or () if s)
    if not stops:
        return None

    def stopped(ids: Sequence[int]) -> bool:
        text = tokenizer.decode(list(ids), skip_special_tokens=True).lstrip()
        return any(stop in text for stop in stops)

    return stopped


def stopping_criteria(tokenizer: Any, stop_strings: Sequence[str] | None) -> Any:
    """:func:`stop_criterion` as transformers' ``StoppingCriteriaList`` for ``generate`` (``None`` without stops).

    ``generate`` calls it with the ids generated so far (``[batch, t]``; from ``inputs_embeds`` they hold no prompt).
    """
    stopped = stop_criterion(tokenizer, stop_strings)
    if stopped is None:
        return None
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopStrings(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            done = [stopped(row.tolist()) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopStrings()])
