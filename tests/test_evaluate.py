"""Evaluation: predictions.csv / metrics.json / threshold.json with the contract's keys; the COVID
threshold comes from the validation split; missing outputs give null metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from cmtlib import cli
from cmtlib.cli import main
from cmtlib import evaluate as E
from cmtlib.evaluate import SPLIT_CHOICES, EvaluateError, evaluate_run, output_dir, predict_split
from cmtlib.metrics.operating import choose_thresholds
from cmtlib.predictions import META_COLUMNS, PRED_COLUMNS
from cmtlib.data.loader import load_split, open_cache_folder
from cmtlib.data.manifest import write_manifest
from cmtlib.metrics import threshold_at_specificity
from test_engine import one_thread, train_toy  # noqa: F401 (fixture)
from test_loader import toy_arrays, toy_rows, write_toy_cache


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    return train_toy(tmp_path_factory.mktemp("eval"), epochs=2)


@pytest.fixture(scope="module")
def evaluated(run):
    torch.set_num_threads(1)
    return evaluate_run(run, n_boot=20)


def test_files_and_contract_columns(run, evaluated):
    names = {p.name for p in run.iterdir()}
    assert {"predictions.csv", "predictions_val.csv", "metrics.json", "threshold.json", "embeddings.npy", "embeddings_index.csv"} <= names
    df = pd.read_csv(run / "predictions.csv", dtype={"label_covid": str}, keep_default_na=False)
    assert list(df.columns[: len(META_COLUMNS)]) == list(META_COLUMNS)
    assert set(PRED_COLUMNS) | {"split"} <= set(df.columns)
    assert len(df) == 8 and set(df["split"]) == {"test"}
    assert df["image_id"].tolist() == [f"toy:{i:04d}" for i in range(40) if i % 10 >= 8]
    p = df["p_covid"].astype(float)
    assert ((p >= 0) & (p <= 1)).all()
    # Per-image Dice: empty where the ground truth is empty (healthy and COVID-free disease masks).
    kinds = df["finding"].tolist()
    assert all((df["disease_dice"].iloc[i] == "") == (k != "covid") for i, k in enumerate(kinds))
    assert (df["lung_dice"] != "").all()
    emb = np.load(run / "embeddings.npy")
    index = pd.read_csv(run / "embeddings_index.csv")
    assert emb.shape[0] == 8 and emb.dtype == np.float32 and index["image_id"].tolist() == df["image_id"].tolist()


def test_training_scores_the_validation_films_once_and_evaluation_reuses_them(tmp_path, monkeypatch):
    """The validation pass that freezes the threshold at training writes predictions_val.csv and the
    paper's 99 % point; evaluation reads them and never loads the validation films again."""
    fresh = train_toy(tmp_path, epochs=1)
    written = {name: (fresh / name).read_bytes() for name in ("predictions_val.csv", "threshold.json")}
    asked = []
    real = E.load_split
    monkeypatch.setattr(E, "load_split", lambda cache, split, *a, **k: asked.append(split) or real(cache, split, *a, **k))
    metrics = evaluate_run(fresh, n_boot=0)
    assert asked == ["test"] and {name: (fresh / name).read_bytes() for name in written} == written
    record = json.loads(written["threshold.json"])
    assert metrics["covid"]["spec99_threshold"] == record["spec99_threshold"] and metrics["covid"]["threshold"] == record["covid_threshold"]
    info = json.loads((fresh / "run.json").read_text())
    assert info["threshold_rule"] == record["threshold_rule"] and "covid_threshold" not in info  # stored once: threshold.json


def test_threshold_comes_from_validation(run, evaluated):
    chosen = json.loads((run / "threshold.json").read_text())
    val = pd.read_csv(run / "predictions_val.csv", keep_default_na=False)
    assert set(val["split"]) == {"val"}
    op = threshold_at_specificity(val["label_covid"].astype(int).to_numpy(), val["p_covid"].astype(float).to_numpy(), 0.99)
    assert chosen["covid_threshold"] == op.threshold and chosen["chosen_on"] == "val" and chosen["n_negative"] == 4
    assert evaluated["covid"]["threshold"] == op.threshold
    df = pd.read_csv(run / "predictions.csv")
    assert (df["pred_covid"] == (df["p_covid"] >= op.threshold).astype(int)).all()
    assert (df["pred_healthy"] == (df["p_healthy"] >= 0.5).astype(int)).all()


def test_metrics_json_keys(run, evaluated):
    m = json.loads((run / "metrics.json").read_text())
    for key in ("auc", "eer", "sens_at_spec99", "sens_at_spec99_oracle", "threshold", "accuracy", "auc_ci_low", "auc_ci_high"):
        assert key in m["covid"]
    assert {"healthy", "other", "covid_as_unhealthy", "lung", "disease", "calibration", "by_view", "by_source"} <= set(m)
    assert set(m["by_view"]) == {"AP", "PA"} and set(m["by_source"]) == {"toy", "toy2"}
    assert 0.0 <= m["lung"]["dice"] <= 1.0 and m["evaluation"]["split"] == "test" and m["evaluation"]["epoch"] >= 1
    df = pd.read_csv(run / "predictions.csv")
    assert m["lung"]["dice"] == pytest.approx(df["lung_dice"].mean())


