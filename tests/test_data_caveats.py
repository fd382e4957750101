"""The 'what this data can and cannot show' sentences: each confounder is named with its numbers
when present and stays silent when absent."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cmtlib.metrics.ranking import roc_auc
from cmtlib.report.pages.data import data_caveats, mixed_source_auc


def cached_rows(n_pos=60, n_neg=120, neg_source="nih", neg_side=64, neg_view="PA", val_neg=40, test_pos=20) -> pd.DataFrame:
    """COVID-19 films from ieee8023 (AP, 2000 px); negatives from `neg_source` (all of them) and 10 from ieee8023."""
    rows = []
    for i in range(n_pos):
        rows.append({"label_covid": "1", "source": "ieee8023", "view": "AP", "orig_height": "2000", "orig_width": "1800",
                     "split": "test" if i < test_pos else "train"})
    for i in range(n_neg):
        own = i < 10
        rows.append({"label_covid": "0", "source": "ieee8023" if own else neg_source, "view": "AP" if own else neg_view,
                     "orig_height": "2000" if own else str(neg_side), "orig_width": "1800" if own else str(neg_side),
                     "split": "val" if i < val_neg else "train"})
    return pd.DataFrame(rows)


def test_confounded_collection_names_source_size_view_and_small_splits():
    lines = data_caveats(cached_rows(), quarantine_count=2)
    assert len(lines) == 6
    source, size, view, test, val, quarantine = lines
    assert "110 of 120 COVID-negative films come from collections with no COVID-19 film" in source
    assert "0 of 60 COVID-19 films" in source and "collections holding both: ieee8023" in source
    assert "median 2000 px" in size and "COVID-negative films 64 px" in size and "0% and 92% of them were thumbnails" in size
    assert "100% of COVID-19 films with a known view are AP" in view and "against 8% of COVID-negative films" in view
    assert test.startswith("Only 20 COVID-19 films are in the test split")
    assert val.startswith("The validation split holds 40 COVID-negative films")
    assert quarantine.startswith("2 file(s) could not be read")


def test_balanced_data_has_no_caveats():
    rows = cached_rows(n_pos=200, n_neg=400, neg_source="ieee8023", neg_side=2000, neg_view="AP", val_neg=150, test_pos=60)
    assert data_caveats(rows) == []
    # Unlabelled rows and a missing source or size column are not an error: those checks are skipped.
    assert data_caveats(rows.drop(columns=["source", "orig_height"]).assign(label_covid="")) == []


def test_mixed_source_auc_compares_within_the_collections_that_hold_both_classes():
    rng = np.random.default_rng(0)
    mixed = pd.DataFrame({"source": "ieee8023", "label_covid": [1] * 20 + [0] * 10, "p_covid": rng.random(30)})
    alone = pd.DataFrame({"source": "nih", "label_covid": 0, "p_covid": rng.random(50) * 0.1})
    pred = pd.concat([mixed, alone], ignore_index=True)
    text = mixed_source_auc(pred)
    within = roc_auc(mixed["label_covid"].to_numpy(), mixed["p_covid"].to_numpy())
    pooled = roc_auc(pred["label_covid"].to_numpy(), pred["p_covid"].to_numpy())
    assert f"(ieee8023: 30 films, 20 with COVID-19) the COVID-19 AUC is {within:.2f}, against {pooled:.2f} over all 80 test films" in text
    assert pooled > within + 0.2  # the single-class collection's low scores inflate the pooled AUC
    assert mixed_source_auc(mixed) == ""  # every collection holds both classes: nothing to compare
    assert mixed_source_auc(pd.concat([mixed.iloc[:24], alone])) == ""  # 4 negatives within: too few
