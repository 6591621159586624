"""``--model_args`` of ``c2f_llava``: parsed once, at the boundary, into a frozen :class:`ModelSettings`.

lmms-eval hands values over as ``bool`` / ``int`` / ``float`` / ``str`` (``None`` arrives as the string ``"None"``,
``-3`` as a float). Keys:

* backbone: ``pretrained`` (required), ``dtype``, ``vision_dtype`` (the CLIP tower's own precision: ``float32``,
  ``float16`` or ``bfloat16``; default none = ``dtype``; the C2F seed runs ``dtype=float16,vision_dtype=float32``),
  ``device``, ``device_map``, ``attn_implementation``, ``trust_remote_code``, ``tile_batch_size``;
* method: ``reducer`` (default ``c2f``), ``focus`` (C2F's scorer, default ``auto``), ``focus_<knob>`` (a scorer knob,
  e.g. ``focus_layer=2``); every other key is an option of the reducer (e.g. ``keep_ratio=0.25``);
* harness: ``batch_size`` / ``max_batch_size`` (requests are answered one at a time; only 1 is accepted),
  ``max_new_tokens`` (overrides the task's value, for quick runs), ``image_cache`` (image files kept open at once,
  default 1: questions are answered grouped by image, so each file is decoded once; it changes no answer), ``reuse``
  (default ``true``: for the reducers whose vision tokens do not depend on the question, the KV cache of the prompt up
  to the last image token is computed once per image and extended per question, :mod:`lrs_plugin.backbone.prefix_cache`,
  and C2F encodes its thumbnail and base level once per image, :mod:`lrs_plugin.c2f.features`; ``false`` recomputes
  them for every question; it changes no answer);
* resume (:mod:`lrs_plugin.harness.resume`): ``resume_dir`` (folder where each finished answer is saved at once, so
  a killed run resumes where it stopped; default none = off), ``resume`` (``false`` turns it off with ``resume_dir``
  set), ``resume_strict`` (``true`` stops the run when the store cannot be written; default ``false``: one warning, the
  run goes on without saving; it changes no answer).

What changes an answer is decided once, per field, in the metadata of :class:`ModelSettings` (``changes_answer``
and a one-line ``why``) and read through :func:`answer_settings` by both the resume store's fingerprint and the
leaderboard's ``config_hash`` / ``setting``. Conservatively, everything that can change one generated token counts:
the checkpoint, the reducer and all its options (scorer ones included), ``dtype``, ``vision_dtype``, ``device``,
``device_map``, ``attn_implementation``, ``trust_remote_code``, ``tile_batch_size`` and ``max_new_tokens``. Only
``image_cache``, ``reuse`` and the ``resume*`` options do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lrs_plugin.errors import ConfigError

__all__ = ["ModelSettings", "answer_settings", "changes_answer", "coerce_none", "parse_model_args"]


def coerce_none(value: Any) -> Any:
    """The strings ``"None"`` and ``"null"`` become ``None`` (lowercase ``none`` stays: it is a reducer name)."""
    if isinstance(value, str) and value.strip() in ("None", "null"):
        return None
    return value


def _answer(changes: bool, why: str) -> dict[str, Any]:
    """Field metadata: whether the setting can change a generated token, and the one-line reason."""
    return {"changes_answer": changes, "why": why}


@dataclass(frozen=True)
class ModelSettings:
    """Validated settings of one ``c2f_llava`` instance.

    Every field's metadata says whether it can change an answer (``changes_answer``) and why (``why``);
    :func:`answer_settings` reads it.
    """

    # Checkpoint folder or Hub id, loaded with transformers' from_pretrained.
    pretrained: str = field(metadata=_answer(True, "the checkpoint is the model"))
    # Registered reducer name (lrs_plugin.reducers.registry.available_reducers()).
    reducer: str = field(default="c2f", metadata=_answer(True, "the method"))
    # Weights dtype: auto (checkpoint's), float32, float16, bfloat16.
    dtype: str = field(default="auto", metadata=_answer(True, "the precision of every weight and activation"))
    # Vision-tower dtype: float32, float16, bfloat16; None: the tower stays in dtype.
    vision_dtype: str | None = field(default=None, metadata=_answer(True, "the precision of the image features"))
    # Device of the model; None: the rank's CUDA device, else CPU.
    device: str | None = field(
        default=None,
        metadata=_answer(True, "CPU and GPU kernels round differently; None (each rank's own) fits any world size"),
    )
    # transformers device_map (e.g. "auto" to split one model over several GPUs of one process).
    device_map: str | None = field(
        default=None, metadata=_answer(True, "which device (and so which kernels) computes each layer")
    )
    # sdpa (default), eager, flash_attention_2 (needs the [gpu] extra); None picks sdpa / flash when available.
    attn_implementation: str | None = field(
        default=None, metadata=_answer(True, "sdpa, eager and flash attention differ numerically in half precision")
    )
    # Never run code shipped with a checkpoint unless asked.
    trust_remote_code: bool = field(default=False, metadata=_answer(True, "it changes which modelling code runs"))
    # Tiles per vision-tower batch.
    tile_batch_size: int = field(
        default=16, metadata=_answer(True, "another batch size can pick other GPU kernels (other rounding)")
    )
    # Overrides the task's max_new_tokens when set.
    max_new_tokens: int | None = field(default=None, metadata=_answer(True, "it cuts or lengthens the answer"))
    # Questions on one image share the KV cache of the prompt up to the last image token (question-independent
    # reducers: none, anyres, downsample, visionzip, prumerge, random) and C2F's thumbnail and base-level features;
    # false recomputes them for every question.
    reuse: bool = field(
        default=True,
        metadata=_answer(
            False,
            "the same prefix keys and values are reused instead of recomputed; the answer is the same greedy decode",
        ),
    )
    # Image files kept open (decoded) at once by the model, least recently used closed first.
    image_cache: int = field(default=1, metadata=_answer(False, "how many files stay open, not which pixels are read"))
    # Options of the reducer (validated by the reducer); for c2f also focus and focus_options (the scorer's knobs).
    reducer_options: Mapping[str, Any] = field(
        default_factory=dict, metadata=_answer(True, "the method's settings, the scorer's included")
    )
    # Folder of the crash-safe answer store (lrs_plugin.harness.resume); None: answers are not saved.
    resume_dir: str | None = field(default=None, metadata=_answer(False, "where answers are saved, not how"))
    # False ignores resume_dir (neither reads nor writes the store).
    resume: bool = field(default=True, metadata=_answer(False, "whether answers are saved, not how"))
    # True: a resume_dir that cannot be created, read or written stops the run (ResumeStoreError); False: one
    # warning, the run goes on without saving (samples marked resume_disabled).
    resume_strict: bool = field(default=False, metadata=_answer(False, "what a failed save does, not the answer"))

    def __post_init__(self) -> None:
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ConfigError("c2f_llava needs pretrained=<checkpoint folder or Hub id>")
        if not isinstance(self.reducer, str):
            raise ConfigError(f"reducer must be a name; got {self.reducer!r}")
        for name in ("trust_remote_code", "reuse", "resume", "resume_strict"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false; got {getattr(self, name)!r}")
        if self.resume_dir is not None and (not isinstance(self.resume_dir, str) or not self.resume_dir.strip()):
            raise ConfigError(f"resume_dir must be a folder path or None; got {self.resume_dir!r}")
        for name in ("tile_batch_size", "image_cache"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1; got {value!r}")
        if self.max_new_tokens is not None and (
            isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1
        ):
            raise ConfigError(f"max_new_tokens must be None or an int >= 1; got {self.max_new_tokens!r}")


_BACKBONE_KEYS = (
    "dtype",
    "vision_dtype",
    "device",
    "device_map",
    "attn_implementation",
    "trust_remote_code",
    "tile_batch_size",
)
_RESUME_KEYS = ("resume_dir", "resume", "resume_strict")
_HARNESS_KEYS = ("image_cache", "reuse")


def _as_int(name: str, value: Any) -> Any:
    """lmms-eval turns ``-3`` or ``2.0`` into floats: accept integral floats for int fields."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def parse_model_args(kwargs: Mapping[str, Any]) -> ModelSettings:
    """Split the flat ``--model_args`` mapping into backbone, reducer and scorer settings.

    Raises:
        ConfigError: a missing ``pretrained``, a batch size other than 1, or an invalid value.
    """
    args = {k: coerce_none(v) for k, v in kwargs.items()}
    for key in ("batch_size", "max_batch_size"):
        value = _as_int(key, args.pop(key, 1))
        if value not in (None, 1):
            raise ConfigError(
                f"{key}={value!r}: c2f_llava answers one request at a time (batch size 1, as every pruning method "
                "assumes); scale out with accelerate launch instead"
            )
    if "pretrained" not in args or args["pretrained"] is None:
        raise ConfigError("c2f_llava needs pretrained=<checkpoint folder or Hub id>")
    settings: dict[str, Any] = {"pretrained": str(args.pop("pretrained"))}
    settings["reducer"] = str(args.pop("reducer", "c2f"))
    for key in _BACKBONE_KEYS + _RESUME_KEYS + _HARNESS_KEYS:
        if key in args:
            settings[key] = args.pop(key)
    if settings.get("resume_dir") is not None:
        settings["resume_dir"] = str(settings["resume_dir"])
    for key in ("tile_batch_size", "max_new_tokens", "image_cache"):
        if key in args:
            settings[key] = _as_int(key, args.pop(key))
        elif key in settings:
            settings[key] = _as_int(key, settings[key])
    options: dict[str, Any] = {}
    focus_options = {k[len("focus_") :]: v for k, v in args.items() if k.startswith("focus_")}
    for key in list(args):
        if key.startswith("focus_"):
            args.pop(key)
    if settings["reducer"] == "c2f":
        options["focus"] = args.pop("focus", "auto")
        options["focus_options"] = focus_options
    elif focus_options or "focus" in args:
        raise ConfigError(f"focus / focus_* options apply to reducer=c2f only, not reducer={settings['reducer']!r}")
    options.update(args)
    return ModelSettings(**settings, reducer_options=options)


