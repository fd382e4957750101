"""Tiny collections in each importer's layout, written by the fuzz tests themselves (no data in the
repository), and the corruptions the fuzz cases apply to them. Images are distinct random 32 px
PNGs (content decides the format, so a `.jpg` name is fine)."""

from __future__ import annotations

import gzip
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

_seed = [0]


def png(path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    """A distinct random grayscale PNG of (width, height) `size`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _seed[0] += 1
    pixels = np.random.default_rng(_seed[0]).integers(0, 255, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A small PNG whose header claims side x side pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def write_json(path: Path, doc: object) -> Path:
    return write(path, json.dumps(doc))


# ---- collections -------------------------------------------------------------------------------

IEEE_META = ("patientid,offset,sex,age,finding,view,modality,folder,filename,license\n"
             "p1,0,M,40,COVID-19,PA,X-ray,images,a.png,CC BY\n"
             "p1,5,M,40,COVID-19,AP,X-ray,images,b.png,\n"
             "p2,,F,60,No Finding,PA,X-ray,images,c.png,\n"
             "p3,2,F,33,Pneumonia,AP Supine,X-ray,images,d.png,\n")
IEEE_FILES = ("a.png", "b.png", "c.png", "d.png")


def coco_lungs(names: tuple[str, ...], size: tuple[int, int] = (32, 32)) -> dict:
    images = [{"id": i + 1, "file_name": n, "width": size[0], "height": size[1]} for i, n in enumerate(names)]
    anns = []
    for i in range(len(names)):
        anns.append({"id": 2 * i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 12, 26]})
        anns.append({"id": 2 * i + 2, "image_id": i + 1, "category_id": 2, "bbox": [18, 2, 12, 26]})
    return {"categories": [{"id": 1, "name": "Right Lung"}, {"id": 2, "name": "Left Lung"}], "images": images, "annotations": anns}


def ieee8023(tmp: Path) -> Path:
    """tmp/ieee (metadata, images, COCO lung boxes), tmp/seg (one disease instance for a.png),
    tmp/v7/covid-only.zip (a lung polygon for a.png), tmp/sev (severity scores)."""
    col = tmp / "ieee"
    for name in IEEE_FILES:
        png(col / "images" / name)
    write(col / "metadata.csv", IEEE_META)
    write_json(col / "annotations" / "annotations.json", coco_lungs(IEEE_FILES))
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[..., 3] = 255
    mask[2:6, 2:6, 0] = 200
    (tmp / "seg" / "masks").mkdir(parents=True)
    Image.fromarray(mask, "RGBA").save(tmp / "seg" / "masks" / "m1.png")
    write(tmp / "seg" / "structure.csv", "Filename,Template Name,Mask,Resolution,Top,Left\n"
          "a.png,Ground Glass Opacities,masks/m1.png,32x32,5,5\n"
          "a.png,Left Lung,masks/m1.png,32x32,0,0\n")
    poly = {"image": {"original_filename": "a.png", "width": 32, "height": 32},
            "annotations": [{"name": "Lung", "polygon": {"path": [{"x": 2, "y": 2}, {"x": 14, "y": 2}, {"x": 14, "y": 28}]}}]}
    (tmp / "v7").mkdir()
    with zipfile.ZipFile(tmp / "v7" / "covid-only.zip", "w") as zf:
        zf.writestr("a.json", json.dumps(poly))
    write(tmp / "sev" / "covid-severity-scores.csv", "## scores\nfilename,geographic_mean,opacity_mean\na.png,3.0,2.0\n")
    return tmp


NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
NIH_ROWS = ["00000001_000.png,Cardiomegaly,0,1,57,M,PA", "00000001_001.png,No Finding,1,1,58,M,PA",
            "00000002_000.png,Effusion|Mass,0,2,40,F,AP", "00000003_000.png,No Finding,0,3,30,F,PA",
            "00000009_000.png,Hernia,0,9,70,F,PA"]  # the last one's image is absent: counted, not quarantined
# Most of the release is absent from any copy: these rows' images are not there (counted, not quarantined).
NIH_ABSENT = [f"{i:08d}_000.png,Hernia,0,{i},70,F,PA" for i in range(100, 400)]
NIH_BOXES = ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
             "00000002_000.png,Effusion,100,200,300,400\n00000002_000.png,Mass,500,500,100,100\n")


def nih(tmp: Path, rows: list[str] | None = None, boxes: str = NIH_BOXES) -> Path:
    col = tmp / "nih"
    for name in ("00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"):
        png(col / "images" / name, (64, 64))
    col.mkdir(exist_ok=True)
    nih_table(tmp, rows or NIH_ROWS)
    write(col / "BBox_List_2017.csv", boxes)
    return tmp


def tbx_coco() -> dict:
    cats = [{"id": 1, "name": "ActiveTuberculosis"}, {"id": 2, "name": "ObsoletePulmonaryTuberculosis"}]
    images = [{"id": 1, "file_name": "tb/tb1.png", "width": 32, "height": 32},
              {"id": 2, "file_name": "tb/tb2.png", "width": 32, "height": 32},
              {"id": 3, "file_name": "health/h1.png", "width": 32, "height": 32}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [15, 15, 8, 8]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10]}]
    return {"categories": cats, "images": images, "annotations": anns}


def tbx11k(tmp: Path) -> Path:
    col = tmp / "tbx"
    for name in ("health/h1.png", "tb/tb1.png", "tb/tb2.png", "sick/s1.png"):
        png(col / "imgs" / name)
    write_json(col / "annotations" / "json" / "TBX11K_train.json", tbx_coco())
    return tmp


CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Edema,Support Devices\n"
CHEXPERT_ROWS = [("patient00001/study1/view1_frontal.jpg", "Female,68,Frontal,AP,,1.0,,"),
                 ("patient00002/study1/view1_frontal.jpg", "Male,40,Frontal,PA,1.0,,,"),
                 ("patient00003/study1/view1_frontal.jpg", "Male,77,Frontal,AP,,,-1.0,1.0")]


def chexpert(tmp: Path) -> Path:
    base = tmp / "CheXpert-v1.0-small"
    for p, _ in CHEXPERT_ROWS:
        png(base / "train" / p)
    write(base / "train.csv", CHEXPERT_HEADER + "".join(f"CheXpert-v1.0-small/train/{p},{rest}\n" for p, rest in CHEXPERT_ROWS))
    return tmp


CSV_TEXT = ("File,Diagnosis,Subject,Projection,Boxes,Covid,Split\n"
            "img/a.png,COVID-19,S1,AP,\"[[1, 1, 20, 20]]\",,\n"
            "img/b.png,normal,S2,PA,,,\n"
            "img/c.png,Pneumonia,S3,PA,\"[[2, 2, 10, 10]]\",,\n")
CSV_MAP = {"path": "File", "finding": "Diagnosis", "patient_id": "Subject", "view": "Projection",
           "disease_boxes": "Boxes", "label_covid": "Covid", "split": "Split"}


def csv_collection(tmp: Path) -> Path:
    col = tmp / "mine"
    for name in ("a.png", "b.png", "c.png"):
        png(col / "img" / name)
    write(col / "labels.csv", CSV_TEXT)
    return col / "labels.csv"


def covidx(tmp: Path) -> Path:
    fig = tmp / "fig1"
    for name in ("COVID-00001.jpg", "COVID-00002a.jpg", "COVID-00002b.jpg"):
        png(fig / "images" / name)
    write(fig / "metadata.csv", "patientid,offset,sex,age,finding,view\nCOVID-00001,3,M,50+,COVID-19,AP erect\n"
          "COVID-00002a,,F,44,No finding,PA\nCOVID-00002b,,F,44,No finding,PA\n", "latin-1")
    act = tmp / "actualmed"
    for name in ("x1.png", "x2.png"):
        png(act / "images" / name)
    write(act / "metadata.csv", "patientid,finding,view,imagename\nANON1,No finding,AP,x1.png\nANON2,COVID-19,PA,x2.png\n")
    return tmp


def auto(tmp: Path) -> Path:
    """ieee8023 (with its companions), ChestX-ray14 and TBX11K under one root."""
    ieee8023(tmp)
    nih(tmp)
    tbx11k(tmp)
    return tmp


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "ieee8023": ieee8023, "nih": nih, "tbx11k": tbx11k, "chexpert": chexpert, "csv": csv_collection,
    "covidx": covidx, "auto": auto,
}


# ---- corruptions -------------------------------------------------------------------------------

def edit(path: Path, old: str, new: str, encoding: str = "utf-8") -> None:
    text = path.read_bytes().decode(encoding)
    assert old in text, f"{old!r} not in {path}"
    path.write_bytes(text.replace(old, new, 1).encode(encoding))


def edit_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data, f"{old!r} not in {path}"
    path.write_bytes(data.replace(old, new, 1))


def edit_json(path: Path, fn: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def nih_table(tmp: Path, rows: list[str]) -> None:
    """Rewrite the ChestX-ray14 label table with `rows` (gzip'd, as the release ships it)."""
    text = NIH_HEADER + "\n".join(rows + NIH_ABSENT) + "\n"
    (tmp / "nih" / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(text.encode()))
