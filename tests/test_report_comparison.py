"""The comparison page (09_baselines): baselines trained beside CMTNet at a report's setting, Table IV,
the segmentation table, Figs. 5-8, the baselines' Grad-CAMs and notebook 09 itself."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from cmtlib.data.subset import subset_cache
from cmtlib.experiments import comparison as X
from cmtlib.experiments.baselines import baseline_params_files, setting_params
from cmtlib.params import ParamsError, load_params
from cmtlib.report.pages import comparison as C

REPO = Path(__file__).resolve().parents[1]
TINY = {"synth_n": 120, "synth_size": 64, "image_size": 64, "epochs": 1, "width": 0.125, "threads": 1,
        "report_baselines": ["vgg19", "unet", "maskrcnn"], "report_embedding_classifiers": ["svm_linear", "random_forest"],
        "baseline_image_size": 48, "baseline_epochs": 1, "baseline_maskrcnn_max_images": 20, "report_seeds": [0]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """CMTNet (64 px) plus VGG19, UNet, Mask R-CNN (20 films) and a CMTNet at the baselines' 48 px, on 120 phantoms: ~30 s."""
    root = tmp_path_factory.mktemp("comparison")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CMT_DATA_DIR", str(root / "data"))
        params = load_params(REPO / "params" / "smoke.yaml", TINY)
        comp = X.ensure_comparison(params, root / "run", root / "report")
        again = X.ensure_comparison(params, root / "run", root / "report")
    return params, comp, again, root


def test_every_method_is_trained_beside_cmtnet_at_the_baselines_setting(tiny):
    _, comp, _, root = tiny
    assert [(e.key, e.role) for e in comp.entries] == [
        ("cmtnet-run", "cmtnet"), ("cmtnet", "cmtnet"), ("vgg19", "classifier"), ("unet", "segmentation"),
        ("maskrcnn", "segmentation"), ("svm_linear", "embedding"), ("random_forest", "embedding")]
    run = {e.key: e for e in comp.entries}
    assert run["cmtnet-run"].setting == "64 px, 1 epoch, width 0.125"
    assert run["vgg19"].setting == run["cmtnet"].setting == run["unet"].setting == "48 px, 1 epoch, width 0.125"
    assert run["unet"].init.startswith("random") and "UNet" in run["unet"].init
    subset = Path(json.loads((run["maskrcnn"].folder / "run.json").read_text())["data_cache"])
    assert subset.name.endswith("-maskrcnn-20") and not (root / "report") in subset.parents  # no source file names in the report
    pool = json.loads((subset / "meta.json").read_text())["train_pool"]
    assert run["maskrcnn"].setting == f"48 px, 1 epoch, width 0.125, 20 training films (of {pool} with both outlines)"
    assert any(n.startswith("Mask R-CNN (ResNet18-FPN) learned from 20 training films") for n in comp.notes)
    # Same data folder and split: the baselines' cache is the run's phantoms at 48 px.
    caches = {k: json.loads((e.folder / "run.json").read_text())["data_cache"] for k, e in run.items() if e.role != "embedding" and k != "maskrcnn"}
    assert caches["vgg19"] == caches["unet"] == caches["cmtnet"] == caches["cmtnet-run"].replace("cache-64", "cache-48")
    tests = {k: sorted(e.predictions()["image_id"]) for k, e in run.items()}
    assert all(ids == tests["cmtnet-run"] for ids in tests.values())
    assert json.loads((root / "report" / "comparison" / "comparison.json").read_text())["seeds"] == [0]
    assert any("48-pixel images for 1 pass" in n for n in comp.notes) and any("One training seed" in n for n in comp.notes)


def test_a_second_call_reuses_every_run(tiny):
    _, comp, again, _ = tiny
    assert [e.folder for e in again.entries] == [e.folder for e in comp.entries]
    assert [e.seconds for e in again.entries] == [e.seconds for e in comp.entries]  # each keeps the time it took once
    assert comp.entries[0].seconds is None and all(e.seconds > 0 for e in comp.entries[1:]) and again.seconds < comp.seconds
    total = f"{sum(e.seconds for e in comp.entries[1:]):.0f} s in all"
    assert total in C.timing_caption(again) and C.timing_table(again)["method"].iloc[0] == "CMTNet (at the baselines' setting)"


