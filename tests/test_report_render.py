"""Rendering pieces: tables, figures, page helpers, the nbconvert page, the index pages."""

from __future__ import annotations

import base64
import json
import re

import nbformat
import numpy as np
import pandas as pd
import pytest

from cmtlib import plotting
from cmtlib.report.chain.render import PageRenderer, RenderError, check_self_contained, external_refs, notebook_heading
from cmtlib.report.pages import data as data_summary
from cmtlib.report.pages import figures, tables
from cmtlib.report.pages import show as page
from cmtlib.report.pages import training as training_summary


def manifest(rows):
    cols = ["image_id", "patient_id", "source", "view", "split", "label_healthy", "label_covid", "label_other", "license"]
    return pd.DataFrame(rows, columns=cols)


@pytest.fixture
def small():
    return manifest([
        ["s:1", "p1", "ieee8023", "AP", "train", "0", "1", "0", "CC BY 4.0"],
        ["s:2", "p1", "ieee8023", "AP", "train", "0", "1", "0", "CC BY 4.0"],
        ["s:3", "p2", "nih", "PA", "test", "1", "0", "0", ""],
        ["s:4", "p3", "nih", "PA", "val", "0", "0", "1", ""],
        ["s:5", "p4", "nih", "", "test", "", "", "", ""],
    ])


# ---- tables -----------------------------------------------------------------------------------

def test_class_label_and_counts_table(small):
    assert tables.class_label(small).tolist() == ["COVID-19", "COVID-19", "healthy", "other disease", "(unknown)"]
    t = tables.counts_table(small, "class")
    assert list(t.columns) == ["train", "val", "test", "total"]
    assert list(t.index) == ["COVID-19", "healthy", "other disease", "(unknown)", "total"]
    assert t.loc["COVID-19"].tolist() == [2, 0, 0, 2]
    assert t.loc["total"].tolist() == [2, 1, 2, 5]
    v = tables.counts_table(small, "view")
    assert list(v.index) == ["AP", "PA", "(unknown)", "total"] and v.loc["PA", "total"] == 2
    with pytest.raises(KeyError, match="needs column 'sex'"):
        tables.counts_table(small, "sex")


def test_licence_and_quarantine_tables_hide_paths(small):
    lic = tables.licence_table(small)
    assert lic.set_index("licence")["images"].to_dict() == {"(not given)": 3, "CC BY 4.0": 2}
    assert lic.set_index("licence").loc["(not given)", "share"] == "60.0 %"
    q = pd.DataFrame({"image_id": ["nih:1", "nih:1"], "path": ["/data/nih/00000001_000.png"] * 2,
                      "reason": ["cannot read /data/nih/00000001_000.png (truncated)"] * 2})
    out = tables.quarantine_table(q)
    assert list(out.columns) == ["image_id", "reason"] and len(out) == 1
    assert out.loc[0, "reason"] == "cannot read <file> (truncated)"
    assert tables.redact_paths("file covid-123.jpeg is RGBA, expected 8/16-bit") == "file <file> is RGBA, expected 8/16-bit"
    safe = tables.safe_table(pd.DataFrame({"image_id": ["a"], "path": ["/x.png"], "lung_mask": ["m.png"], "note": ["see C:\\d\\x.dcm"]}))
    assert list(safe.columns) == ["image_id", "note"] and safe.loc[0, "note"] == "see <file>"


def test_headline_and_ci_text():
    metrics = {"covid": {"auc": 0.95312, "auc_ci_low": 0.9, "auc_ci_high": 0.99, "eer": 0.08, "sens_at_spec99": None},
               "lung": {"dice": 0.91, "dice_ci_low": None, "dice_ci_high": None}}
    h = tables.headline_table(metrics).set_index("key")
    assert h.loc["covid.auc", "text"] == "0.953 (95 % CI 0.900 to 0.990)"
    assert h.loc["covid.sens_at_spec99", "text"] == "not available"
    assert h.loc["lung.dice", "text"] == "0.910"
    assert tables.ci_text(float("nan")) == "not available"
    from cmtlib.report.chain.index import headline_cards

    cards = {c["metric"]: c for c in headline_cards(metrics)}
    assert cards["Equal error rate"]["value_text"] == "8.0 %"
    assert "fewer than 100 non-COVID" in cards["Sensitivity at 99 % specificity"]["ci_text"]


def test_params_table_and_epoch_times():
    owner = {"epochs": "train", "width": "model", "run_name": "report"}
    t = tables.params_table({"epochs": 3, "width": 0.25, "run_name": "", "tasks": ["lung", "disease"]}, owner)
    assert t.values.tolist()[0] == ["", "tasks", "lung, disease"]
    assert t.set_index("parameter").loc["run_name", "value"] == "(default)"
    assert tables.params_table({"epochs": 3, "width": 0.25, "run_name": ""}, owner, sections=("model",))["parameter"].tolist() == ["width"]
    times = tables.epoch_times(pd.DataFrame({"epoch": [1, 2], "seconds": [10.04, 12.0]}))
    assert times.values.tolist() == [[1, 10.0], [2, 12.0]]
    assert tables.epoch_times(pd.DataFrame({"epoch": [1]})).empty


