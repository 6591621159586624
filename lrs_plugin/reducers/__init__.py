"""Token reducers: every method the harness compares, behind one registry and one interface.

The interface is :mod:`.base`, the registry :mod:`.registry`; one module per method; shared stock-layout parts in
``_stock`` (plain vision tokens, the pre-LLM base), ``_tiles`` (tile limits), ``_prefill`` (in-LLM drops: the pruned
prefill and its decoding), ``_in_llm`` (the in-LLM base) and ``_cells`` (focus recall).
"""

from lrs_plugin._lazy import lazy_exports

_EXPORTS = {
    "ARCHS": "base",
    "STAGES": "base",
    "ImageInput": "base",
    "ReducerOutput": "base",
    "Reducer": "base",
    "borrow_image": "base",
    "ReducerSpec": "registry",
    "register_reducer": "registry",
    "available_reducers": "registry",
    "question_independent_reducers": "registry",
    "reducer_spec": "registry",
    "build_reducer": "registry",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