def test_table_iv_rows_columns_and_intervals(tiny):
    _, comp, _, _ = tiny
    table = C.classification_table(comp)
    assert list(table["method"]) == ["VGG19 + FC", "CMTNet (at the baselines' setting)", "CMTNet embedding + SVM (linear)",
                                     "CMTNet embedding + random forest (RDF)", "CMTNet (this report's run)"]
    assert list(table.columns) == ["method", "trained at", "starting weights", *(n for _, n in C.CLASSIFICATION_COLUMNS)]
    for _, name in C.CLASSIFICATION_COLUMNS[1:]:  # AUC, EER and accuracy have an interval on any test split
        assert table[name].str.fullmatch(r"\d\.\d{3} \(95 % CI \d\.\d{3} to \d\.\d{3}\)").all(), name
    numbers = C.rows_frame(comp.select("cmtnet", "classifier", "embedding"))
    for col in ("covid_sens_at_spec99", "covid_auc", "covid_eer", "covid_accuracy"):
        assert {col, f"{col}_ci_low", f"{col}_ci_high"} <= set(numbers.columns)
    auc = numbers.set_index("name")["covid_auc"]
    assert auc["VGG19 + FC"] == pytest.approx(comp.entries[2].metrics()["covid"]["auc"])


def test_segmentation_table_has_dice_and_iou_with_intervals(tiny):
    _, comp, _, _ = tiny
    table = C.segmentation_table(comp).set_index("method")
    assert list(table.index) == ["UNet", "Mask R-CNN (ResNet18-FPN)", "CMTNet (at the baselines' setting)", "CMTNet (this report's run)"]
    assert [c for c in table.columns if "Dice" in c or "IoU" in c] == ["lung Dice", "lung IoU", "disease Dice", "disease IoU"]
    assert table["lung Dice"].str.contains(r"\(95 % CI ").all()
    unet = C.rows_frame([e for e in comp.entries if e.key == "unet"]).iloc[0]
    assert unet["lung_dice_ci_low"] <= unet["lung_dice"] <= unet["lung_dice_ci_high"] and np.isnan(unet["covid_auc"])


def test_figures_have_the_expected_panels(tiny):
    _, comp, _, _ = tiny
    seeds = C.seed_figure(comp)
    (ax,) = seeds.axes
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == list(C.classification_table(comp)["method"]) and len(ax.get_lines()) == 2 * 5  # a dot and a CI bar each
    roc = C.roc_comparison_figure(comp)
    assert [a.get_title() for a in roc.axes] == ["Deep networks", "Classifiers on CMTNet's embedding"]
    assert [len(a.get_legend().get_texts()) for a in roc.axes] == [2, 3]
    films = C.overlay_set(comp, n=4)
    assert len(films.image_ids) == 4 and list(films.predicted) == ["UNet", "Mask R-CNN (ResNet18-FPN)", "CMTNet (at the baselines' setting)",
                                                                   "CMTNet (this report's run)"]
    assert films.images.shape[1:] == films.predicted["UNet"]["lung"].shape[1:] == (64, 64)  # shown at the report run's size
    unet = next(e for e in comp.entries if e.key == "unet").predictions().set_index("image_id")
    np.testing.assert_allclose(films.dice["UNet"]["lung"], unet.loc[films.image_ids, "lung_dice"], rtol=1e-5)  # at UNet's 48 px
    fig = C.overlay_figure(films, "disease")
    assert len(fig.axes) == 4 * 5 and fig.axes[0].get_title().startswith(films.image_ids[0])
    assert "Dice" in fig.axes[1].get_title()


def test_baseline_gradcams_come_back_at_the_images_size(tiny):
    _, comp, _, _ = tiny
    images = (np.random.default_rng(0).random((2, 64, 64)) * 255).astype(np.uint8)
    maps = C.baseline_cams(comp, images)
    assert list(maps) == ["VGG19 + FC"]
    assert maps["VGG19 + FC"].shape == (2, 64, 64) and maps["VGG19 + FC"].dtype == np.float32
    assert 0 <= maps["VGG19 + FC"].min() and maps["VGG19 + FC"].max() <= 1