# ---- figures ----------------------------------------------------------------------------------

def test_counts_figure_has_one_panel_per_column_stacked_by_split(small):
    fig = figures.counts_figure(small, ("source", "view", "class"))
    axes = fig.get_axes()
    assert len(axes) == 3
    assert [ax.get_title() for ax in axes] == ["by source", "by view", "by class"]
    # source panel: 2 sources x 3 splits = 6 bars; their widths sum to 5 images
    bars = axes[0].patches
    assert len(bars) == 6 and sum(b.get_width() for b in bars) == 5
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["train", "val", "test"]


def test_sample_grid_draws_outlines_and_titles():
    images = np.zeros((3, 16, 16), np.uint8)
    lung = np.zeros((3, 16, 16), np.uint8)
    lung[:, 4:12, 4:12] = 1
    disease = np.zeros_like(lung)
    disease[0, 6:9, 6:9] = 1
    fig = figures.sample_grid(images, lung, disease, ["a:1\nCOVID-19", "a:2\nhealthy", "a:3\nhealthy"], ncols=2)
    axes = fig.get_axes()
    assert len(axes) == 4  # 2 x 2 grid, the last empty
    assert [ax.get_title() for ax in axes[:3]] == ["a:1\nCOVID-19", "a:2\nhealthy", "a:3\nhealthy"]
    assert len(axes[0].images) == 2 and len(axes[1].images) == 1  # the disease shade only where there is disease
    assert not axes[3].images


ENGINE_HISTORY = pd.DataFrame({
    "epoch": [1, 2, 3], "seconds": [5.0, 5.1, 5.2], "images_per_s": [50.0, 51.0, 52.0], "lr": [1e-3] * 3,
    "train_loss": [3.0, 2.0, 1.5], "train_lung": [0.7, 0.5, 0.4], "train_covid": [0.6, 0.4, 0.3],
    "val_loss": [3.1, 2.2, 1.9], "val_lung": [0.8, 0.6, 0.5], "val_covid": [0.7, 0.5, 0.45],
    "val_covid_auc": [0.6, 0.8, 0.9], "val_lung_dice": [0.5, 0.7, 0.8],
})


def test_history_terms_accept_several_namings():
    t = figures.history_terms(list(ENGINE_HISTORY.columns))
    assert t["loss"] == {"total": {"train": "train_loss", "val": "val_loss"}, "lung": {"train": "train_lung", "val": "val_lung"},
                         "covid": {"train": "train_covid", "val": "val_covid"}}
    assert t["metric"] == {"covid_auc": {"val": "val_covid_auc"}, "lung_dice": {"val": "val_lung_dice"}}
    other = figures.history_terms(["train/loss/lung", "val/loss/lung", "loss_disease_val", "epoch", "lr"])
    assert other["loss"] == {"lung": {"train": "train/loss/lung", "val": "val/loss/lung"}, "disease": {"val": "loss_disease_val"}}


def test_curves_figure_one_panel_per_term_with_train_and_val_lines():
    fig = figures.curves_figure(ENGINE_HISTORY, "loss")
    shown = [ax for ax in fig.get_axes() if ax.axison]
    assert [ax.get_title() for ax in shown] == ["all tasks together", "COVID-19", "lung outline"]
    assert all(len(ax.get_lines()) == 2 for ax in shown)
    np.testing.assert_allclose(shown[2].get_lines()[1].get_ydata(), [0.8, 0.6, 0.5])
    metrics = figures.curves_figure(ENGINE_HISTORY, "metric")
    shown = [ax for ax in metrics.get_axes() if ax.axison]
    assert [ax.get_title() for ax in shown] == ["COVID-19 AUC", "lung Dice"]
    assert shown[0].get_ylim() == (0, 1.02)  # bounded scores on their whole scale
    assert figures.curves_figure(ENGINE_HISTORY[["epoch", "lr"]], "loss") is None


# ---- page helpers -----------------------------------------------------------------------------

