"""cmtlib.data.manifest: the contract checks name the rows, and '' stays unknown."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmtlib.data.manifest import (
    COLUMNS, ManifestError, check_manifest, format_boxes, label_array, parse_boxes, quarantine_path,
    read_manifest, read_quarantine, resolve_path, write_manifest, write_quarantine,
)


def _manifest(n: int = 4) -> pd.DataFrame:
    rows = []
    for i in range(n):
        row = {c: "" for c in COLUMNS}
        row.update(image_id=f"syn:{i}", path=f"images/{i}.png", patient_id=f"syn:p{i}", source="syn",
                   view="PA", label_healthy="1", label_covid="0", label_other="0", split="train")
        rows.append(row)
    return pd.DataFrame(rows)


def test_valid_manifest_has_no_problems():
    assert check_manifest(_manifest()) == []


def test_missing_column_named():
    problems = check_manifest(_manifest().drop(columns=["patient_id", "split"]))
    assert problems == ["manifest lacks column(s) patient_id, split; see DESIGN.md (Manifest)"]


def test_duplicate_image_id_names_both_rows():
    df = _manifest()
    df.loc[2, "image_id"] = "syn:0"
    assert check_manifest(df) == ["duplicate image_id at row 2 (syn:0), row 4 (syn:0)"]


def test_unknown_label_value_named_with_row():
    df = _manifest()
    df.loc[1, "label_covid"] = "yes"
    df.loc[3, "label_covid"] = "-1"
    (problem,) = check_manifest(df)
    assert problem == "label_covid has values ['-1', 'yes'] (allowed: 1, 0, empty) at row 3 (syn:1), row 5 (syn:3)"


def test_patient_in_two_splits_named():
    df = _manifest()
    df.loc[1, "patient_id"] = "syn:p0"
    df.loc[1, "split"] = "test"
    assert check_manifest(df) == ["patient syn:p0 is in splits ['test', 'train']: row 2 (syn:0), row 3 (syn:1)"]


def test_duplicate_group_in_two_splits_named():
    df = _manifest()
    df["duplicate_group"] = ["g1", "", "g1", ""]
    df.loc[2, "split"] = "val"
    assert check_manifest(df) == ["duplicate group g1 is in splits ['train', 'val']: row 2 (syn:0), row 4 (syn:2)"]


def test_bad_split_view_and_boxes_named():
    df = _manifest()
    df.loc[0, "split"] = "heldout"
    df.loc[1, "view"] = "L"
    df.loc[2, "lung_boxes"] = "[[1, 2, 3]]"
    problems = check_manifest(df)
    assert any(p.startswith("split has values ['heldout']") and "row 2 (syn:0)" in p for p in problems)
    assert any(p.startswith("view has values ['L']") and "row 3 (syn:1)" in p for p in problems)
    assert any(p.startswith("lung_boxes at row 4 (syn:2)") for p in problems)


def test_write_read_round_trip_keeps_empty_as_unknown(tmp_path):
    df = _manifest(3)
    df.loc[0, "label_covid"] = ""
    df.loc[1, "age"] = ""
    df["extra"] = ["a", "", "c"]
    path = write_manifest(df.drop(columns=["license"]), tmp_path / "m.csv")
    back = read_manifest(path)
    assert list(back.columns) == list(COLUMNS) + ["extra"]  # contract first, extras after
    assert back.loc[0, "label_covid"] == "" and back.loc[1, "age"] == "" and back.loc[1, "extra"] == ""
    assert (back["license"] == "").all()
    labels = label_array(back, "label_covid")
    assert math.isnan(labels[0]) and labels[1] == 0.0
    assert not list(tmp_path.glob(".m.csv*")), "temporary file left behind"


def test_boxes_parse_and_format():
    assert parse_boxes("") is None
    assert parse_boxes("[]") == []
    assert parse_boxes("[[1, 2, 3.5, 4]]") == [[1.0, 2.0, 3.5, 4.0]]
    with pytest.raises(ManifestError, match=r"\[x0, y0, x1, y1\]"):
        parse_boxes('{"x": 1}')
    assert format_boxes([[1.04, 2, 3, 4]]) == "[[1.0, 2.0, 3.0, 4.0]]"
    assert format_boxes(None) == ""


def test_paths_relative_to_manifest_folder(tmp_path):
    manifest = tmp_path / "sub" / "m.csv"
    assert resolve_path(manifest, "images/a.png") == (tmp_path / "sub" / "images" / "a.png").resolve()
    assert resolve_path(manifest, "/abs/b.png") == Path("/abs/b.png")
    assert quarantine_path(manifest) == tmp_path / "sub" / "m.quarantine.csv"


def test_quarantine_round_trip(tmp_path):
    path = write_quarantine([{"image_id": "a", "path": "x.png", "reason": "file is empty"}], tmp_path / "q.csv")
    back = read_quarantine(path)
    assert back.to_dict("records") == [{"image_id": "a", "path": "x.png", "reason": "file is empty"}]
    assert read_quarantine(tmp_path / "none.csv").columns.tolist() == ["image_id", "path", "reason"]
    assert np.array_equal(read_quarantine(write_quarantine([], tmp_path / "e.csv")).shape, (0, 3))