def test_setting_params_take_only_model_keys_from_a_baseline_file():
    run = load_params(REPO / "params" / "default.yaml", {"lr": 0.002})
    p = setting_params(run, "maskrcnn", REPO / "params" / "baselines" / "maskrcnn.yaml", image_size=64, epochs=1, seed=2,
                       overrides=["width=0.5", "maskrcnn:model=maskrcnn_resnet50", "unet:width=9"], run_dir="/tmp/x")
    assert (p.model.model, p.model.tasks, p.model.width) == ("maskrcnn_resnet50", ["lung", "disease"], 0.5)
    assert (p.data.image_size, p.train.epochs, p.train.seed, p.train.lr) == (64, 1, 2, 0.002)  # the file's epochs: 2 is not used
    assert p.data.synth_n == run.data.synth_n and p.train.run_dir == "/tmp/x"
    same = setting_params(run, "cmtnet")
    ignore = {"run_name": 0, "reports_dir": 0}  # the name is the method's; a relative reports_dir is made absolute
    assert same.flat() | ignore == run.flat() | ignore
    with pytest.raises(ParamsError, match="NAME:key=value"):
        setting_params(run, "unet", overrides=["unet:"])


def test_subset_cache_keeps_every_test_film(tiny, tmp_path):
    _, comp, _, _ = tiny
    from cmtlib.data.cache import open_cache

    full = json.loads((comp.entries[1].folder / "run.json").read_text())["data_cache"]
    out = subset_cache(full, tmp_path / "sub", max_train=20, seed=0)
    index, images, _, disease, meta = open_cache(out)
    whole, all_images, _, all_disease, _ = open_cache(full)
    counts = index["split"].value_counts()
    assert counts["train"] == 20 and counts["val"] == 5 and counts["test"] == (whole["split"] == "test").sum()
    rows = pd.Index(whole["image_id"]).get_indexer(index["image_id"])
    assert (images == all_images[rows]).all() and (disease == all_disease[rows]).all()
    assert list(index["cache_row"]) == [str(i) for i in range(len(index))] and meta["n"] == len(index)
    before = (out / "meta.json").stat().st_mtime_ns
    assert subset_cache(full, out, max_train=20, seed=0) == out and (out / "meta.json").stat().st_mtime_ns == before


def test_initialisation_in_words():
    assert X.init_words("ImageNet (torchvision resnet18, /x)") == "ImageNet"
    assert X.init_words("random init (ImageNet weights not found in /a, /b)") == "random (no ImageNet file on this machine)"
    assert "narrowed" in X.init_words("random init (encoder_weights=none)", "densenet121", 0.25)
    assert X.init_words("random init (encoder_weights=none)", "resnet18", 0.25) == "random (encoder_weights none)"


def _stand_in(folder: Path, sens: float, auc: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"covid": {"sens_at_spec99": sens, "auc": auc}}))
    pd.DataFrame({"image_id": ["a", "b", "c", "d"], "label_covid": [1, 0, 1, 0], "p_covid": [0.9, 0.2, auc, 0.5]}).to_csv(folder / "predictions.csv")
    return folder


def test_three_seeds_give_a_spread_per_model(tmp_path):
    entries = [X.Entry("cmtnet-run", "CMTNet", "cmtnet", _stand_in(tmp_path / "run", 0.8, 0.9), 0, "96 px", "random")]
    entries += [X.Entry("cmtnet", "CMTNet", "cmtnet", _stand_in(tmp_path / f"c{s}", 0.8 + s / 100, 0.9), s, "96 px", "random", primary=False)
                for s in (1, 2)]
    entries += [X.Entry("vgg19", "VGG19 + FC", "classifier", _stand_in(tmp_path / f"v{s}", 0.5 + s / 10, 0.8), s, "96 px", "random",
                        primary=s == 0) for s in (0, 1, 2)]
    entries += [X.Entry("svm_rbf", "SVM", "embedding", _stand_in(tmp_path / f"e{s}", 0.7 + s / 10, 0.8), s, "on", "none", primary=s == 0)
                for s in (0, 1, 2)]
    comp = X.Comparison(entries, [0, 1, 2])
    table = C.classification_table(comp)
    assert list(table["method"]) == ["VGG19 + FC", "SVM", "CMTNet"]
    assert list(table["sensitivity over seeds"]) == ["mean 0.600, SD 0.100 (3 seeds)", "mean 0.800, SD 0.100 (3 seeds)",
                                                     "mean 0.810, SD 0.010 (3 seeds)"]
    (ax,) = C.seed_figure(comp).axes
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [3, 3, 3]  # one dot per seed, no single-run bars
    assert "3 seeds" in C.seed_caption(comp) and "at least 3" in C.seed_caption(X.Comparison(entries[:1], [0]))


