"""Answer scoring of LRS-VQA and MME-RealWorld-RS.

The rules and summaries (:mod:`.rules`), text tables and answer-file scoring (:mod:`.reports`), reading answer
files (:mod:`.answer_files`) and the offline WordNet (:mod:`.wordnet`).
"""

from lrs_plugin._lazy import lazy_exports

_EXPORTS = {
    "SYNONYM_MODES": "rules",
    "MME_EXTRACTION_MODES": "rules",
    "LRS_SUBSETS": "rules",
    "ScoredAnswer": "rules",
    "lrs_is_correct": "rules",
    "subset_of": "rules",
    "category_accuracies": "rules",
    "average_accuracy": "rules",
    "overall_accuracy": "rules",
    "summarize_lrs": "rules",
    "mme_extract_choice": "rules",
    "mme_is_correct": "rules",
    "summarize_mme": "rules",
    "read_answer_records": "rules",
    "read_lrs_answers": "rules",
    "read_mme_answers": "rules",
    "format_lrs_table": "reports",
    "format_mme_table": "reports",
    "score_lrs_answers": "reports",
    "score_mme_answers": "reports",
    "score_lrs_file": "reports",
    "score_mme_file": "reports",
    "WORDNET_DIR_ENV": "wordnet",
    "DEBIAN_WORDNET_DIR": "wordnet",
    "LEXNAMES": "wordnet",
    "REQUIRED_FILES": "wordnet",
    "OPTIONAL_FILES": "wordnet",
    "lexnames_text": "wordnet",
    "build_corpus": "wordnet",
    "load_wordnet": "wordnet",
    "wordnet_available": "wordnet",
    "describe_wordnet": "wordnet",
    "clear_cache": "wordnet",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