def _option_args(reducer: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Reducer options under their ``--model_args`` names (C2F's ``focus_options`` back into ``focus_<knob>``)."""
    args: dict[str, Any] = {}
    for key, value in options.items():
        if reducer == "c2f" and key == "focus_options":
            args.update({f"focus_{knob}": knob_value for knob, knob_value in dict(value).items()})
        else:
            args[key] = value
    return args


def answer_settings(settings: ModelSettings) -> dict[str, Any]:
    """Every setting that can change an answer, keyed by its ``--model_args`` name.

    The one definition of "what changes an answer": the fields whose metadata says ``changes_answer=True``, with the
    reducer options (C2F's ``focus`` and ``focus_<knob>`` included) spread into their own names. The resume store's
    fingerprint (:func:`lrs_plugin.harness.resume.settings_fingerprint`) and the leaderboard's ``config_hash`` and
    ``setting`` (:mod:`lrs_plugin.leaderboard.results`) are built from it. Defaults are included, so a setting
    spelled out at its default value and one left out give the same dict.

    Raises:
        ConfigError: a reducer option named like a setting (only possible when ``ModelSettings`` is built by hand).
    """
    args: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for f in fields(settings):
        if not f.metadata["changes_answer"]:
            continue
        value = getattr(settings, f.name)
        if f.name == "reducer_options":
            options = _option_args(settings.reducer, value)
        else:
            args[f.name] = value
    clash = sorted(set(options) & {f.name for f in fields(settings)})
    if clash:
        raise ConfigError(f"reducer options {clash} have the names of settings; rename them")
    return {**args, **options}


def changes_answer(key: str) -> bool:
    """Whether a ``--model_args`` key can change an answer, by the :class:`ModelSettings` field metadata.

    A key that is not a field (a reducer or scorer option, ``batch_size``, another lmms-eval model's option) counts:
    anything that may change a generated token does.
    """
    for f in fields(ModelSettings):
        if f.name == key:
            return bool(f.metadata["changes_answer"])
    return True
