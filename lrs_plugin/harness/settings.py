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
  default 1: questions are answered grouped by image, so each file is decoded once; it changes no answer);
* resume (:mod:`lrs_plugin.harness.resume`): ``resume_dir`` (folder where each finished answer is saved at once, so a
killed
  run resumes where it stopped; default none = off), ``resume`` (``false`` turns it off with ``resume_dir`` set),
  ``resume_strict`` (``true`` stops the run when the store cannot be written; default ``false``: one warning, the
  run goes on without saving; it changes no answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lrs_plugin.errors import ConfigError

__all__ = ["ModelSettings", "parse_model_args", "coerce_none"]


def coerce_none(value: Any) -> Any:
    """The strings ``"None"`` and ``"null"`` become ``None`` (lowercase ``none`` stays: it is a reducer name)."""
    if isinstance(value, str) and value.strip() in ("None", "null"):
        return None
    return value


@dataclass(frozen=True)
class ModelSettings:
    """Validated settings of one ``c2f_llava`` instance."""

    # Checkpoint folder or Hub id, loaded with transformers' from_pretrained.
    pretrained: str
    # Registered reducer name (lrs_plugin.reducers.registry.available_reducers()).
    reducer: str = "c2f"
    # Weights dtype: auto (checkpoint's), float32, float16, bfloat16.
    dtype: str = "auto"
    # Vision-tower dtype: float32, float16, bfloat16; None: the tower stays in dtype.
    vision_dtype: str | None = None
    # Device of the model; None: the rank's CUDA device, else CPU.
    device: str | None = None
    # transformers device_map (e.g. "auto" to split one model over several GPUs of one process).
    device_map: str | None = None
    # sdpa (default), eager, flash_attention_2 (needs the [gpu] extra); None picks sdpa / flash when available.
    attn_implementation: str | None = None
    # Never run code shipped with a checkpoint unless asked.
    trust_remote_code: bool = False
    # Tiles per vision-tower batch.
    tile_batch_size: int = 16
    # Overrides the task's max_new_tokens when set.
    max_new_tokens: int | None = None
    # Image files kept open (decoded) at once by the model, least recently used closed first.
    image_cache: int = 1
    # Options of the reducer (validated by the reducer).
    reducer_options: Mapping[str, Any] = field(default_factory=dict)
    # Folder of the crash-safe answer store (lrs_plugin.harness.resume); None: answers are not saved.
    resume_dir: str | None = None
    # False ignores resume_dir (neither reads nor writes the store).
    resume: bool = True
    # True: a resume_dir that cannot be created, read or written stops the run (ResumeStoreError); False: one
    # warning, the run goes on without saving (samples marked resume_disabled).
    resume_strict: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ConfigError("c2f_llava needs pretrained=<checkpoint folder or Hub id>")
        if not isinstance(self.reducer, str):
            raise ConfigError(f"reducer must be a name; got {self.reducer!r}")
        for name in ("trust_remote_code", "resume", "resume_strict"):
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
_HARNESS_KEYS = ("image_cache",)


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