def test_page_html_builders_escape_and_embed():
    assert page.heading_html("A < B", 3) == "<h3>A &lt; B</h3>"
    assert page.caption_html("read me") == '<p class="cmt-caption">read me</p>'
    assert 'cmt-notice-todo' in page.not_implemented_html("the CAM page") and "Not implemented yet: the CAM page" in page.not_implemented_html("the CAM page")
    with pytest.raises(ValueError, match="notice kind"):
        page.notice_html("x", "loud")
    assert "No quarantine." in page.table_html(pd.DataFrame(), empty="No quarantine.")
    long = page.table_html(pd.DataFrame({"n": range(5)}), max_rows=2)
    assert long.count("<tr") == 3 and "and 3 more rows (of 5)" in long
    fig, axes = plotting.new_figure()
    axes[0, 0].plot([0, 1])
    markup = page.figure_html(fig, "A line, going up.")
    src = re.search(r'src="data:image/png;base64,([^"]+)"', markup).group(1)
    assert base64.b64decode(src)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'alt="A line, going up."' in markup and "<figcaption>" in markup
    assert "No data for this figure." in page.figure_html(None)
    assert page.heading("no kernel here") is None  # outside IPython: shows nothing, returns None


# ---- self-contained HTML ----------------------------------------------------------------------

def test_external_refs_finds_every_remote_or_file_resource():
    html = ('<script src="https://cdn.x/require.js"></script><link rel="stylesheet" href="//fonts.x/css">'
            '<img src="figure.png"><img src="data:image/png;base64,AAAA"><a href="https://arxiv.org/abs/2008.03205">paper</a>'
            '<style>body{background:url(http://x/bg.png)} @import "https://x/y.css";</style>')
    refs = external_refs(html)
    assert any("require.js" in r for r in refs) and any("fonts.x" in r for r in refs) and any("figure.png" in r for r in refs)
    assert any("bg.png" in r for r in refs) and any("y.css" in r for r in refs)
    assert not any("arxiv" in r or "data:" in r for r in refs)
    with pytest.raises(RenderError, match="page.html is not self-contained"):
        check_self_contained('<p>x</p><script>alert(1)</script>', "page.html")


def test_page_renderer_hides_code_and_prompts(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# Data\n\nWhat the data are.\n\nMore text."))
    png = base64.b64encode(page.figure_png(plotting.new_figure()[0])).decode()
    cell = nbformat.v4.new_code_cell("CODE_MARKER = 42\nCODE_MARKER", execution_count=3)
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
                    nbformat.v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=3)]
    nb.cells.append(cell)
    path = tmp_path / "01_data.ipynb"
    nbformat.write(nb, path)
    assert notebook_heading(nb) == ("Data", "What the data are.")
    html = PageRenderer().render(path, tmp_path / "01_data.html", run_name="smoke", seconds=1.5).read_text()
    assert "CODE_MARKER" not in html and "In [" not in html and "Out[" not in html and "<script" not in html.lower()
    assert f"data:image/png;base64,{png[:40]}" in html
    assert "<title>Data</title>" in html and "run <strong>smoke</strong>" in html and "1.5 s" in html
    assert external_refs(html) == []


# ---- data and training summaries ---------------------------------------------------------------

def test_sample_rows_cover_every_class_first(small):
    idx = small.assign(cache_row=range(5), has_lung=[1, 0, 1, 1, 0])
    rows = data_summary.sample_rows(idx, 4, seed=0)
    assert len(rows) == 4 and len(set(rows)) == 4
    assert sorted(tables.class_label(idx.set_index("cache_row").loc[rows]).tolist()) == ["(unknown)", "COVID-19", "healthy", "other disease"]
    assert data_summary.sample_rows(idx, 4, seed=0) == rows  # the page is the same every run
    assert rows[0] == 0  # COVID-19 first, the image with a lung mask before the one without
    assert data_summary.grid_titles(idx, [2]) == ["s:3\nhealthy"]


def test_check_results_and_duplicates(small):
    ok = data_summary.check_results(small.assign(**{c: "" for c in ("path", "sex", "age", "offset_days", "finding", "lung_mask", "disease_mask", "lung_boxes", "disease_boxes")}))
    assert ok["result"].tolist()[0] == "passed"
    leak = small.copy()
    leak.loc[1, "split"] = "test"  # patient p1 in train and test
    leak = leak.assign(**{c: "" for c in ("path", "sex", "age", "offset_days", "finding", "lung_mask", "disease_mask", "lung_boxes", "disease_boxes")})
    assert data_summary.check_results(leak)["result"].tolist()[0] == "FAILED: 1 patient(s) in two splits"
    dup = data_summary.duplicate_summary(small.assign(duplicate_group=["g1", "g1", "", "g2", ""]),
                                         pd.DataFrame({"group": ["g1"], "path": ["/a.png"], "image_id": ["s:1"]}))
    assert dup["groups"] == 1 and list(dup["evidence"].columns) == ["group", "image_id"]
    assert data_summary.duplicate_summary(small, None, "synthetic")["empty"].startswith("No duplicate search")


