"""The shortcut audit of whole runs: tiny phantoms with a planted frame and cue twins, and a toy
collection without truth; shortcut_audit.json written through Run, kept, and read back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cmtlib.experiments import audit as AU
from cmtlib.explain.cue_twins import cue_twin_films
from cmtlib.explain import verdicts as V
from cmtlib.explain.verdicts import AUDIT_FORMAT, CUES
from cmtlib.run import Run
from conftest import REPO, smoke_run
from test_engine import one_thread, train_toy  # noqa: F401 (fixture)

pytest.importorskip("sklearn")
TINY = {"synth_n": 200, "synth_size": 64, "image_size": 64, "epochs": 1, "threads": 1, "synth_external_n": 0,
        "synth_border_strength": 0.8}


@pytest.fixture(scope="module")
def framed_run(tmp_path_factory):
    """A one-epoch CMTNet on 200 phantoms, a collimation frame on 90 % of COVID-19 films and 10 % of the others
    (source and view tied as by default), with cue twins (about 30 s)."""
    return smoke_run(tmp_path_factory.mktemp("audit"), TINY)


def test_cue_twins_of_a_phantom_run_differ_from_their_films_only_by_the_cue(framed_run):
    films = cue_twin_films(framed_run, "test")
    assert films is not None and set(films.index["cue"]) == {"source", "view", "border"}
    border = np.flatnonzero(films.index["cue"].to_numpy() == "border")
    assert len(border) > 0 and set(films.index["split"]) == {"test"}
    diff = np.abs(films.images[border].astype(int) - films.twins[border].astype(int))
    edge = np.zeros(diff.shape[1:], bool)
    edge[:4], edge[-4:], edge[:, :4], edge[:, -4:] = True, True, True, True
    assert diff[:, edge].sum() > 0 and diff[:, ~edge].max() <= 1  # the frame is at the edge; resizing may round a grey level
    test_ids = set(framed_run.predictions["image_id"])
    assert set(films.index["image_id"]) <= test_ids


def test_the_audit_is_written_through_run_and_kept(framed_run):
    audit = AU.audit_run(framed_run.path)
    stored = framed_run.shortcut_audit
    assert stored["audit_format"] == AUDIT_FORMAT and json.dumps(stored)  # plain JSON: NaN written as null
    assert set(stored) >= {"checks", "network_verdict", "data_verdict", "twins", "settings"}
    checks = stored["checks"]
    assert {s["kind"] for s in checks["swaps"]} == {"frame", "corners", "outside the lungs", "grey levels", "fine detail"}
    assert set(stored["network_verdict"]["cues"]) == set(CUES) and set(stored["data_verdict"]["cues"]) >= {"source", "view", "frame"}
    assert checks["n_test"] == len(framed_run.predictions) and 0 <= checks["model_auc"] <= 1
    assert set(stored["twins"]) == {"source", "view", "border"} and stored["twins"]["border"]["n"] > 0
    assert stored["data_verdict"]["cues"]["source"]["check"] == "metadata"
    stamp = framed_run.shortcut_audit_at
    again = AU.audit_run(framed_run.path)
    assert framed_run.shortcut_audit_at == stamp and again == audit  # reused, not measured again
    record = AU.analysis(framed_run.path)
    assert record["network"] == audit["network_verdict"]["named"] and record["twins"] == audit["twins"]


def test_new_thresholds_make_the_verdicts_again_from_the_kept_measurements(framed_run, monkeypatch):
    audit = AU.audit_run(framed_run.path)
    monkeypatch.setattr(AU, "measure", lambda *a, **k: pytest.fail("measured again although only a threshold changed"))
    monkeypatch.setattr(AU, "SETTINGS", {**audit["settings"], "net_effect": 0.0})
    monkeypatch.setattr(V, "NET_EFFECT", 0.0)  # every effect whose interval lies above 0 is named now
    again = AU.audit_run(framed_run.path)
    assert again["checks"] == audit["checks"] and again["settings"]["net_effect"] == 0.0
    assert set(again["network_verdict"]["named"]) >= set(audit["network_verdict"]["named"])
    assert framed_run.shortcut_audit["settings"]["net_effect"] == 0.0  # written through Run


def test_a_collection_without_truth_gets_the_twin_free_checks(tmp_path):
    run = Run(train_toy(tmp_path, epochs=1))
    from cmtlib.evaluate import evaluate_run

    evaluate_run(run.path)
    audit = AU.audit_run(run.path)
    assert audit["twins"] is None
    swaps = {s["kind"]: s for s in audit["checks"]["swaps"]}
    assert set(swaps) == {"frame", "corners", "outside the lungs", "grey levels", "fine detail"}
    assert all(s["n"] == audit["checks"]["n_test"] for s in swaps.values() if s["n"])
    assert isinstance(audit["network_verdict"]["words"], str) and audit["network_verdict"]["kind"] in ("ok", "warning")
    assert not math.isnan(audit["checks"]["blanking"]["n"])


def _tiny_phantoms(folder):
    """params/phantoms in miniature: clean.yaml on the smoke run (200 films, 64 px, one epoch), border.yaml planting a frame."""
    folder.mkdir()
    keys = "\n".join(f"{k}: {v}" for k, v in TINY.items() if k != "synth_border_strength")
    strengths = "\n".join(f"synth_{c}_strength: 0.0" for c in ("source", "view", "marker", "text", "size", "border", "tubes"))
    (folder / "clean.yaml").write_text(f"base: {REPO / 'params' / 'smoke.yaml'}\nrun_name: tiny-clean\n{keys}\n{strengths}\n")
    (folder / "border.yaml").write_text("base: clean.yaml\nrun_name: tiny-border\nsynth_border_strength: 0.8\n")
    return folder


def test_the_calibration_trains_audits_and_judges_each_run_on_the_study_engine(tmp_path, monkeypatch):
    from cmtlib.experiments.audit_calibration import calibrate, table_text

    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "data"))
    said = []
    record = calibrate(tmp_path / "study", _tiny_phantoms(tmp_path / "phantoms"), seeds=[0], clean_seeds=[0], kinds=["border"],
                       faint=None, jobs=1, say=said.append)
    runs = {(r["config"], r["seed"]): r for r in record["runs"]}
    assert set(runs) == {("clean", 0), ("border", 0)} and all(r["status"] == "ok" for r in runs.values())
    border = runs[("border", 0)]
    assert border["twins_films"] > 0 and border["outcome"] in ("hit", "miss", "false alarm", "correct silence",
                                                               "undecided (twins between thresholds)")
    assert border["data_names_cue"] == ("frame" in border["data"])
    assert runs[("clean", 0)]["twins_change"] is None and runs[("clean", 0)]["outcome"] in ("false alarm", "correct silence")
    assert (tmp_path / "study" / "audit_calibration.json").is_file() and (tmp_path / "study" / "runs" / "border-s0").is_dir()
    assert record["summary"]["data"]["runs"] == 1 and "power:" in table_text(record)
    stamp = (tmp_path / "study" / "runs" / "border-s0" / "checkpoints").stat().st_mtime_ns
    again = calibrate(tmp_path / "study", tmp_path / "phantoms", seeds=[0], clean_seeds=[0], kinds=["border"], faint=None, jobs=1,
                      say=said.append)
    assert [r | {"status": "ok"} for r in again["runs"]] == record["runs"]  # the runs and their audits reused
    assert {r["status"] for r in again["runs"]} == {"reused"}
    assert (tmp_path / "study" / "runs" / "border-s0" / "checkpoints").stat().st_mtime_ns == stamp


def test_the_faint_tier_trains_each_configuration_again_with_fainter_opacities_and_is_judged_by_its_kind(tmp_path):
    from cmtlib.errors import ConfigError
    from cmtlib.experiments.audit_calibration import command_text, configurations, judge, summarise

    folder = _tiny_phantoms(tmp_path / "phantoms")
    configs = dict(configurations(folder, ["border"], faint=0.4))
    assert list(configs) == ["clean", "border", "clean-faint", "border-faint"]
    assert [configs[n].data.synth_covid_opacity for n in configs] == [1.0, 1.0, 0.4, 0.4]
    assert configs["border-faint"].data.synth_border_strength == 0.8 and configs["clean-faint"].data.synth_border_strength == 0.0
    assert configs["border-faint"].flat()["run_name"] == "tiny-border-faint"
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="faint"):
            configurations(folder, ["border"], faint=bad)
    twins = {"border": {"mean_change": 0.3, "ci_low": 0.25, "ci_high": 0.35, "n": 40}}
    rows = [judge("border-faint", 0, {"network": ["frame"], "data": ["frame"], "twins": twins}),
            judge("clean-faint", 0, {"network": [], "data": [], "twins": None})]
    assert rows[0]["planted"] == "border" and rows[0]["faint"] and rows[0]["outcome"] == "hit"
    assert rows[1]["planted"] is None and rows[1]["outcome"] == "correct silence"
    s = summarise(rows)
    assert s["per_kind"]["border"]["hits"] == 1 and s["false_alarms"]["clean_runs"] == 1
    assert command_text([0, 1], [0, 1, 2], ["border"], None).endswith("--cues border --no-faint")
