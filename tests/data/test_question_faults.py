"""Question rows whose ``image`` path leaves the data root are refused when the docs are built, naming file:line.

One rule (:func:`lrs_plugin.data._paths.require_inside_root`) serves every data module that joins a row's ``image``
to its root: LRS-VQA, MME-RealWorld-RS and the testbed's ``lrs_synth`` (which reads through LRS-VQA's reader).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lrs_plugin.data import lrs_vqa
from lrs_plugin.data import mme_realworld_rs as mme
from lrs_plugin.data._paths import outside_root_reason, require_inside_root
from lrs_plugin.errors import DatasetSchemaError, LrsPluginError

BAD_IMAGES = [
    pytest.param("../../../../etc/passwd", "it climbs out with '..'", id="dotdot-escape"),
    pytest.param("/etc/passwd", "it is absolute", id="absolute-posix"),
    pytest.param("LRS_VQA/image/../../../outside.png", "it climbs out with '..'", id="dotdot-in-the-middle"),
    pytest.param("..\\..\\outside.png", "it climbs out with '..'", id="dotdot-backslash"),
    pytest.param("C:\\images\\1.tif", "it starts with the drive or share 'C:'", id="windows-drive"),
    pytest.param("", "it is empty", id="empty"),
]


def _lines(path: Path, count: int) -> list[str]:
    """The first ``count`` non-blank lines of a real (generated) question / annotations file."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:count]


def _lrs_root_with_bad_row(tree: Path, root: Path, image: str) -> Path:
    """A dataset root whose question file holds three rows of the generated file, the third with ``image``."""
    rows = [json.loads(line) for line in _lines(tree / lrs_vqa.QUESTION_FILE, 3)]
    rows[2]["image"] = image
    target = root / lrs_vqa.QUESTION_FILE
    target.parent.mkdir(parents=True)
    target.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return target


# ----------------------------------------------------------------------------------------------- the shared rule
@pytest.mark.parametrize(("image", "reason"), BAD_IMAGES)
def test_outside_root_reason_names_why_a_path_leaves_the_root(image, reason):
    assert outside_root_reason(image) == reason


@pytest.mark.parametrize("image", ["LRS_VQA/image/1.tif", "images/ab12.png", "a/./b.png", "~/x.png", "x..y.png"])
def test_outside_root_reason_accepts_relative_paths_inside_the_root(image):
    assert outside_root_reason(image) is None
    assert require_inside_root(image, where="q.jsonl, line 1") == image


def test_require_inside_root_error_is_a_typed_schema_error_naming_where_field_and_value():
    with pytest.raises(DatasetSchemaError) as info:
        require_inside_root("../../../../etc/passwd", where="q.jsonl, line 7")
    assert isinstance(info.value, LrsPluginError) and isinstance(info.value, ValueError)
    assert str(info.value) == (
        "q.jsonl, line 7: field 'image' must be a relative path inside the dataset root, "
        "got '../../../../etc/passwd' (it climbs out with '..')"
    )


# ---------------------------------------------------------------------------------------------------- LRS-VQA
@pytest.mark.parametrize(("image", "reason"), BAD_IMAGES)
def test_lrs_vqa_build_docs_refuses_an_escaping_image_naming_file_line_and_value(lrs_vqa_tree, tmp_path, image, reason):
    question_file = _lrs_root_with_bad_row(lrs_vqa_tree, tmp_path, image)
    with pytest.raises(DatasetSchemaError) as info:
        lrs_vqa.build_docs(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{question_file}, line 3: field 'image' must be a relative path inside the dataset root")
    assert f"got {image!r} ({reason})" in message


def test_lrs_vqa_load_questions_and_check_images_refuse_the_passwd_row(lrs_vqa_tree, tmp_path):
    question_file = _lrs_root_with_bad_row(lrs_vqa_tree, tmp_path, "../../../../etc/passwd")
    for read in (lambda: lrs_vqa.load_questions(question_file), lambda: lrs_vqa.check_images(tmp_path)):
        with pytest.raises(DatasetSchemaError, match=r", line 3: field 'image' .*'\.\./\.\./\.\./\.\./etc/passwd'"):
            read()


def test_lrs_vqa_symlink_inside_the_root_pointing_outside_is_followed_not_refused(lrs_vqa_tree, tmp_path):
    elsewhere = tmp_path / "other_disk"
    shutil.copytree(lrs_vqa_tree / "LRS_VQA" / "image", elsewhere)
    root = tmp_path / "root"
    (root / "LRS_VQA").mkdir(parents=True)
    shutil.copy(lrs_vqa_tree / lrs_vqa.QUESTION_FILE, root / lrs_vqa.QUESTION_FILE)
    (root / "LRS_VQA" / "image").symlink_to(elsewhere, target_is_directory=True)
    docs = lrs_vqa.build_docs(root)
    assert docs and all(doc["image_path"].startswith(str(root.resolve())) for doc in docs)
    assert lrs_vqa.check_images(root) == []


# ------------------------------------------------------------------------------------------- MME-RealWorld-RS
@pytest.mark.parametrize(("image", "reason"), BAD_IMAGES)
def test_mme_rs_build_docs_refuses_an_escaping_image_naming_file_line_and_value(mme_rs_root, tmp_path, image, reason):
    rows = [json.loads(line) for line in _lines(mme_rs_root / mme.ANNOTATIONS_NAME, 3)]
    rows[2]["image"] = image
    annotations = tmp_path / mme.ANNOTATIONS_NAME
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(DatasetSchemaError) as info:
        mme.build_docs(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{annotations}:3: field 'image' must be a relative path inside the dataset root")
    assert f"got {image!r} ({reason})" in message


def test_mme_rs_null_image_is_still_a_recorded_failure_not_a_path_error(mme_rs_root, tmp_path):
    row = json.loads(_lines(mme_rs_root / mme.ANNOTATIONS_NAME, 1)[0]) | {"image": None, "image_error": "broken"}
    (tmp_path / mme.ANNOTATIONS_NAME).write_text(json.dumps(row) + "\n", encoding="utf-8")
    (doc,) = mme.build_docs(tmp_path)
    assert doc["image_path"] is None and doc["image_error"] == "broken"


# ------------------------------------------------------------------------------------------ testbed lrs_synth
def test_lrs_synth_process_docs_refuses_an_escaping_image_naming_file_line_and_value(tmp_path, monkeypatch):
    from lrs_plugin.tasks.lrs_synth import utils as synth
    from lrs_plugin.testbed.scenes import write_lrs_synth

    root = write_lrs_synth(tmp_path / "synth", num_scenes=1)
    question_file = root / lrs_vqa.QUESTION_FILE
    rows = [json.loads(line) for line in _lines(question_file, 4)]
    rows[1]["image"] = "../../../../etc/passwd"
    question_file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    monkeypatch.setenv(synth.ROOT_ENV, str(root))
    with pytest.raises(DatasetSchemaError) as info:
        synth.process_docs(None)
    assert str(info.value) == (
        f"{question_file.resolve()}, line 2: field 'image' must be a relative path inside the dataset root, "
        "got '../../../../etc/passwd' (it climbs out with '..')"
    )
