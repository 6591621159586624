"""Paired comparison of two runs of the same task (``lrs-plugin compare A B [--low-res RUN] [--json]``).

Both runs answered the same questions, so they are compared question by question (paired on the question id, over
the questions both answered) rather than by their means:

* **accuracy** of each run and ``delta`` = B - A, in percentage points;
* ``ci95``: the 95 % interval of ``delta`` from a paired bootstrap over *image clusters* (all the questions of an
  image are drawn together, as they are not independent: LRS-VQA has ~6 per image), fixed seed, percentile method;
* ``p_value``: McNemar's test on the discordant questions (``b`` = right only in A, ``c`` = right only in B): the
  exact two-sided binomial ``min(1, 2 P(X <= min(b, c)))``, ``X ~ Bin(b + c, 1/2)``, when ``b + c < 25``, else the
  continuity-corrected chi-square ``(|b - c| - 1)^2 / (b + c)`` with one degree of freedom (questions as independent);
* ``agreement``: share of questions both runs got right or both got wrong (EffiVLM-Bench's "loyalty" when A is the
  unpruned model); ``same_answer``: share with the same answer text (stripped, lower-cased);
* ``by_category``: n, both accuracies, delta and agreement per category;
* ``resolution_sensitive`` (with ``--low-res RUN``, VTC-Bench's split): A is the full-resolution reference; the
  questions A gets right and the low-resolution run gets wrong, vs the rest, with A's and B's accuracy on each.

All shares are percentages (0-100); everything is a pure function of the outcomes (:mod:`.runs` reads them).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from lrs_plugin.errors import ConfigError, RunMismatchError
from lrs_plugin.scoring.runs import RunSamples, SampleOutcome, load_run

__all__ = [
    "EXACT_BELOW",
    "clustered_se",
    "compare_outcomes",
    "compare_runs",
    "format_comparison",
    "mcnemar",
    "paired_bootstrap_ci",
]

#: McNemar's test is the exact binomial one when fewer discordant questions than this, else the chi-square one.
EXACT_BELOW = 25


def _pct(flags: Sequence[bool]) -> float | None:
    return 100.0 * sum(flags) / len(flags) if flags else None


def clustered_se(scores: Sequence[float], clusters: Sequence[Hashable]) -> float | None:
    """Standard error of the mean score with clusters, lmms-eval 0.7.3's ``clustered_stderr`` formula.

    ``sqrt(var/n + (1/n^2) sum_c sum_{i != j in c} (s_i - m)(s_j - m))`` (Miller 2024, Eq. 4), ``var`` with
    ``n - 1``; the term under the root is clipped at 0. ``None`` for fewer than two scores.
    """
    n = len(scores)
    if n < 2:
        return None
    if len(clusters) != n:
        raise ConfigError(f"{n} scores but {len(clusters)} cluster ids")
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / (n - 1)
    groups: dict[Hashable, list[float]] = defaultdict(list)
    for score, cluster in zip(scores, clusters, strict=True):
        groups[cluster].append(score - mean)
    cross = sum(sum(d) ** 2 - sum(x * x for x in d) for d in groups.values()) / (n * n)
    return math.sqrt(max(0.0, var / n + cross))


def mcnemar(b: int, c: int) -> tuple[float, str]:
    """McNemar's two-sided p-value for ``b`` and ``c`` discordant pairs, and the method used (module doc).

    Returns:
        ``(p, "exact")`` when ``b + c <`` :data:`EXACT_BELOW`, else ``(p, "chi2_cc")``; ``(1.0, "exact")`` when
        ``b + c == 0``.
    """
    if b < 0 or c < 0:
        raise ConfigError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n < EXACT_BELOW:
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
        return min(1.0, 2 * tail / 2**n), "exact"
    chi2 = (abs(b - c) - 1) ** 2 / n
    return math.erfc(math.sqrt(chi2 / 2)), "chi2_cc"


def paired_bootstrap_ci(
    a: Sequence[bool],
    b: Sequence[bool],
    clusters: Sequence[Hashable],
    *,
    iters: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``acc(b) - acc(a)`` (percentage points) from a bootstrap over clusters.

    Each replicate draws as many clusters as there are, with replacement, and pools their questions.

    Args:
        a: Per-question correctness of run A.
        b: Of run B, same order.
        clusters: Cluster id per question (e.g. the image).
        iters: Bootstrap replicates.
        seed: Seed of ``numpy.random.default_rng``.
        level: Coverage of the interval.
    """
    import numpy as np

    if not (len(a) == len(b) == len(clusters)) or not a:
        raise ConfigError(f"need equally long, non-empty inputs; got {len(a)}, {len(b)}, {len(clusters)}")
    if iters < 1 or not 0 < level < 1:
        raise ConfigError(f"iters={iters} must be >= 1 and level={level} in (0, 1)")
    ids: dict[Hashable, int] = {}
    index = np.array([ids.setdefault(c, len(ids)) for c in clusters])
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    sums = np.bincount(index, weights=diff, minlength=len(ids))
    counts = np.bincount(index, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    deltas = np.empty(iters)
    step = max(1, 2_000_000 // len(ids))  # replicates per chunk: bounded memory for large cluster counts
    for start in range(0, iters, step):
        draw = rng.integers(0, len(ids), size=(min(step, iters - start), len(ids)))
        deltas[start : start + len(draw)] = 100.0 * sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    tail = 100.0 * (1 - level) / 2
    lo, hi = np.percentile(deltas, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _norm(text: str) -> str:
    return text.strip().lower()


def _differs(x: SampleOutcome, y: SampleOutcome) -> bool:
    return x.target is not None and y.target is not None and x.target != y.target


def _split(a: Sequence[SampleOutcome], b: Sequence[SampleOutcome]) -> dict[str, Any]:
    return {
        "n": len(a),
        "a_acc": _pct([x.correct for x in a]),
        "b_acc": _pct([x.correct for x in b]),
    }


def compare_outcomes(
    task: str,
    a: Mapping[str, SampleOutcome],
    b: Mapping[str, SampleOutcome],
    *,
    names: tuple[str, str] = ("A", "B"),
    low_res: Mapping[str, SampleOutcome] | None = None,
    iters: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison of one task (module doc), in the JSON shape of ``lrs-plugin compare --json``.

    Args:
        task: Task name (reported).
        a: Run A's outcomes by question key.
        b: Run B's.
        names: Display names of A and B.
        low_res: A low-resolution run's outcomes, for ``resolution_sensitive``.
        iters: Bootstrap replicates.
        seed: Bootstrap seed.

    Returns:
        ``{"task", "n", "a": {"name", "acc"}, "b": {"name", "acc"}, "agreement", "same_answer", "delta",
        "ci95": [lo, hi], "p_value", "by_category": {category: {"n", "a_acc", "b_acc", "delta", "agreement"}},
        "resolution_sensitive": {"n", "a_acc", "b_acc", "rest": {"n", "a_acc", "b_acc"}} | None}`` (percent),
        plus, under ``"_detail"``, what the table prints (discordant counts, test, clusters, unpaired questions);
        :func:`compare_runs` removes it for ``--json``.

    Raises:
        RunMismatchError: No question in common (or none shared with the low-resolution run), or a shared question
            id whose target differs (runs on different data).
    """
    keys = sorted(a.keys() & b.keys())
    if low_res is not None:
        keys = [k for k in keys if k in low_res]
    if not keys:
        what = f"{names[0]} and {names[1]}" + (" and the low-resolution run" if low_res is not None else "")
        raise RunMismatchError(f"{task}: {what} answered no question in common; were they run on the same data?")
    for other, label in ((b, names[1]), (low_res, "the low-resolution run")):
        if other is not None and (k := next((k for k in keys if _differs(a[k], other[k])), None)) is not None:
            raise RunMismatchError(
                f"{task}: question {k!r} has target {a[k].target!r} in {names[0]} but {other[k].target!r} in "
                f"{label}: the runs were not made on the same questions"
            )
    pa, pb = [a[k] for k in keys], [b[k] for k in keys]
    flags_a, flags_b = [x.correct for x in pa], [x.correct for x in pb]
    only_a = sum(x and not y for x, y in zip(flags_a, flags_b, strict=True))
    only_b = sum(y and not x for x, y in zip(flags_a, flags_b, strict=True))
    p_value, method = mcnemar(only_a, only_b)
    acc_a, acc_b = _pct(flags_a), _pct(flags_b)
    clusters = [x.cluster for x in pa]
    by_category: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, outcome in enumerate(pa):
        if outcome.category is not None:
            groups[outcome.category].append(i)
    for category in sorted(groups):
        idx = groups[category]
        block = _split([pa[i] for i in idx], [pb[i] for i in idx])
        block["delta"] = block["b_acc"] - block["a_acc"]
        block["agreement"] = _pct([flags_a[i] == flags_b[i] for i in idx])
        by_category[category] = block
    sensitive = None
    if low_res is not None:
        hit = [i for i, k in enumerate(keys) if flags_a[i] and not low_res[k].correct]
        rest = sorted(set(range(len(keys))) - set(hit))
        sensitive = _split([pa[i] for i in hit], [pb[i] for i in hit])
        sensitive["rest"] = _split([pa[i] for i in rest], [pb[i] for i in rest])
    return {
        "task": task,
        "n": len(keys),
        "a": {"name": names[0], "acc": acc_a},
        "b": {"name": names[1], "acc": acc_b},
        "agreement": _pct([x == y for x, y in zip(flags_a, flags_b, strict=True)]),
        "same_answer": _pct([_norm(x.prediction) == _norm(y.prediction) for x, y in zip(pa, pb, strict=True)]),
        "delta": acc_b - acc_a,
        "ci95": list(paired_bootstrap_ci(flags_a, flags_b, clusters, iters=iters, seed=seed)),
        "p_value": p_value,
        "by_category": by_category,
        "resolution_sensitive": sensitive,
        "_detail": {
            "only_a": only_a,
            "only_b": only_b,
            "test": method,
            "clusters": len(set(clusters)),
            "a_se": clustered_se([float(f) for f in flags_a], clusters),
            "b_se": clustered_se([float(f) for f in flags_b], clusters),
            "unpaired_a": len(a.keys() - set(keys)),
            "unpaired_b": len(b.keys() - set(keys)),
            "iters": iters,
            "seed": seed,
        },
    }


def _task_list(run: RunSamples) -> str:
    return ", ".join(sorted(run.tasks)) or "none"


def compare_runs(
    a: str | RunSamples,
    b: str | RunSamples,
    *,
    low_res: str | RunSamples | None = None,
    iters: int = 2000,
    seed: int = 0,
    detail: bool = False,
) -> list[dict[str, Any]]:
    """Compare every task two runs share (see :func:`compare_outcomes`), in task order.

    Args:
        a: Run A (a path :func:`~lrs_plugin.scoring.runs.load_run` reads, or a loaded run).
        b: Run B.
        low_res: Optional low-resolution run (must hold every compared task).
        iters: Bootstrap replicates.
        seed: Bootstrap seed.
        detail: Keep each result's ``"_detail"`` (for :func:`format_comparison`).

    Raises:
        RunMismatchError: The runs share no task, the low-resolution run lacks one, or no question is shared.
        RunNotFoundError, ScoringInputError: A run cannot be read.
    """
    runs = [r if isinstance(r, RunSamples) or r is None else load_run(r) for r in (a, b, low_res)]
    run_a, run_b, run_low = runs
    tasks = sorted(run_a.tasks.keys() & run_b.tasks.keys())
    if not tasks:
        raise RunMismatchError(
            f"runs {run_a.name!r} (tasks: {_task_list(run_a)}) and {run_b.name!r} (tasks: {_task_list(run_b)}) "
            "share no task: compare needs two runs of the same task"
        )
    if run_low is not None and (missing := [t for t in tasks if t not in run_low.tasks]):
        raise RunMismatchError(
            f"low-resolution run {run_low.name!r} (tasks: {_task_list(run_low)}) lacks {', '.join(missing)}, "
            f"compared in {run_a.name!r} and {run_b.name!r}"
        )
    out = []
    for task in tasks:
        result = compare_outcomes(
            task,
            run_a.tasks[task],
            run_b.tasks[task],
            names=(run_a.name, run_b.name),
            low_res=None if run_low is None else run_low.tasks[task],
            iters=iters,
            seed=seed,
        )
        if not detail:
            result.pop("_detail")
        out.append(result)
    return out


def _f(value: float | None, width: int = 6) -> str:
    return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"


def format_comparison(result: Mapping[str, Any], low_res_name: str | None = None) -> str:
    """A text block for one task (needs the ``"_detail"`` of :func:`compare_outcomes`)."""
    d = result["_detail"]
    a, b = result["a"], result["b"]
    lo, hi = result["ci95"]
    lines = [
        f"{result['task']}: {result['n']} questions paired over {d['clusters']} images",
        f"  A {a['name']}: accuracy {a['acc']:.2f} % (image-clustered SE {_f(d['a_se'] and 100 * d['a_se'], 0)})",
        f"  B {b['name']}: accuracy {b['acc']:.2f} % (image-clustered SE {_f(d['b_se'] and 100 * d['b_se'], 0)})",
        f"  delta B - A: {result['delta']:+.2f} points, 95 % CI [{lo:+.2f}, {hi:+.2f}] (paired bootstrap over images, "
        f"{d['iters']} draws, seed {d['seed']})",
        f"  McNemar p = {result['p_value']:.4g} ({d['test']}; right only in A: {d['only_a']}, "
        f"only in B: {d['only_b']})",
        f"  agreement (same correctness) {result['agreement']:.2f} %, same answer {result['same_answer']:.2f} %",
    ]
    if d["unpaired_a"] or d["unpaired_b"]:
        lines.append(f"  not paired: {d['unpaired_a']} question(s) only in A, {d['unpaired_b']} only in B")
    if result["by_category"]:
        lines.append(f"  {'category':<24}{'n':>5}  {'A':>6}  {'B':>6}  {'delta':>7}  {'agree':>6}")
        for category, c in result["by_category"].items():
            lines.append(
                f"  {category:<24}{c['n']:>5}  {_f(c['a_acc'])}  {_f(c['b_acc'])}  {c['delta']:+7.2f}  "
                f"{_f(c['agreement'])}"
            )
    s = result["resolution_sensitive"]
    if s is not None:
        who = f" (low resolution: {low_res_name})" if low_res_name else ""
        lines.append(
            f"  resolution-sensitive (A right, low-res wrong){who}: n={s['n']}, A {_f(s['a_acc'], 0)} %, "
            f"B {_f(s['b_acc'], 0)} %; rest: n={s['rest']['n']}, A {_f(s['rest']['a_acc'], 0)} %, "
            f"B {_f(s['rest']['b_acc'], 0)} %"
        )
    return "\n".join(lines)
