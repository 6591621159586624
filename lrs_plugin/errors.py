"""Typed errors raised by lrs-plugin.

Every error names the bad value and, where there is a finite set, the valid choices. One class per failure kind,
so callers (and tests) can catch exactly what they expect.
"""

from __future__ import annotations

__all__ = [
    "CheckpointLayoutError",
    "CheckpointNotFoundError",
    "OutputExistsError",
    "LrsPluginError",
    "ConfigError",
    "DatasetNotFoundError",
    "DatasetIntegrityError",
    "DatasetSchemaError",
    "ArchivePartError",
    "ArchiveCorruptError",
    "UnsafeArchiveError",
    "ImageReadError",
    "ImageTooLargeError",
    "MultipleImagesError",
    "WordNetUnavailableError",
    "SampleRecordError",
    "ScoringInputError",
    "RunNotFoundError",
    "RunMismatchError",
    "MissingDependencyError",
    "EvaluationFailedError",
]


class LrsPluginError(Exception):
    """Base class of every error raised on purpose by lrs-plugin."""


class ConfigError(LrsPluginError, ValueError):
    """A setting (model argument, CLI flag, config field) has a value outside its valid range or choices."""


class DatasetNotFoundError(LrsPluginError, FileNotFoundError):
    """A dataset is neither extracted, nor fetchable with the given options. The message says how to get it."""


class DatasetIntegrityError(LrsPluginError):
    """A dataset is present but incomplete or inconsistent (e.g. images referenced by questions are missing)."""


class DatasetSchemaError(LrsPluginError, ValueError):
    """A row of a dataset file is malformed: the message names the file, the line and the offending field."""


class ArchivePartError(LrsPluginError):
    """A volume of a multi-part archive is missing, extra, truncated or has the wrong hash (named in the message)."""


class ArchiveCorruptError(LrsPluginError):
    """An archive failed to extract (CRC or stream error) although every part passed the checks we could make."""


class UnsafeArchiveError(LrsPluginError):
    """An archive member's path would land outside the extraction folder (absolute path, ``..``, or a link)."""


class ImageReadError(LrsPluginError, OSError):
    """An image file is missing, truncated or not decodable. The message names the path."""


class ImageTooLargeError(ImageReadError):
    """An image's header claims more pixels than the reader's limit (names the size, the pixel count and the limit)."""


class MultipleImagesError(ImageReadError):
    """A request holds more images than the method answers about (names the count)."""


class WordNetUnavailableError(LrsPluginError, LookupError):
    """The WordNet synonym rule was requested but no WordNet 3.0 database could be found. Says how to get one."""


class ScoringInputError(LrsPluginError, ValueError):
    """An answers / samples file given to the scorer is malformed (names the file, line and field)."""


class RunNotFoundError(LrsPluginError, FileNotFoundError):
    """A run given to ``compare`` / ``sweep`` has no results or sample logs where it was pointed (names the path)."""


class RunMismatchError(LrsPluginError, ValueError):
    """Runs given to ``compare`` cannot be paired: no task or no question in common (names both runs and tasks)."""


class MissingDependencyError(LrsPluginError, ImportError):
    """An optional dependency is not installed; the message shows the ``pip install`` line."""


class EvaluationFailedError(LrsPluginError, RuntimeError):
    """An lmms-eval run produced no results file (lmms-eval 0.7.3 exits 0 even when it fails; the log tail says why)."""


class CheckpointLayoutError(ConfigError):
    """A checkpoint to convert holds a key the converter does not know, or misses one it needs (the key is named)."""


class CheckpointNotFoundError(LrsPluginError, FileNotFoundError):
    """``pretrained`` names a local path that does not exist, is not a folder, or holds no ``config.json``."""


class OutputExistsError(LrsPluginError, FileExistsError):
    """An output folder exists and overwriting was not asked for."""


class SampleRecordError(LrsPluginError, ValueError):
    """A per-sample record (or its JSON object) holds a value that does not fit its field; the message names both."""
