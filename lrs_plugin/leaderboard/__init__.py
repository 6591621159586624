"""``leaderboard.csv``.

Schema and validation (:mod:`.schema`), measured rows from results files (:mod:`.results`) and their model
arguments (:mod:`.model_args`), the paper's rows (:mod:`.paper`), rendering (:mod:`.render`) and locked submission
(:mod:`.submit`).
"""

from lrs_plugin._lazy import lazy_exports

_EXPORTS = {
    "COLUMNS": "submit",
    "COLUMN_NAMES": "submit",
    "KEY_COLUMNS": "submit",
    "LeaderboardError": "submit",
    "MAX_CELL_CHARS": "submit",
    "MAX_LINK_CHARS": "submit",
    "RenderReport": "submit",
    "add_cli": "submit",
    "build_row": "submit",
    "main": "submit",
    "paper_rows": "submit",
    "read_rows": "submit",
    "render": "submit",
    "run_cli": "submit",
    "seed": "submit",
    "submit": "submit",
    "validate_file": "submit",
    "validate_rows": "submit",
    "ACCURACY_COLUMNS": "schema",
    "LRS_SUBSET_COLUMNS": "schema",
    "MME_CATEGORIES": "schema",
    "SCORING_VALUES": "schema",
    "SOURCES": "schema",
    "Column": "schema",
    "category_column": "schema",
    "cell_limit": "schema",
    "describe_key": "schema",
    "format_cell": "schema",
    "parse_row": "schema",
    "row_key": "schema",
    "shown": "schema",
    "sort_rows": "schema",
    "LRS_TASKS": "results",
    "LRS_VQA_QUESTIONS": "results",
    "MME_TASKS": "results",
    "OUR_TASKS": "results",
    "PAPER_LINK": "paper",
    "normalize_name": "paper",
    "paper_rows_from_reference": "paper",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
