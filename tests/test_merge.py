"""`cmt data merge` (paths rebased, duplicate ids refused with their rows, findings joined),
`cmt data check`'s value rules (the importers' rules), the split's answer to one file listed with
two labels, and the csv kind's --const, --map templates and --allow-outside-root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cmtlib.cli import main as cmt
from cmtlib.data.collections import import_collection
from cmtlib.data.manifest import (
    COLUMNS, ManifestError, import_findings, notes_path, quarantine_path, read_manifest, resolve_path, write_manifest,
)
from cmtlib.data.merge import merge_manifests
from cmtlib.data.split import split_manifest


def _image(path: Path, seed: int, size: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def _row(image_id: str, path: str, patient: str, labels=("0", "1", "0"), **extra) -> dict:
    r = {c: "" for c in COLUMNS}
    r.update(image_id=image_id, path=path, patient_id=patient, source=image_id.split(":")[0])
    r["label_healthy"], r["label_covid"], r["label_other"] = labels
    r.update(extra)
    return r


def _manifest(path: Path, rows: list[dict]) -> Path:
    write_manifest(pd.DataFrame(rows), path)
    return path


def test_merge_rebases_relative_paths_and_joins_findings(tmp_path):
    _image(tmp_path / "a" / "img" / "1.png", 1)
    _image(tmp_path / "b" / "img" / "2.png", 2)
    a = _manifest(tmp_path / "a" / "a.csv", [_row("a:1", "img/1.png", "a:p1", lung_mask="img/1.png")])
    b = _manifest(tmp_path / "b" / "b.csv", [_row("b:2", "img/2.png", "b:p2", ("1", "0", "0"), extra_col="x")])
    pd.DataFrame([{"image_id": "a:gone", "path": "img/gone.png", "reason": "file not found"}]).to_csv(quarantine_path(a), index=False)
    pd.DataFrame([{"image_id": "b:2", "column": "age", "value": "250", "reason": "outside"}]).to_csv(notes_path(b), index=False)
    out = tmp_path / "a" / "merged" / "all.csv"
    report = merge_manifests([a, b], out)
    df = read_manifest(out)
    assert df["image_id"].tolist() == ["a:1", "b:2"]
    # below the output folder? no: both lie beside it, so they become absolute, and still resolve
    assert all(resolve_path(out, p).is_file() for p in df["path"])
    assert df.loc[0, "lung_mask"] == str((tmp_path / "a" / "img" / "1.png"))
    assert df.loc[1, "extra_col"] == "x" and df.loc[0, "extra_col"] == ""
    q, notes, not_imported = import_findings(out)
    assert q["image_id"].tolist() == ["a:gone"] and notes["image_id"].tolist() == ["b:2"] and not_imported.empty
    assert "2 rows from 2 manifest(s)" in report.summary()
    # an output above the images keeps them relative
    up = tmp_path / "all.csv"
    merge_manifests([a, b], up)
    assert read_manifest(up)["path"].tolist() == ["a/img/1.png", "b/img/2.png"]


def test_merge_refuses_duplicate_ids_naming_their_rows(tmp_path, capsys):
    a = _manifest(tmp_path / "a.csv", [_row("x:1", "/f1.png", "x:p"), _row("x:2", "/f2.png", "x:p")])
    b = _manifest(tmp_path / "b.csv", [_row("x:9", "/f9.png", "x:q"), _row("x:2", "/f3.png", "x:q")])
    with pytest.raises(ManifestError, match=r"x:2 at .*a.csv row 3, .*b.csv row 3"):
        merge_manifests([a, b], tmp_path / "c.csv")
    assert not (tmp_path / "c.csv").exists()
    assert cmt(["data", "merge", str(a), str(b), "--out", str(tmp_path / "c.csv")]) == 2
    assert "occur more than once" in capsys.readouterr().err
    with pytest.raises(ManifestError, match="given twice"):
        merge_manifests([a, a], tmp_path / "c.csv")


def test_check_reports_the_import_rules(tmp_path, capsys):
    img = _image(tmp_path / "i.png", 3, size=40)
    rows = [
        _row("s:ok", str(img), "s:1", lung_boxes="[[1, 1, 20, 30]]", age="40", offset_days="3"),
        _row("s:age", str(img.with_name("j.png")), "s:2", age="250"),
        _row("s:off", str(img.with_name("k.png")), "s:3", offset_days="1e9"),
        _row("s:inv", str(img.with_name("l.png")), "s:4", disease_boxes="[[30, 5, 10, 20]]"),
        _row("s:out", str(img), "s:5", ("1", "0", "0"), lung_boxes="[[0, 0, 400, 20]]"),
        _row("s:sick", str(img.with_name("m.png")), "s:6", ("1", "0", "0"), disease_boxes="[[1, 1, 5, 5]]"),
    ]
    m = _manifest(tmp_path / "m.csv", rows)
    assert cmt(["data", "check", str(m)]) == 1
    err = capsys.readouterr().err
    assert "age: row 3 (s:age)" in err and "offset_days: row 4 (s:off)" in err
    assert "disease_boxes: row 5 (s:inv): box [30, 5, 10, 20] is inverted" in err
    assert "lies outside the 40x40 px image" in err and "row 7 (s:sick): disease boxes on a film labelled healthy" in err
    assert "one file with different labels" in err and "row 2 (s:ok: 0/1/0)" in err and "row 6 (s:out: 1/0/0)" in err


def test_split_leaves_labels_unknown_for_one_file_with_two_labels(tmp_path):
    rows = [_row(f"s:{i}", str(_image(tmp_path / f"{i}.png", i)), f"s:p{i}", ("0", "0", "1")) for i in range(8)]
    rows.append(_row("s:again", str(tmp_path / "0.png"), "s:p9", ("1", "0", "0"), disease_boxes="[]"))
    m = _manifest(tmp_path / "m.csv", rows)
    split_manifest(m, tmp_path / "s.csv", find_duplicates=False, progress=False)
    df = read_manifest(tmp_path / "s.csv").set_index("image_id")
    assert df.loc[["s:0", "s:again"], ["label_healthy", "label_covid", "label_other", "disease_boxes"]].eq("").all().all()
    assert df.loc["s:0", "split"] == df.loc["s:again", "split"]  # one file, one split
    assert df.loc["s:1", "label_other"] == "1"
    notes = import_findings(tmp_path / "s.csv")[1]
    assert set(notes["image_id"]) == {"s:0", "s:again"} and notes["reason"].str.contains("listed with other labels").all()


def test_csv_kind_constants_templates_and_outside_root(tmp_path):
    for i in range(3):
        _image(tmp_path / "col" / "png" / f"id{i}.png", i)
    _image(tmp_path / "elsewhere.png", 9)
    _image(tmp_path / "absolute.png", 10)
    (tmp_path / "col" / "ids.csv").write_text("image_id,patient\nid0,p1\nid1,p1\nid2,\n,p4\n")
    (tmp_path / "col" / "files.csv").write_text("file\npng/id0.png\n../elsewhere.png\n" + f"{tmp_path / 'absolute.png'}\n")
    out = tmp_path / "m.csv"
    mapping = {"path": "png/{image_id}.png", "image_id": "image_id", "patient_id": "patient", "csv": "ids.csv"}
    import_collection("csv", tmp_path / "col", out, column_map=mapping, source="one", constants={"finding": "COVID-19"})
    df = read_manifest(out)
    assert df["image_id"].tolist() == ["one:id0", "one:id1", "one:id2"]
    assert (df["label_covid"] == "1").all() and (df["finding"] == "COVID-19").all()
    q = import_findings(out)[0]
    assert q["reason"].str.contains("needs image_id, blank on this line").tolist() == [True]
    with pytest.raises(ManifestError, match=r"\{nope\} name no column of your CSV; its columns are: image_id, patient"):
        import_collection("csv", tmp_path / "col", out, column_map={**mapping, "path": "png/{nope}.png"}, source="one",
                          constants={"finding": "COVID-19"})
    with pytest.raises(ManifestError, match="--const path"):
        import_collection("csv", tmp_path / "col", out, column_map=mapping, source="one", constants={"path": "x"})
    # a relative path leaving the CSV's folder is quarantined unless allowed; an absolute one is the user's choice
    files = {"path": "file", "csv": "files.csv"}
    import_collection("csv", tmp_path / "col", out, column_map=files, source="f", constants={"finding": "normal"})
    assert read_manifest(out)["path"].tolist() == [str(tmp_path / "col" / "png" / "id0.png"), str(tmp_path / "absolute.png")]
    assert import_findings(out)[0]["reason"].str.contains("leaves the collection's folder").tolist() == [True]
    assert cmt(["data", "import", "csv", str(tmp_path / "col" / "files.csv"), "--out", str(out), "--source", "f",
                "--map", "path=file", "--const", "finding=normal", "--allow-outside-root"]) == 0
    assert len(read_manifest(out)) == 3 and import_findings(out)[0].empty


def test_prepared_data_keeps_the_import_findings_beside_the_manifest_a_run_uses(tmp_path):
    """prepare.py: import -> source.csv (absolute paths) -> split manifest; the report reads the last."""
    from types import SimpleNamespace

    from cmtlib.data.prepare import _split_manifest

    for i in range(6):
        _image(tmp_path / "col" / f"{i}.png", 30 + i)
    (tmp_path / "col" / "labels.csv").write_text("file,dx,age\n" + "".join(f"{i}.png,COVID-19,{40 + i}\n" for i in range(5))
                                                 + "5.png,COVID-19,250\nmissing.png,normal,3\n")
    imported = tmp_path / "data" / "import" / "manifest.csv"
    import_collection("csv", tmp_path / "col" / "labels.csv", imported, column_map={"path": "file", "finding": "dx", "age": "age"},
                      source="c")
    data = SimpleNamespace(data_kind="auto", val_fraction=0.2, test_fraction=0.2, split_seed=0, holdout=[])
    manifest = _split_manifest(data, imported, tmp_path / "data")
    q, notes, _ = import_findings(manifest)
    assert q["image_id"].tolist() == ["c:missing"] and notes["image_id"].tolist() == ["c:5"]
