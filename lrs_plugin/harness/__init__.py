"""lmms-eval glue.

Running the real command (:mod:`.run`), the model settings (:mod:`.settings`), the per-sample record handed to the
tasks (:mod:`.record`) and its measured costs (:mod:`.costs`), the resume store and its keys (:mod:`.resume`), one
request as the model class reads it (:mod:`.requests`), budget sweeps (:mod:`.sweep`), the task hook
(:mod:`.task_hook`) and the entry point (:mod:`.registration`).
"""

from lrs_plugin._lazy import lazy_exports

_EXPORTS = {
    "tasks_dir": "run",
    "EvalRun": "run",
    "run_lmms_eval": "run",
    "offline_env": "run",
    "ModelSettings": "settings",
    "parse_model_args": "settings",
    "answer_settings": "settings",
    "changes_answer": "settings",
    "coerce_none": "settings",
    "SampleRecord": "record",
    "SampleRecordStore": "record",
    "STORE": "record",
    "STATS_METADATA_KEY": "record",
    "sample_key": "record",
    "StageClock": "costs",
    "PeakMemory": "costs",
    "RESUME_DISABLED_KEY": "resume",
    "RESUME_FORMAT": "resume",
    "ResumeStoreError": "resume",
    "StoredAnswer": "resume",
    "ResumeStore": "resume",
    "answer_key": "resume",
    "checkpoint_fingerprint": "resume",
    "record_checksum": "resume",
    "settings_fingerprint": "resume",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