class NoLung(torch.nn.Module):
    """An ablation-like model: multilabel and disease only."""

    def forward(self, x):
        b, _, h, w = x.shape
        m = x[:, :1].mean(dim=(1, 2, 3))
        return {"disease": x[:, :1] * 4 - 2, "multilabel": torch.stack([m * 10 - 3, -m], 1), "embedding": x.mean(dim=(2, 3))}


def test_missing_outputs_leave_columns_empty(tmp_path):
    data = load_split(open_cache_folder(write_toy_cache(tmp_path / "c", n=20)), None)
    cols, emb = predict_split(NoLung(), data, 8)
    assert np.isnan(cols["p_healthy"]).all() and np.isnan(cols["lung_dice"]).all() and np.isnan(cols["lung_iou"]).all()
    assert not np.isnan(cols["p_covid"]).any() and emb.shape == (20, 3)
    known = ~np.isnan(cols["disease_dice"])
    assert known.sum() == 10  # the COVID images: the only non-empty disease masks


def test_choose_thresholds_without_negatives_gives_no_threshold():
    df = pd.DataFrame({"label_covid": ["1", "1", ""], "p_covid": [0.9, 0.8, 0.1]})
    chosen = choose_thresholds(df, "specificity:0.95")
    assert math.isnan(chosen["covid_threshold"]) and math.isnan(chosen["spec99_threshold"]) and "no COVID-negative" in chosen["note"]


def external_manifest(folder, splits):
    """A 12-image manifest of other toy images (ids ext:0..11) with the given split per row."""
    from PIL import Image

    rows = toy_rows(12, seed=3)
    images, _, _ = toy_arrays(rows, 80, seed=3)
    (folder / "images").mkdir(parents=True)
    for i, r in enumerate(rows):
        Image.fromarray(images[i]).save(folder / r["path"])
        r["image_id"], r["split"] = f"ext:{i}", splits[i]
    return write_manifest(pd.DataFrame(rows).drop(columns="kind"), folder / "external.csv")


def test_another_manifest_is_cached_into_the_run_and_evaluated(run, evaluated, tmp_path):
    manifest = external_manifest(tmp_path, ["test" if i < 8 else "" for i in range(12)])
    threshold = json.loads((run / "threshold.json").read_text())["covid_threshold"]
    out = tmp_path / "eval_out"
    m = evaluate_run(run, manifest=manifest, split="test", n_boot=0, out_dir=out)
    df = pd.read_csv(out / "predictions.csv")
    assert len(df) == 8 and df["image_id"].tolist() == [f"ext:{i}" for i in range(8)]
    assert m["covid"]["threshold"] == threshold  # the run's validation threshold, not re-chosen
    assert math.isnan(m["lung"]["dice"]) or m["lung"]["dice"] is None  # no lung masks in that manifest
    caches = list((run / "eval_cache").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("external-")
    with pytest.raises(EvaluateError, match="split='val'.*--split all"):
        evaluate_run(run, manifest=manifest, split="val", n_boot=0, out_dir=out)


OWN_FILES = ("predictions.csv", "predictions_val.csv", "metrics.json", "embeddings.npy", "embeddings_index.csv")


def test_cli_external_manifest_without_test_rows_is_a_user_error(run, evaluated, tmp_path, capsys):
    manifest = external_manifest(tmp_path, [""] * 12)
    own = {name: (run / name).read_bytes() for name in OWN_FILES}
    assert main(["evaluate", str(run), "--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("cmt: error: no rows with split='test' in manifest")
    assert "pass --split all to evaluate every row of an external manifest" in err
    assert {name: (run / name).read_bytes() for name in OWN_FILES} == own


def test_cli_external_manifest_writes_beside_the_run_not_over_it(run, evaluated, tmp_path, capsys):
    manifest = external_manifest(tmp_path / "m", [""] * 12)
    own = {name: (run / name).read_bytes() for name in OWN_FILES}
    assert main(["evaluate", str(run), "--manifest", str(manifest), "--split", "all"]) == 0
    default = run / "external" / "external"
    assert f"into {default}" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in OWN_FILES} == own  # the run's own results stay
    df = pd.read_csv(default / "predictions.csv")
    assert df["image_id"].tolist() == [f"ext:{i}" for i in range(12)]
    m = json.loads((default / "metrics.json").read_text())
    assert m["evaluation"]["split"] == "all" and m["evaluation"]["out_dir"] == str(default)
    assert np.load(default / "embeddings.npy").shape[0] == 12

    out = tmp_path / "chosen"
    assert main(["evaluate", str(run), "--manifest", str(manifest), "--split", "all", "--out", str(out)]) == 0
    assert f"into {out}" in capsys.readouterr().out
    assert pd.read_csv(out / "predictions.csv")["image_id"].tolist() == df["image_id"].tolist()
    assert {name: (run / name).read_bytes() for name in OWN_FILES} == own


def test_own_data_is_still_written_into_the_run(run, evaluated, tmp_path):
    assert output_dir(run) == run and output_dir(run, out_dir=tmp_path) == tmp_path
    assert output_dir(run, manifest=tmp_path / "site_b.csv") == run / "external" / "site_b"
    assert evaluated["evaluation"]["out_dir"] == str(run)


def test_evaluate_help_documents_split_and_out(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{train,val,test,holdout,all}" in text and "fixed when the run was trained" in text and "--out DIR" in text and "RUN/external/<manifest stem>/" in text
    assert cli.SPLIT_CHOICES == SPLIT_CHOICES
    with pytest.raises(SystemExit):
        main(["evaluate", "runs/x", "--split", "tset"])
