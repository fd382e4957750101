"""Reading a synthetic data set's truth: every film's full masks and its twins, and the cues'
realised strengths. The files (written by build.py; format in docs/CONTRACTS.md, "Synthetic
truth, twins and cues") lie beside the synthetic manifest:

    truth.csv   image_id, lung, lesion, lesion_area, kind, severity, cues, view, source
    twins.csv   image_id, twin_of, removed, path, lung, lesion
    truth/      <name>_lung.png, <name>_lesion.png (binary 0/255, the film's size), also per twin
    twins/      <name>~<what>.png

A manifest derived from it elsewhere (the split and holdout manifests `prepare.py` writes, with
absolute paths) finds them through its images' folder. Real collections have none: None.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cmtlib.data.manifest import read_manifest, resolve_path
from cmtlib.data.synth.cohort import SOURCES
from cmtlib.data.synth.ties import CUES

TRUTH_FILE, TWINS_FILE = "truth.csv", "twins.csv"
TRUTH_COLUMNS = ("image_id", "lung", "lesion", "lesion_area", "kind", "severity", "cues", "view", "source")
TWIN_COLUMNS = ("image_id", "twin_of", "removed", "path", "lung", "lesion")
TRUTH_PATHS, TWIN_PATHS = ("lung", "lesion"), ("path", "lung", "lesion")
SPLIT_ORDER = ("train", "val", "test", "holdout", "excluded")


def truth_folder(manifest_path: str | os.PathLike, df: pd.DataFrame | None = None) -> Path | None:
    """The folder holding truth.csv for this manifest's films: the manifest's own folder, else the
    folder above its images' `images/` folder (a derived manifest with absolute paths); None if none."""
    manifest_path = Path(manifest_path)
    if (manifest_path.parent / TRUTH_FILE).is_file():
        return manifest_path.parent
    df = read_manifest(manifest_path) if df is None else df
    for cell in df["path"].head(50):
        image = resolve_path(manifest_path, cell) if cell else None
        if image is not None and image.parent.name == "images" and (image.parent.parent / TRUTH_FILE).is_file():
            return image.parent.parent
    return None


def read_truth(manifest_path: str | os.PathLike) -> pd.DataFrame | None:
    """truth.csv's rows for the manifest's films, paths absolute ('' stays ''), `lesion_area` and
    `severity` as floats (NaN where empty), and the manifest's `split` beside them; None without truth."""
    df = read_manifest(manifest_path)
    folder = truth_folder(manifest_path, df)
    if folder is None:
        return None
    truth = _read(folder / TRUTH_FILE, TRUTH_PATHS)
    truth = truth[truth["image_id"].isin(set(df["image_id"]))].reset_index(drop=True)
    for col in ("lesion_area", "severity"):
        truth[col] = pd.to_numeric(truth[col].replace("", np.nan))
    split = dict(zip(df["image_id"], df["split"])) if "split" in df.columns else {}
    truth["split"] = truth["image_id"].map(split).fillna("")
    return truth


def read_twins(manifest_path: str | os.PathLike) -> pd.DataFrame | None:
    """twins.csv's rows whose film (`twin_of`) is in the manifest, paths absolute ('' stays ''), with
    the film's `split`; None without truth. A twin is never in any manifest: it is never trained on."""
    df = read_manifest(manifest_path)
    folder = truth_folder(manifest_path, df)
    if folder is None or not (folder / TWINS_FILE).is_file():
        return None
    twins = _read(folder / TWINS_FILE, TWIN_PATHS)
    twins = twins[twins["twin_of"].isin(set(df["image_id"]))].reset_index(drop=True)
    split = dict(zip(df["image_id"], df["split"])) if "split" in df.columns else {}
    twins["split"] = twins["twin_of"].map(split).fillna("")
    return twins


def _read(path: Path, path_columns: tuple[str, ...]) -> pd.DataFrame:
    out = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in path_columns:
        out[col] = [str(path.parent / v) if v else "" for v in out[col]]
    return out


def cue_strengths(truth: pd.DataFrame, labels: pd.Series, by: pd.Series | None = None) -> pd.DataFrame:
    """Realised strength of every cue: the share of COVID-19 films carrying it minus the share of
    the others, over all films and per group of `by` (a split). Rows: cues; columns: groups. The
    source cue (synth-b rather than synth-a) is measured over the two training sites' films only.

    Args:
        truth: truth.csv's rows (`cues`, `source`, `view`).
        labels: label_covid per row ("1" / "0"), aligned with truth.
        by: a group per row (the split); None = all films only.
    """
    covid = labels.astype(str).to_numpy() == "1"
    carried = {cue: truth["cues"].str.split(";").apply(lambda cs, c=cue: c in cs).to_numpy() for cue in CUES}
    # source and view are properties of every film, tied or not: measure them whatever their key.
    carried["source"] = truth["source"].to_numpy() == SOURCES[1]
    carried["view"] = truth["view"].to_numpy() == "AP"
    counted = {cue: np.ones(len(truth), bool) for cue in CUES}
    counted["source"] = truth["source"].isin(SOURCES).to_numpy()
    groups = {"all": np.ones(len(truth), bool)}
    if by is not None:
        names = [g for g in SPLIT_ORDER if g in set(by)] + sorted(set(by) - set(SPLIT_ORDER) - {""})
        groups.update({g: by.to_numpy() == g for g in names})
    table = {name: {cue: _difference(carried[cue][rows & counted[cue]], covid[rows & counted[cue]]) for cue in CUES}
             for name, rows in groups.items()}
    return pd.DataFrame(table)


def _difference(carried: np.ndarray, covid: np.ndarray) -> float:
    if covid.all() or not covid.any():
        return float("nan")
    return float(carried[covid].mean() - carried[~covid].mean())
