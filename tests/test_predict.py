"""Prediction on PNG, DICOM and folders: JSON + overlay per image, bad files reported, others done."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cmtlib.run import Run
from cmtlib.predict import NOTE, overlay_size, predict_files
from test_engine import one_thread, train_toy  # noqa: F401 (fixture)
from test_loader import toy_arrays, toy_rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    run = train_toy(tmp_path_factory.mktemp("predict"), epochs=1)
    Run(run).write_threshold({**Run(run).threshold, "covid_threshold": 0.4242})
    return run


def phantom(kind: str = "covid", size: int = 64) -> np.ndarray:
    rows = [r for r in toy_rows(4) if r["kind"] == kind][:1]
    return toy_arrays(rows, size)[0][0]


def write_png(path, height: int = 200, width: int = 300):
    Image.fromarray(phantom()).resize((width, height)).save(path)
    return path


def write_dicom(path, height: int = 96, width: int = 80):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PID-98765", "19500101"
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "DX", meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = height, width, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.asarray(Image.fromarray(phantom("healthy")).resize((width, height)), dtype=np.uint16) * 16
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    assert pydicom.dcmread(str(path)).PatientID == "PID-98765"
    return path


def test_png_gives_json_and_overlay_of_the_image_size(run, tmp_path):
    png = write_png(tmp_path / "chest.png")
    (result,) = predict_files(run, [png], tmp_path / "out")
    assert "error" not in result and result["input"] == str(png)
    data = json.loads((tmp_path / "out" / "chest.json").read_text())
    probs = data["probabilities"]
    assert all(0.0 <= probs[k] <= 1.0 for k in ("healthy", "covid", "other_disease"))
    judged = data["in_distribution"]["in_distribution"] is not False  # a toy run: an enlarged phantom may look unlike its films
    assert data["in_distribution"]["verdict"] in ("like the training films", "outside what this run was trained on")
    assert data["threshold"] == 0.4242 and data["decision"]["covid_suspected"] == ((probs["covid"] >= 0.4242) if judged else None)
    assert data["note"] == NOTE and data["run"] == run.name and data["model"] == "cmtnet"
    assert data["image"]["original_size"] == [200, 300] and data["image"]["model_input_size"] == [64, 64]
    with Image.open(tmp_path / "out" / "chest_overlay.png") as im:
        assert im.size == overlay_size(200, 300) == (512, 341) and im.mode == "RGB"
        band = np.asarray(im)[:40]
    assert band.max() > 200 and band.mean() < 60  # white decision text on a dark band


def test_dicom_without_identifiers(run, tmp_path):
    dcm = write_dicom(tmp_path / "study.dcm")
    (result,) = predict_files(run, [dcm], tmp_path / "out")
    assert "error" not in result
    text = (tmp_path / "out" / "study.json").read_text()
    assert "Doe" not in text and "98765" not in text and "1950" not in text
    data = json.loads(text)
    assert data["image"]["format"] == "DICOM" and data["image"]["original_size"] == [96, 80]
    with Image.open(tmp_path / "out" / "study_overlay.png") as im:
        assert im.size == overlay_size(96, 80) == (427, 512)


def test_folder_with_a_bad_file(run, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_png(folder / "a.png")
    write_png(folder / "sub" / "a.png", 120, 100)  # same stem in a sub-folder
    write_dicom(folder / "sub" / "noext")  # DICOM found by content
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "README.txt").write_text("not an image")
    results = predict_files(run, [folder, tmp_path / "missing.png"], tmp_path / "out")
    errors = {r["input"]: r["error"] for r in results if "error" in r}
    assert set(errors) == {str(folder / "broken.png"), str(tmp_path / "missing.png")}
    assert "broken.png" in errors[str(folder / "broken.png")] and "not found" in errors[str(tmp_path / "missing.png")]
    done = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert done == ["a-2.json", "a-2_overlay.png", "a.json", "a_overlay.png", "noext.json", "noext_overlay.png"]
    with Image.open(tmp_path / "out" / "a-2_overlay.png") as im:
        assert im.size == (427, 512)


def test_overlay_size_keeps_the_aspect_ratio_within_bounds():
    assert overlay_size(2000, 3000) == (1024, 683)  # reduced
    assert overlay_size(700, 600) == (600, 700)  # kept
    assert overlay_size(64, 128) == (512, 256)  # enlarged so the text stays readable


def test_a_run_without_a_frozen_threshold_is_refused_with_the_fix(run, tmp_path):
    (run / "threshold.json").rename(tmp_path / "saved.json")
    try:
        with pytest.raises(FileNotFoundError, match="holds no frozen COVID-19 threshold.*--resume"):
            predict_files(run, [write_png(tmp_path / "x.png")], tmp_path / "out")
    finally:
        (tmp_path / "saved.json").rename(run / "threshold.json")


def test_the_json_states_the_frozen_threshold_and_its_rule(run, tmp_path):
    old = (run / "threshold.json").read_text()
    Run(run).write_threshold({"covid_threshold": 0.31, "threshold_rule": "specificity:0.95", "chosen_on": "val"})
    try:
        predict_files(run, [write_png(tmp_path / "x.png")], tmp_path / "out")
    finally:
        (run / "threshold.json").write_text(old)
    data = json.loads((tmp_path / "out" / "x.json").read_text())
    assert data["threshold"] == 0.31 and data["threshold_rule"] == "specificity:0.95"
    assert data["mitigations"] == []  # the smoke run trains with none
    assert "fixed when the run was trained" in data["threshold_source"] and "5 % of the COVID-negative" in data["threshold_source"]
