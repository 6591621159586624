r"""Local, format-true stand-ins for lmms-eval 0.7.3's own high-resolution tasks (generated pixels, never real data).

Each writer saves a ``datasets.DatasetDict`` to disk in the schema the built-in task's functions read, and
:func:`write_fixture_task` writes a task YAML under a new name (built-in names win silently) that ``include:``\\ s the
installed built-in YAML and overrides only where the data come from (``dataset_path`` + ``load_from_disk``). The
built-in ``doc_to_visual`` / ``doc_to_text`` / ``process_results`` / aggregations then run unmodified, so a run on
the fixture exercises exactly what a run on the real benchmark does, minus the download.

Schemas (from the installed task modules):

* ``vstar_bench`` (``lmms-lab-encoder/vstar-bench``, split ``test``): ``image`` (``Image()``), ``text`` (question
  with ``(A) ... (B) ...`` options), ``label`` (letter), ``category`` (``direct_attributes`` /
  ``relative_position``), ``question_id``.
* ``xlrs-lite`` (``initiacms/XLRS-Bench-lite``, split ``train``): ``image`` (a *list* of ``Image()``: change-detection
  questions hold two), ``question``, ``multi-choice options`` (``["(A) ...", ...]``), ``answer`` (letters),
  ``category`` (``"<category>/<sub-category>"`` from the task's ``TASK_PAIRs``), ``l2-category``, ``index``.
* ``hrbench4k`` / ``hrbench8k`` (``DreamMr/HR-Bench``, splits ``hrbench_4k`` / ``hrbench_8k``): ``index``,
  ``question``, ``answer`` (letter), ``category`` (``single`` / ``cross``), ``cycle_category``, ``A``-``D``, and
  ``image`` as a base64-encoded image string. Its ``process_results`` calls a GPT judge when the answer is not an
  option letter: tests point ``OPENAI_API_URL`` at a local stand-in.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BUILTIN_FIXTURES",
    "builtin_task_yaml",
    "write_fixture_task",
    "write_hrbench",
    "write_vstar",
    "write_xlrs_lite",
]

# (width, height) of the generated images: from under one 336-px tile to above C2F's 1,008-px base level.
_SIZES = [(1200, 900), (300, 320), (640, 1100), (1024, 1024), (500, 380), (900, 500)]


def _images(n: int, seed: int, sizes: list[tuple[int, int]] | None = None) -> list[Any]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (sizes or _SIZES)[i % len(sizes or _SIZES)]
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        pixels[y : y + h // 4, x : x + w // 4] = rng.integers(0, 256, size=3, dtype=np.uint8)  # one "object"
        out.append(Image.fromarray(pixels))
    return out


def _save(folder: Path, split: str, rows: dict[str, list], features: Any) -> Path:
    import datasets

    folder = Path(folder)
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(folder))
    return folder


def write_vstar(folder: str | Path, *, n: int = 6, seed: int = 0) -> Path:
    """V* Bench documents (``vstar_bench``); returns the saved dataset folder."""
    import datasets

    letters = "ABCD"
    rows: dict[str, list] = {"image": _images(n, seed), "text": [], "label": [], "category": [], "question_id": []}
    for i in range(n):
        category = ("direct_attributes", "relative_position")[i % 2]
        if category == "direct_attributes":
            rows["text"].append("What is the color of the car? (A) red (B) blue (C) white (D) black")
        else:
            rows["text"].append("Is the dog on the left or right side of the bench? (A) left (B) right")
        rows["label"].append(letters[i % (4 if category == "direct_attributes" else 2)])
        rows["category"].append(category)
        rows["question_id"].append(f"vstar_{i}")
    features = datasets.Features(
        image=datasets.Image(),
        text=datasets.Value("string"),
        label=datasets.Value("string"),
        category=datasets.Value("string"),
        question_id=datasets.Value("string"),
    )
    return _save(Path(folder), "test", rows, features)


XLRS_CATEGORIES = [
    ("Object properties/Object color", "Perception"),
    ("Counting/Overall counting", "Perception"),
    ("Land use classification/Overall Land use classification", "Perception"),
    ("Object spatial relationship/Object spatial relationship", "Perception"),
    ("Complex reasoning/Route planning", "Reasoning"),
]


def write_xlrs_lite(folder: str | Path, *, n: int = 6, seed: int = 0, with_change_detection: bool = True) -> Path:
    """XLRS-Bench-lite documents (``xlrs-lite``); the last one holds two images (change detection) when asked.

    Returns:
        The saved dataset folder.
    """
    import datasets

    images = _images(n + 1, seed)
    rows: dict[str, list] = {k: [] for k in ("index", "image", "question", "multi-choice options", "answer",
                                             "category", "l2-category")}  # fmt: skip
    for i in range(n):
        two = with_change_detection and i == n - 1
        category, l2 = ("Counting/Counting with changing detection", "Perception") if two else XLRS_CATEGORIES[i % 5]
        rows["index"].append(i)
        rows["image"].append([images[i], images[i + 1]] if two else [images[i]])
        rows["question"].append("How many ships are docked in the harbor?" if "Counting" in category else
                                "What is the color of the largest building?")  # fmt: skip
        rows["multi-choice options"].append(["(A) red", "(B) blue", "(C) 3", "(D) 5"])
        rows["answer"].append("A B" if category.startswith("Land use classification/Overall") else "ABCD"[i % 4])
        rows["category"].append(category)
        rows["l2-category"].append(l2)
    features = datasets.Features(
        {
            "index": datasets.Value("int64"),
            "image": datasets.Sequence(datasets.Image()),
            "question": datasets.Value("string"),
            "multi-choice options": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "category": datasets.Value("string"),
            "l2-category": datasets.Value("string"),
        }
    )
    return _save(Path(folder), "train", rows, features)


def write_hrbench(folder: str | Path, *, split: str = "hrbench_4k", n: int = 6, seed: int = 0) -> Path:
    """HR-Bench documents (``hrbench4k`` with ``split="hrbench_4k"``, ``hrbench8k`` with ``"hrbench_8k"``).

    Returns:
        The saved dataset folder.
    """
    import datasets

    rows: dict[str, list] = {k: [] for k in ("index", "image", "question", "answer", "category", "cycle_category",
                                             "A", "B", "C", "D")}  # fmt: skip
    for i, image in enumerate(_images(n, seed)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows["index"].append(i)
        rows["image"].append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        rows["question"].append("What is the color of the umbrella?")
        rows["answer"].append("ABCD"[i % 4])
        rows["category"].append(("single", "cross")[i % 2])
        rows["cycle_category"].append(f"cycle_{i // 2}")
        for letter, option in zip("ABCD", ("red", "blue", "green", "yellow"), strict=True):
            rows[letter].append(option)
    features = datasets.Features({k: datasets.Value("int64" if k == "index" else "string") for k in rows})
    return _save(Path(folder), split, rows, features)


#: fixture task -> (built-in task YAML relative to ``lmms_eval/tasks``, writer, keyword arguments of the writer)
BUILTIN_FIXTURES: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "vstar_bench": ("vstar_bench/vstar_bench.yaml", write_vstar, {}),
    "xlrs-lite": ("xlrs/XLRS-lite.yaml", write_xlrs_lite, {}),
    "hrbench4k": ("hrbench/hrbench4k.yaml", write_hrbench, {"split": "hrbench_4k"}),
    "hrbench8k": ("hrbench/hrbench8k.yaml", write_hrbench, {"split": "hrbench_8k"}),
}


def builtin_task_yaml(relative: str) -> Path:
    """Absolute path of an installed lmms-eval task YAML (e.g. ``"hrbench/hrbench4k.yaml"``)."""
    import lmms_eval.tasks

    path = Path(lmms_eval.tasks.__file__).parent / relative
    if not path.is_file():
        from lrs_plugin.errors import ConfigError

        raise ConfigError(f"lmms-eval has no task file {relative!r} (looked in {path.parent})")
    return path


def write_fixture_task(include_dir: str | Path, task: str, *, n: int = 6, seed: int = 0) -> str:
    """Generate the data of built-in ``task`` and a task YAML named ``fixture_<task>`` in ``include_dir``.

    Args:
        include_dir: The folder to pass to lmms-eval's ``--include_path``.
        task: A key of :data:`BUILTIN_FIXTURES`.
        n: Documents.
        seed: Pixel seed.

    Returns:
        The fixture task's name (``fixture_<task with - replaced by _>``).

    Raises:
        ConfigError: unknown ``task`` (the supported ones are listed).
    """
    if task not in BUILTIN_FIXTURES:
        from lrs_plugin.errors import ConfigError

        raise ConfigError(f"no fixture for task {task!r}; available: {', '.join(sorted(BUILTIN_FIXTURES))}")
    relative, writer, kwargs = BUILTIN_FIXTURES[task]
    include_dir = Path(include_dir)
    include_dir.mkdir(parents=True, exist_ok=True)
    name = f"fixture_{task.replace('-', '_')}"
    data = writer(include_dir / f"{name}_data", n=n, seed=seed, **kwargs)
    (include_dir / f"{name}.yaml").write_text(
        f"# Built-in lmms-eval task {task!r} on generated local data (lrs_plugin.data.synthetic.builtin_tasks).\n"
        f"include: {builtin_task_yaml(relative)}\n"
        f"task: {name}\n"
        f"dataset_path: {data}\n"
        "dataset_kwargs:\n"
        "  load_from_disk: true\n"
    )
    return name
