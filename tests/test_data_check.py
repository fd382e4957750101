"""`cmt data check` catches in a finished manifest what issue 17's classes leave behind, naming the
rows, without reading image files: a label carried by a finding the vocabulary does not recognise,
and two copies of one picture (one duplicate group) with different labels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cmtlib.cli import main as cmt
from cmtlib.data.check import value_problems
from cmtlib.data.manifest import COLUMNS, write_manifest


def _row(image_id: str, finding: str, labels: tuple[str, str, str], group: str = "") -> dict:
    r = {c: "" for c in COLUMNS}
    # No file exists at these paths: the rules below read none.
    r.update(image_id=image_id, path=f"/nonexistent/{image_id}.png", patient_id=image_id, source="s", finding=finding,
             duplicate_group=group)
    r["label_healthy"], r["label_covid"], r["label_other"] = labels
    return r


def _manifest(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "m.csv"
    write_manifest(pd.DataFrame(rows), path)
    return path


def test_check_names_labels_that_no_recognised_text_gives(tmp_path, capsys):
    m = _manifest(tmp_path, [
        _row("s:ok", "No Finding", ("1", "0", "0")),
        _row("s:garbled", "No\u00c2\u00a0finding", ("1", "0", "0")),
        _row("s:new", "Bronchiolitis", ("0", "0", "1")),
        _row("s:pre2020", "Cardiomegally", ("", "0", "")),  # no label but the date's: fine
        _row("s:unknown", "???", ("", "", "")),
    ])
    assert cmt(["data", "check", str(m)]) == 1
    err = capsys.readouterr().err
    assert "finding: row 3 (s:garbled): finding 'No\u00c2\\xa0finding' is not in the finding vocabulary" in err
    assert "row 4 (s:new): finding 'Bronchiolitis'" in err and "carries labels 0/0/1" in err
    assert "s:pre2020" not in err and "s:unknown" not in err and "s:ok" not in err
    # The text the import was given with --finding is recognised when the check is given it too.
    m2 = _manifest(tmp_path, [_row("s:new", "Bronchiolitis", ("0", "0", "1"))])
    assert cmt(["data", "check", str(m2), "--finding", "Bronchiolitis=other"]) == 0


def test_check_names_a_duplicate_group_with_different_labels(tmp_path):
    rows = [_row("s:a64", "Effusion", ("0", "0", "1"), "s:a"), _row("s:a1024", "No Finding", ("1", "0", "0"), "s:a"),
            _row("s:b64", "Mass", ("0", "0", "1"), "s:b"), _row("s:b1024", "Mass", ("0", "0", "1"), "s:b"),
            # Figure1's COVID-00003a (blank finding) is ieee8023's figure1-...-98 (COVID-19): unknown contradicts nothing
            _row("s:c1", "", ("", "", ""), "s:c"), _row("s:c2", "COVID-19", ("0", "1", "0"), "s:c")]
    problems = value_problems(pd.DataFrame(rows), tmp_path / "m.csv")
    assert problems == ["labels: duplicate group s:a (one picture) has contradicting labels (healthy/covid/other) at "
                        "row 2 (s:a64: 0/0/1), row 3 (s:a1024: 1/0/0)"]


def test_the_data_page_lists_the_unrecognised_findings(tmp_path):
    """report/pages/data.py reads them from the import's notes (the texts that gave no label)."""
    from cmtlib.report.pages.data import data_facts, unrecognised_findings

    notes = pd.DataFrame([
        {"image_id": "nih:1", "column": "finding", "value": "Cardiomegally", "reason": "finding 'Cardiomegally' is not in the finding vocabulary: ..."},
        {"image_id": "nih:2", "column": "finding", "value": "Cardiomegally", "reason": "finding 'Cardiomegally' is not in the finding vocabulary: ..."},
        {"image_id": "toy:3", "column": "finding", "value": "Nofinding", "reason": "finding 'Nofinding' is not in the finding vocabulary: ..."},
        {"image_id": "nih:4", "column": "age", "value": "250", "reason": "age 250 is outside 0 to 120; left unknown"},
    ])
    table = unrecognised_findings(notes)
    assert table.to_dict("records") == [{"finding": "Cardiomegally", "films": 2, "sources": "nih"},
                                        {"finding": "Nofinding", "films": 1, "sources": "toy"}]
    assert unrecognised_findings(notes.iloc[3:]).columns.tolist() == ["finding", "films", "sources"]
    facts = data_facts(pd.DataFrame({"split": ["train"]}), pd.DataFrame(), "h", notes)
    assert facts["unrecognised_findings"] == {"Cardiomegally": 2, "Nofinding": 1}
