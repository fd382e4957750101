"""Page 7's checks on tiny runs: with truth (phantoms: twins, lesions) and without (a toy cache)."""

from __future__ import annotations

import numpy as np
import pytest

from cmtlib.explain import checks as C
from cmtlib.explain.faithfulness import RANDOMISATION_BAR
from cmtlib.report.pages import explain as P
from cmtlib.run import Run
from conftest import smoke_run
from test_engine import one_thread, train_toy  # noqa: F401 (fixture)

TINY = {"synth_n": 200, "synth_size": 64, "image_size": 64, "epochs": 1, "threads": 1, "synth_external_n": 0}


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    """A one-epoch CMTNet on 200 phantoms with truth and twins (about 30 s)."""
    return smoke_run(tmp_path_factory.mktemp("checks"), TINY)


def test_a_phantom_run_is_checked_against_its_truth_and_the_result_is_kept(phantom_run):
    checks = C.run_checks(phantom_run)
    assert checks.truth and checks.films > 0
    rel = checks.reliance
    assert np.allclose(rel["drop"], rel["p_film"] - rel["p_twin"]) and len(rel) == checks.films
    maps = set(checks.maps["map"])
    assert {C.DEFAULT_LABEL, C.DISEASE} | {C.map_label(m, "last") for m in C.TODAY} == maps
    later = int((~rel["early"].astype(bool)).sum())
    assert len(checks.faithfulness) == min(C.ROAD_FILMS, later) and set(checks.faithfulness["map"]) == {C.DEFAULT_LABEL}
    assert len(checks.randomisation) == 6 and checks.randomisation["randomised"].iloc[-1].endswith("+ block 1")
    kept = phantom_run.explanations_dir / C.PAGE_FILE
    stamp = kept.stat().st_mtime_ns
    again = C.run_checks(phantom_run)  # read back, not measured again
    assert kept.stat().st_mtime_ns == stamp and np.allclose(again.faithfulness["gain"], checks.faithfulness["gain"])
    summary = again.summary(n_boot=50)
    assert summary["randomisation_passed"] == (checks.randomisation["median_spearman"].iloc[-1] < RANDOMISATION_BAR)
    lines = P.checks_verdicts(summary)
    assert lines[0].startswith("Removing only the lesion from a film") and "HiResCAM, blocks 3 and 4 fused" in lines[2]
    table = P.truth_table(summary["maps"])
    assert table["map"].iloc[0] == "HiResCAM, blocks 3 and 4 fused" and set(table["shows the lesion"]) <= {"yes", "no"}
    rel_table = P.reliance_table(summary["reliance"])
    median = summary["reliance"]["later"]["median"]
    assert rel_table["median drop of the COVID-19 probability (95 % CI)"].iloc[0].startswith(f"{median:.2f}")


def test_a_run_without_truth_gets_faithfulness_and_the_randomisation_check_only(tmp_path):
    run = Run(train_toy(tmp_path, epochs=1))
    checks = C.run_checks(run)
    assert not checks.truth and checks.reliance is None and checks.maps is None and checks.films == 0
    covid = int((run.predictions["label_covid"] == 1).sum()) if run.predictions is not None else None
    assert len(checks.faithfulness) > 0 and (covid is None or len(checks.faithfulness) <= max(covid, C.ROAD_FILMS))
    summary = checks.summary(n_boot=20)
    lines = P.checks_verdicts(summary)
    assert lines[0].startswith("The default map") and len(lines) == 2