def test_weights_text_and_run_facts():
    from cmtlib.run import RunInfo

    assert "random weights" in training_summary.weights_text(RunInfo(encoder_weights_source="random init (encoder_weights=none)"))
    assert "(encoder_weights=none)" in training_summary.weights_text(RunInfo(encoder_weights_source="random init (encoder_weights=none)"))
    assert "ImageNet-pretrained" in training_summary.weights_text(RunInfo(encoder_weights_source="ImageNet (torchvision vgg16_bn, /x.pth)"))
    assert training_summary.weights_text(RunInfo()).startswith("Not recorded")
    facts = dict(training_summary.run_facts(RunInfo(device="cpu (2 threads)", precision="fp32", status="finished"), ENGINE_HISTORY))
    assert facts["device"] == "cpu (2 threads)" and facts["numeric precision"] == "32-bit floating point"
    assert facts["epochs run"] == 3 and facts["time per epoch"].startswith("5.1 s on average")
    assert "epoch 3" in training_summary.best_epoch_text(ENGINE_HISTORY, "val_loss")
    assert "epoch 3" in training_summary.best_epoch_text(ENGINE_HISTORY, "val_covid_auc")


# ---- index pages ------------------------------------------------------------------------------

def test_report_index_shows_headline_facts_and_no_image_paths(tmp_path):
    from cmtlib.params import dump_params, load_params
    from cmtlib.report.chain.index import write_report_index, write_reports_index
    from cmtlib.report.pages.common import record_facts

    report = tmp_path / "reports" / "smoke"
    (report / "run").mkdir(parents=True)
    dump_params(load_params(overrides={"run_name": "smoke"}), report / "params.yaml")
    (report / "run" / "metrics.json").write_text(json.dumps({
        "covid": {"auc": 0.97, "auc_ci_low": 0.93, "auc_ci_high": 0.99, "sens_at_spec99": 0.8, "sens_at_spec99_ci_low": 0.7,
                  "sens_at_spec99_ci_high": 0.9, "eer": 0.05}, "lung": {"dice": 0.92},
        "in_distribution": {"available": True, "n": 395, "n_flagged": 10, "share_set": 0.01}}))
    from cmtlib.run import Run, RunInfo

    Run(report / "run").write_info(RunInfo(device="cpu (2 threads)", manifest="/secret/data/manifest.csv",
                                           encoder_weights_source="random init (encoder_weights=none)"))
    record_facts(report, quarantine_count=3, manifest_hash="abc123def456", split_counts="10 / 2 / 3")
    record = {"run_name": "smoke", "status": "ok", "date": "2026-01-02T03:04:05", "commit": "1234abc", "total_s": 12.5,
              "notebooks": [{"name": "01_data", "title": "Data", "description": "What the data are.", "status": "ok",
                             "seconds": 3.25, "render_seconds": 0.5, "html": "01_data.html", "executed": "", "error": ""}]}
    html = write_report_index(report, record).read_text()
    for text in ("0.970", "95 % CI 0.930 to 0.990", "80.0 %", "5.0 %", "0.920", "Research use only", "abc123def456",
                 "cpu (2 threads)", "1234abc", "3.2 s", 'href="01_data.html"', "What the data are.", "width", "10 / 2 / 3"):
        assert text in html, text
    assert re.search(r"quarantined images[^<]*</th><td>3</td>", html)
    assert re.search(r"unlike the training films[^<]*</th><td>10 of 395 \(2\.5 %; set to flag 1 % [^<]*</td>", html)
    assert "/secret/data" not in html and external_refs(html) == []
    assert "What this data can and cannot show" not in html  # no caveats recorded, no predictions
    listing = write_reports_index(tmp_path / "reports").read_text()
    assert 'href="smoke/index.html"' in listing and "0.970" in listing and "80.0 %" in listing


def test_report_index_lists_the_data_caveats_and_the_within_collection_auc(tmp_path):
    from cmtlib.report.chain.index import write_report_index
    from cmtlib.report.pages.common import record_facts

    report = tmp_path / "real"
    (report / "run").mkdir(parents=True)
    record_facts(report, caveats=["The COVID-19 label follows the source: 9 of 10 COVID-negative films ..."])
    pd.DataFrame({"source": ["a"] * 12 + ["b"] * 20, "label_covid": [1] * 6 + [0] * 6 + [0] * 20,
                  "p_covid": [0.9, 0.8, 0.7, 0.4, 0.3, 0.2] * 2 + [0.01] * 20}).to_csv(report / "run" / "predictions.csv", index=False)
    html = write_report_index(report, {"run_name": "real", "status": "ok"}).read_text()
    assert "What this data can and cannot show" in html
    assert "The COVID-19 label follows the source: 9 of 10" in html
    assert "(a: 12 films, 6 with COVID-19) the COVID-19 AUC is 0.50, against 0.88 over all 32 test films" in html
