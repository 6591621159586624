"""The model arguments of a measured row: read as lmms-eval read them, judged by the harness.

Which model arguments change an answer is not decided here: the results file's ``model_args`` is read as lmms-eval
0.7.3 reads it (:func:`parse_model_args_string`, plus the command line's ``--device`` / ``--batch_size``), then for
``c2f_llava`` through the harness's own :func:`lrs_plugin.harness.settings.parse_model_args` and
:func:`~lrs_plugin.harness.settings.answer_settings`, the same reading the resume store's fingerprint uses
(:func:`answer_args`). ``config_hash`` and the default ``setting`` are built from that. Since this one definition
replaced the leaderboard's own list, ``device``, ``device_map``, ``attn_implementation``, ``trust_remote_code`` and
``tile_batch_size`` count (they can change a generated token), values are typed as lmms-eval types them, and
defaults count as given: a measured row built before would get another ``config_hash``. ``leaderboard.csv`` held no
measured row when that changed (only ``source=paper`` rows, which have no hash), so no stored hash was invalidated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from lrs_plugin.errors import ConfigError
from lrs_plugin.harness.settings import answer_settings, changes_answer, parse_model_args
from lrs_plugin.leaderboard.schema import LeaderboardError, shown

__all__ = [
    "answer_args",
    "config_hash",
    "default_setting",
    "model_kwargs",
    "parse_model_args_string",
    "written_model_args",
]


def _lmms_eval_value(text: str) -> Any:
    """lmms-eval 0.7.3's ``utils.handle_arg_string``: true/false (any case), digits -> int, a float, else the text."""
    if text.lower() == "true":
        return True
    if text.lower() == "false":
        return False
    if text.isnumeric():
        return int(text)  # ValueError for digits int() does not read ("²"): lmms-eval fails there too
    try:
        return float(text)
    except ValueError:
        return text


def _lmms_eval_split(text: str) -> list[str]:
    """lmms-eval 0.7.3's ``utils._smart_comma_split``: commas inside quotes, ``[...]`` or ``{...}`` do not split."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quote: str | None = None
    for i, char in enumerate(text):
        if char in ('"', "'") and (i == 0 or text[i - 1] != "\\"):
            if quote is None:
                quote = char
            elif char == quote:
                quote = None
        elif quote is None:
            if char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
            elif char == "," and depth == 0:
                if "".join(current).strip():
                    parts.append("".join(current).strip())
                current = []
                continue
        current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_model_args_string(text: str) -> dict[str, Any]:
    """A ``--model_args`` string as lmms-eval 0.7.3 hands it to the model (``utils.simple_parse_args_string``).

    Parts are split at commas outside quotes and brackets (``focus_llm_layer_list=[2,3]`` is one part, its value the
    text ``"[2,3]"``), each at its first ``=``; values become ``True`` / ``False``, ``int`` (digits only), ``float``
    (``-3`` -> ``-3.0``, ``1e-3``) or stay text (quotes kept). Keys and values are not stripped around ``=``.
    Re-implemented rather than imported: ``lmms_eval.utils`` imports torch and transformers (seconds), and the
    leaderboard reads results files without them; a test checks both agree.

    Raises:
        LeaderboardError: a part that is not ``key=value`` or a value lmms-eval cannot read (lmms-eval would have
            stopped before running, so no real results file has one).
    """
    args: dict[str, Any] = {}
    for part in _lmms_eval_split((text or "").strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise LeaderboardError(f"model_args part {shown(part)} is not key=value (model_args={shown(text)})")
        try:
            args[key] = _lmms_eval_value(value)
        except ValueError as exc:
            raise LeaderboardError(f"model_args value {shown(value)} is not readable by lmms-eval: {exc}") from exc
    return args


def written_model_args(config: Mapping[str, Any]) -> dict[str, Any]:
    """A results file's ``config.model_args`` as lmms-eval parsed it (a mapping is used as is)."""
    raw = config.get("model_args") or ""
    return {str(k): v for k, v in raw.items()} if isinstance(raw, Mapping) else parse_model_args_string(str(raw))


def model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments lmms-eval 0.7.3 gave the model, from a results file's ``config``.

    That is ``model_args`` (a string parsed by :func:`parse_model_args_string`, or a mapping used as is) plus the
    command line's ``--batch_size`` and ``--device`` where the results record them (``create_from_arg_string``'s
    extra arguments; lmms-eval refuses a key given both ways).

    Raises:
        LeaderboardError: an unreadable ``model_args``, or a key given both ways with two values.
    """
    kwargs = written_model_args(config)
    for key in ("batch_size", "device"):
        value = config.get(key)
        if value is None:
            continue
        if key in kwargs and kwargs[key] != value:
            raise LeaderboardError(f"{key} given twice: model_args {shown(kwargs[key])}, command line {shown(value)}")
        kwargs[key] = value
    return kwargs


def answer_args(harness_model: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The model arguments of a run that can change an answer, by name (``pretrained`` included when given).

    ``c2f_llava``: the harness's own reading, :func:`lrs_plugin.harness.settings.parse_model_args` then
    :func:`~lrs_plugin.harness.settings.answer_settings` (defaults included), as the resume store reads it. Another
    lmms-eval model (e.g. ``llava_hf``): every argument given except those the same field metadata marks as changing
    no answer (:func:`~lrs_plugin.harness.settings.changes_answer`).

    Raises:
        LeaderboardError: ``c2f_llava`` arguments the harness refuses.
    """
    if harness_model == "c2f_llava":
        try:
            return answer_settings(parse_model_args(kwargs))
        except ConfigError as exc:
            raise LeaderboardError(f"c2f_llava model_args refused by the harness: {exc}") from exc
    return {k: v for k, v in kwargs.items() if changes_answer(k)}


def _shown_arg(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def default_setting(answer_args: Mapping[str, Any]) -> str:
    """A measured row's default ``setting`` from its answer-changing ``model_args`` (pretrained / reducer excluded).

    ``max_tiles=N`` with square pinpoints (the default) is the paper's ``anyres-pN`` and is named so, first, so that
    measured rows line up with the paper's (``reducer=fastv,max_tiles=144`` -> ``anyres-p144``); the other arguments
    follow sorted as ``k=v`` (booleans as ``true`` / ``false``); no argument at all is ``default``.
    """
    rest = dict(sorted(answer_args.items()))
    parts = []
    if (
        "max_tiles" in rest
        and rest.get("pinpoints", "square") == "square"
        and str(rest["max_tiles"]) not in ("", "None")
    ):
        parts.append(f"anyres-p{_shown_arg(rest.pop('max_tiles'))}")
        rest.pop("pinpoints", None)
    parts += [f"{k}={_shown_arg(v)}" for k, v in rest.items()]
    return ",".join(parts) or "default"


def config_hash(harness_model: str, model: str, answers: Mapping[str, Any], versions: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the configuration that can change the answers.

    Args:
        harness_model: the lmms-eval model (e.g. ``c2f_llava``).
        model: the model name (not its local path).
        answers: :func:`answer_args` of the run (its ``pretrained`` is left out: ``model`` names the checkpoint).
        versions: the task versions.
    """
    canonical = {
        "harness_model": harness_model,
        "model": model,
        "settings": {k: v for k, v in sorted(answers.items()) if k != "pretrained"},
        "tasks": {k: str(v) for k, v in sorted(versions.items())},
    }
    payload = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()
