"""Leave-one-collection-out: the held-out films, and the films that share a patient or a duplicate
group with them, on a hand-made split manifest."""

import pandas as pd
import pytest

from cmtlib.data.holdout import apply_holdout, parse_filter
from cmtlib.data.manifest import check_manifest, empty_manifest
from cmtlib.errors import ConfigError


def _manifest() -> pd.DataFrame:
    rows = [  # image, patient, source, location, duplicate group, split
        ("a:1", "a:p1", "alpha", "Rome, Italy", "", "train"),
        ("a:2", "a:p1", "alpha", "Rome, Italy", "", "test"),
        ("a:3", "a:p2", "alpha", "Toronto, Canada", "g1", "train"),
        ("b:1", "b:p9", "beta", "", "g1", "val"),  # the same film as a:3 in another collection
        ("b:2", "b:p8", "beta", "", "", "train"),
        ("c:1", "a:p2", "gamma", "", "", "train"),  # a:3's patient under another collection: must not train
    ]
    df = empty_manifest().reindex(range(len(rows))).fillna("")
    for col, i in (("image_id", 0), ("patient_id", 1), ("source", 2), ("location", 3), ("duplicate_group", 4), ("split", 5)):
        df[col] = [r[i] for r in rows]
    df["path"] = [f"/x/{r[0].replace(':', '_')}.png" for r in rows]
    return df


def test_by_value_the_collection_goes_out_and_its_duplicates_and_patients_are_excluded():
    out, report = apply_holdout(_manifest(), ["source=ALPHA"])
    assert out["split"].tolist() == ["holdout", "holdout", "holdout", "excluded", "train", "excluded"]
    assert (report.held_out, report.excluded) == (3, 2) and "3 film(s)" in report.summary()
    # The manifest had a patient and a duplicate group across splits; after the holdout none is left
    # (excluded films are in no split), so the contract check passes.
    assert any("in splits" in p for p in check_manifest(_manifest())) and check_manifest(out) == []


def test_by_pattern_one_place_goes_out():
    out, _ = apply_holdout(_manifest(), ["location~italy|hungary"])
    assert out["split"].tolist() == ["holdout", "holdout", "train", "val", "train", "train"]


def test_conditions_joined_by_and_must_all_hold():
    # "the rest of collection alpha": alpha's films whose place is not Italy
    out, _ = apply_holdout(_manifest(), ["source=alpha & location~^(?!.*italy)"])
    assert out["split"].tolist() == ["train", "test", "holdout", "excluded", "train", "excluded"]


@pytest.mark.parametrize("bad, message", [
    (["country=Italy"], "column.*country.*which the manifest lacks"),
    (["source=delta"], "matches no film"),
    (["source=alpha & location~nowhere"], "matches no film"),
    (["location~(unclosed"], "not a regular expression"),
    (["source"], "write column=value or column~pattern"),
])
def test_bad_filters_say_what_to_write(bad, message):
    with pytest.raises(ConfigError, match=message):
        apply_holdout(_manifest(), bad)


def test_filters_parse_both_forms():
    assert parse_filter(" source = figure1 ") == parse_filter("source=figure1")
    assert parse_filter("location~a|b").regex and not parse_filter("source=x").regex


def test_a_holdout_adds_to_the_data_key_without_dropping_the_collection_it_is_cut_from(tmp_path):
    from cmtlib.configs import DataConfig
    from cmtlib.data.prepare import data_key

    plain = data_key(DataConfig(data_kind="auto", data_root=str(tmp_path)))
    held = data_key(DataConfig(data_kind="auto", data_root=str(tmp_path), holdout=["source=figure1"]))
    assert held["data_root"] == plain["data_root"] == str(tmp_path.resolve())
    assert held["holdout"] == ["source=figure1"] and "holdout" not in plain
    synthetic = data_key(DataConfig(data_kind="synthetic", data_root=str(tmp_path)))
    assert "data_root" not in synthetic  # phantoms do not depend on a folder