def test_notebook_09_is_thin_and_declares_exactly_the_injected_parameters():
    nb = nbformat.read(REPO / "notebooks" / "09_baselines.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    names = {n.targets[0].id for n in ast.parse(tagged[0].source).body}
    assert len(tagged) == 1 and names == {"params_file", "run_dir", "report_dir"}
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        assert cell.outputs == [] and cell.execution_count is None
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda)) for n in ast.walk(ast.parse(cell.source)))


def test_paper_protocol_keys_exist_for_params_paper():
    """What params/paper.yaml sets for the full protocol (three seeds, no reductions) loads."""
    keys = yaml.safe_load("report_seeds: [0, 1, 2]\nbaseline_image_size: 0\nbaseline_epochs: 0\n"
                          "baseline_maskrcnn_max_images: 0\nbaseline_overrides: [width=1.0, encoder_weights=imagenet]")
    p = load_params(REPO / "params" / "paper.yaml", keys)
    assert X.plan(p)[:2] == [("cmtnet", None, 1), ("cmtnet", None, 2)]
    assert len(X.plan(p)) == 2 + 3 * len(p.experiments.report_baselines)


def test_three_seeds_without_reduction_train_cmtnet_twice_more_and_reuse_the_run(tmp_path, monkeypatch):
    """params/paper.yaml's mechanism on tiny settings: no reduction, seeds 0-2; the report's run is seed 0."""
    monkeypatch.setenv("CMT_DATA_DIR", str(tmp_path / "data"))
    params = load_params(REPO / "params" / "smoke.yaml", {**TINY, "report_baselines": ["vgg19"], "report_embedding_classifiers": ["svm_linear"],
                                                          "baseline_image_size": 0, "baseline_epochs": 0, "report_seeds": [0, 1, 2]})
    comp = X.ensure_comparison(params, tmp_path / "run", tmp_path / "report")
    assert [(e.key, e.seed, e.primary) for e in comp.entries] == [
        ("cmtnet-run", 0, True), ("cmtnet", 1, False), ("cmtnet", 2, False), ("vgg19", 0, True), ("vgg19", 1, False), ("vgg19", 2, False),
        ("svm_linear", 0, True), ("svm_linear", 1, False), ("svm_linear", 2, False)]
    assert {e.label for e in comp.entries if e.role == "cmtnet"} == {"CMTNet"} and comp.notes[0].startswith("Every network, CMTNet included, learned from 64-pixel images for 1 pass")
    table = C.classification_table(comp)
    assert list(table["method"]) == ["VGG19 + FC", "CMTNet embedding + SVM (linear)", "CMTNet"]
    assert table["sensitivity over seeds"].str.endswith("(3 seeds)").all()
    sens = [e.metrics()["covid"]["sens_at_spec99"] for e in comp.entries if e.key == "vgg19"]
    assert table["sensitivity over seeds"][0] == f"mean {np.mean(sens):.3f}, SD {np.std(sens, ddof=1):.3f} (3 seeds)"
    assert (tmp_path / "report" / "comparison" / "embedding" / "seed2" / "svm_linear" / "metrics.json").is_file()
    assert "3 seeds" in C.seed_caption(comp)


def test_baselines_do_not_inherit_the_runs_lung_focus():
    run = load_params(REPO / "params" / "real.yaml")
    assert run.model.lung_focus
    files = {f.stem: f for f in baseline_params_files()}
    base = setting_params(run, "densenet121", files["densenet121"], image_size=64, epochs=1)
    assert base.model.model == "densenet121" and not base.model.lung_focus
    cmtnet = setting_params(run, "cmtnet", None, image_size=64, epochs=1)
    assert cmtnet.model.lung_focus  # CMTNet at the baselines' setting stays the run's CMTNet
