"""What the data page (01_data) says about a prepared data set, as values and tables, and
`load_data`, which reads the data set (a cache folder with its manifest's quarantine and duplicate
evidence) for it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmtlib.data.collections.registry import source_notes
from cmtlib.data.manifest import check_manifest, import_findings, quarantine_path, read_manifest, read_quarantine
from cmtlib.errors import MissingInputError
from cmtlib.fileio import read_json
from cmtlib.metrics.ranking import roc_auc
from cmtlib.report.pages.tables import CLASS_ORDER, class_label, safe_table

SYNTHETIC_NOTE = "synthetic phantoms drawn by cmtlib: no patient data; they exercise the pipeline, not clinical performance"


class _SourceNotes(Mapping):
    """One plain-language line per known source: the synthetic phantoms and every source an importer
    declares (cmtlib.data.collections.registry), read when used so that a new importer's note shows."""

    def _notes(self) -> dict[str, str]:
        return {"synthetic": SYNTHETIC_NOTE, **source_notes()}

    def __getitem__(self, source: str) -> str:
        return self._notes()[source]

    def __iter__(self) -> Iterator[str]:
        return iter(self._notes())

    def __len__(self) -> int:
        return len(self._notes())


SOURCE_NOTES: Mapping[str, str] = _SourceNotes()
# The notes an import writes for a finding the vocabulary does not recognise (collections/validate.py).
UNRECOGNISED_REASON = "is not in the finding vocabulary"


def sample_rows(index: pd.DataFrame, n: int, seed: int = 0) -> list[int]:
    """Cache rows for a sample grid: round-robin over classes (COVID-19, healthy, other, unknown),
    images with a lung mask first, drawn with a fixed seed so the page is the same every run."""
    if n <= 0 or index.empty:
        return []
    rng = np.random.default_rng(seed)
    labels = class_label(index)
    has_lung = pd.to_numeric(index.get("has_lung", pd.Series(0, index=index.index)), errors="coerce").fillna(0)
    rows = pd.to_numeric(index["cache_row"], errors="coerce") if "cache_row" in index.columns else pd.Series(np.arange(len(index)), index=index.index)
    queues = []
    for cls in CLASS_ORDER:
        members = index.index[labels == cls].to_numpy()
        if len(members) == 0:
            continue
        members = members[rng.permutation(len(members))]
        members = sorted(members, key=lambda i: -has_lung[i])  # stable: keeps the shuffle within groups
        queues.append([int(rows[i]) for i in members])
    picked: list[int] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def grid_titles(index: pd.DataFrame, rows: list[int]) -> list[str]:
    """'image_id\\nclass' per cache row (names images by image_id only)."""
    by_row = index.set_index(pd.to_numeric(index["cache_row"])) if "cache_row" in index.columns else index.reset_index(drop=True)
    labels = class_label(by_row)
    return [f"{by_row.loc[r, 'image_id']}\n{labels.loc[r]}" for r in rows]


def duplicate_summary(index: pd.DataFrame, evidence: pd.DataFrame | None, data_kind: str = "") -> dict[str, Any]:
    """Duplicate groups (2+ files judged to show the same film) for the data page: `groups` (count,
    from `duplicate_group` or the evidence file), `evidence` (the evidence table without file paths),
    `text` (a sentence) and `empty` (what to say when there is no evidence)."""
    groups = 0
    if "duplicate_group" in index.columns:
        g = index["duplicate_group"].fillna("").astype(str)
        sizes = g[g != ""].value_counts()
        groups = int((sizes > 1).sum())
    table = safe_table(evidence) if evidence is not None else pd.DataFrame()
    if len(table) and groups == 0:
        col = next((c for c in table.columns if "group" in str(c).lower()), None)
        groups = int(table[col].nunique()) if col else len(table)
    checked = "duplicate_group" in index.columns or evidence is not None
    if data_kind == "synthetic":
        empty = "No duplicate search: synthetic images are distinct by construction."
    else:
        empty = "No duplicates found." if checked else "Duplicates were not searched for (the split was made with --no-duplicates or given)."
    text = (f"Duplicate groups found: {groups}. A duplicate group is a set of files that show the same film "
            "(re-published under another name or patient id); each group is kept within one split.")
    return {"groups": groups, "evidence": table, "checked": checked, "text": text, "empty": empty}


def data_facts(index: pd.DataFrame, quarantine: pd.DataFrame, manifest_hash: str, notes: pd.DataFrame | None = None,
               not_imported: pd.DataFrame | None = None) -> dict[str, Any]:
    """What the index page repeats from the data page (common.record_facts): counts, and the
    collections that were not imported, by name, so a run cannot lose one without the index saying so."""
    splits = index["split"].value_counts() if "split" in index.columns else pd.Series(dtype=int)
    return {
        "images": len(index),
        "split_counts": " / ".join(str(int(splits.get(s, 0))) for s in ("train", "val", "test")),
        "quarantine_count": len(quarantine),
        "notes_count": 0 if notes is None else len(notes),
        # finding text -> films: texts that gave no label (the vocabulary did not recognise them)
        "unrecognised_findings": {str(r.finding): int(r.films) for r in unrecognised_findings(notes).itertuples()},
        "not_imported": [] if not_imported is None else sorted(set(not_imported["collection"].astype(str))),
        "manifest_hash": manifest_hash,
    }


def unrecognised_findings(notes: pd.DataFrame) -> pd.DataFrame:
    """The finding texts the import did not recognise (so they gave no label), with how many films
    carry each and from which sources: `finding`, `films`, `sources`, most frequent first. Empty
    (with those columns) when every finding was recognised."""
    columns = ["finding", "films", "sources"]
    if notes is None or notes.empty or not {"column", "value", "reason"} <= set(notes.columns):
        return pd.DataFrame(columns=columns)
    hits = notes[(notes["column"] == "finding") & notes["reason"].astype(str).str.contains(UNRECOGNISED_REASON, regex=False)]
    if hits.empty:
        return pd.DataFrame(columns=columns)
    source = hits["image_id"].astype(str).str.partition(":")[0]
    table = (hits.assign(source=source).groupby("value")
             .agg(films=("image_id", "size"), sources=("source", lambda s: ", ".join(sorted(set(s))))).reset_index()
             .rename(columns={"value": "finding"}))
    return table.sort_values(["films", "finding"], ascending=[False, True]).reset_index(drop=True)[columns]


def provenance_text(params: Any, index: pd.DataFrame, meta: dict[str, Any]) -> str:
    """Where the images come from, in plain words."""
    kind = params.data.data_kind
    n = len(index)
    if kind == "synthetic":
        return (f"{n} synthetic chest X-ray phantoms generated by cmtlib (seed {params.data.synth_seed}, "
                f"{params.data.synth_size} px, cached at {params.data.image_size} px). They contain no patient data: "
                "results on them show that the pipeline works, not how it would perform on patients.")
    sources = index["source"].fillna("").astype(str).replace("", "(unknown)").value_counts() if "source" in index.columns else pd.Series(dtype=int)
    parts = []
    for src, count in sources.items():
        note = next((v for k, v in SOURCE_NOTES.items() if str(src).lower().startswith(k)), "")
        parts.append(f"{src}: {count} images" + (f" ({note})" if note else ""))
    text = f"{n} chest X-rays from public research collections, resized to {params.data.image_size} px. " + "; ".join(parts) + "."
    text += (" Public collections are convenience samples: disease is confounded with the hospital, the view (AP or PA) and "
             "the image source, so a high score can partly reflect these differences rather than the disease.")
    return text


def check_results(index: pd.DataFrame) -> pd.DataFrame:
    """The manifest checks (`cmt data check`) on the cached rows: one row per check with its result."""
    problems = check_manifest(index)
    leaks = [p for p in problems if " is in splits " in p]
    others = [p for p in problems if p not in leaks]
    rows = [
        {"check": "each patient's images are in one split only (no patient in both training and test)",
         "result": "passed" if not [p for p in leaks if p.startswith("patient")] else f"FAILED: {len([p for p in leaks if p.startswith('patient')])} patient(s) in two splits"},
        {"check": "each duplicate group is in one split only",
         "result": ("passed" if not [p for p in leaks if p.startswith("duplicate")] else f"FAILED: {len([p for p in leaks if p.startswith('duplicate')])} group(s) in two splits")
         if "duplicate_group" in index.columns else "not checked (no duplicate groups recorded)"},
        {"check": "manifest follows the contract (columns, labels, views, unique image ids)",
         "result": "passed" if not others else f"FAILED: {'; '.join(others[:3])}"},
    ]
    return pd.DataFrame(rows)


# Thresholds above which data_caveats calls a difference between the classes a confounder.
SOURCE_ALONE_SHARE = 0.5  # share of a class from collections that hold no film of the other class
SIZE_RATIO = 2.0  # ratio of the classes' median original long sides
SHARE_GAP = 0.3  # difference between the classes' shares of thumbnails
VIEW_GAP = 0.15  # difference between the classes' shares of AP films
THUMBNAIL_PX = 256  # long side at or under which a film was published as a thumbnail
MIN_TEST_COVID = 50  # fewer COVID-19 test films than this: intervals are wide
MIN_NEGATIVES = 100  # fewer validation negatives than this: the 1 % false-alarm threshold cannot be placed


def data_caveats(index: pd.DataFrame, quarantine_count: int = 0, notes_count: int = 0, not_imported: list[str] | tuple = ()) -> list[str]:
    """What this data can and cannot show, in plain sentences computed from the cached rows: where
    the COVID-19 label follows the source, the original image size or the view; classes too small
    to judge; files left out. [] when none of these applies.

    index: the cache index (columns label_covid, split, and where present source, view,
    orig_height, orig_width).
    """
    lab = pd.to_numeric(index["label_covid"], errors="coerce") if "label_covid" in index.columns else pd.Series(np.nan, index=index.index)
    pos, neg = lab == 1, lab == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    out: list[str] = []
    if n_pos and n_neg and "source" in index.columns:
        src = index["source"].fillna("").astype(str).replace("", "(unknown)")
        pos_sources, neg_sources = set(src[pos]), set(src[neg])
        neg_alone, pos_alone = int((neg & ~src.isin(pos_sources)).sum()), int((pos & ~src.isin(neg_sources)).sum())
        if len(pos_sources | neg_sources) > 1 and max(neg_alone / n_neg, pos_alone / n_pos) >= SOURCE_ALONE_SHARE:
            both = ", ".join(sorted(pos_sources & neg_sources)) or "none"
            out.append(f"The COVID-19 label follows the source: {neg_alone} of {n_neg} COVID-negative films come from collections "
                       f"with no COVID-19 film, and {pos_alone} of {n_pos} COVID-19 films from collections with no negative one "
                       f"(collections holding both: {both}). A network can score well here by recognising the collection.")
    if n_pos and n_neg and {"orig_height", "orig_width"} <= set(index.columns):
        side = np.fmax(pd.to_numeric(index["orig_height"], errors="coerce"), pd.to_numeric(index["orig_width"], errors="coerce"))
        med_pos, med_neg = float(np.nanmedian(side[pos])) if side[pos].notna().any() else np.nan, float(np.nanmedian(side[neg])) if side[neg].notna().any() else np.nan
        thumb_pos, thumb_neg = float((side[pos] <= THUMBNAIL_PX).mean()), float((side[neg] <= THUMBNAIL_PX).mean())
        if np.isfinite(med_pos) and np.isfinite(med_neg) and (max(med_pos, med_neg) >= SIZE_RATIO * min(med_pos, med_neg) or abs(thumb_pos - thumb_neg) >= SHARE_GAP):
            out.append(f"The original image size follows the label: COVID-19 films measured a median {med_pos:.0f} px on their long side "
                       f"before resizing, COVID-negative films {med_neg:.0f} px; {thumb_pos:.0%} and {thumb_neg:.0%} of them were "
                       f"thumbnails of {THUMBNAIL_PX} px or less. Resizing every film to one size does not remove the difference "
                       "in sharpness and noise it leaves, which a network can learn instead of the disease.")
    if n_pos and n_neg and "view" in index.columns:
        view = index["view"].fillna("").astype(str).str.upper()
        ap = view.str.startswith("AP")  # AP and AP supine
        known = ap | (view == "PA")
        if (pos & known).sum() and (neg & known).sum():
            ap_pos, ap_neg = float(ap[pos & known].mean()), float(ap[neg & known].mean())
            if abs(ap_pos - ap_neg) >= VIEW_GAP:
                out.append(f"The view follows the label: {ap_pos:.0%} of COVID-19 films with a known view are AP (bedside films, "
                           f"often of sicker patients) against {ap_neg:.0%} of COVID-negative films.")
    split = index["split"].astype(str) if "split" in index.columns else pd.Series("", index=index.index)
    test_pos, val_neg = int((pos & (split == "test")).sum()), int((neg & (split == "val")).sum())
    if n_pos and "test" in set(split) and test_pos < MIN_TEST_COVID:
        out.append(f"Only {test_pos} COVID-19 films are in the test split: each test figure rests on few films, so its interval is wide "
                   "and small differences between runs or methods mean nothing.")
    if n_neg and "val" in set(split) and val_neg < MIN_NEGATIVES:
        out.append(f"The validation split holds {val_neg} COVID-negative films, fewer than the {MIN_NEGATIVES} needed to place a "
                   "threshold at a 1 % false-alarm rate: sensitivity at 99 % specificity is not a reliable figure here.")
    if quarantine_count:
        out.append(f"{quarantine_count} file(s) could not be read or used and were left out; the data page lists each with its reason.")
    if notes_count:
        out.append(f"{notes_count} field(s) (a label, a box, an age, ...) could not be read as given and were left unknown "
                   "rather than guessed; the data page lists each with its reason.")
    if not_imported:
        out.append(f"{len(not_imported)} collection(s) found under the data folder could not be imported and are not in this "
                   f"run: {', '.join(not_imported)}. The data page says why.")
    return out


def mixed_source_auc(predictions: pd.DataFrame, min_per_class: int = 5) -> str:
    """A sentence comparing the COVID-19 AUC over all test films with the AUC within the collections
    that hold both classes, where other collections hold one class only (so the collection alone
    could separate them); '' where that does not apply or either class has under `min_per_class`.

    predictions: a run's predictions.csv (columns source, label_covid, p_covid).
    """
    if not {"source", "label_covid", "p_covid"} <= set(predictions.columns):
        return ""
    df = predictions.assign(y=pd.to_numeric(predictions["label_covid"], errors="coerce"), p=pd.to_numeric(predictions["p_covid"], errors="coerce"))
    df = df[df["y"].isin([0, 1]) & df["p"].notna()]
    classes = df.groupby(df["source"].fillna("").astype(str))["y"].nunique()
    mixed = sorted(classes.index[classes == 2])
    inside = df[df["source"].astype(str).isin(mixed)]
    if not mixed or len(mixed) == len(classes) or min(int((inside["y"] == 1).sum()), int((inside["y"] == 0).sum())) < min_per_class:
        return ""
    pooled, within = roc_auc(df["y"].to_numpy(), df["p"].to_numpy()), roc_auc(inside["y"].to_numpy(), inside["p"].to_numpy())
    return (f"Within the collections that hold both classes in the test split ({', '.join(mixed)}: {len(inside)} films, "
            f"{int((inside['y'] == 1).sum())} with COVID-19) the COVID-19 AUC is {within:.2f}, against {pooled:.2f} over all "
            f"{len(df)} test films. Where these differ, the difference is what telling the collections apart gives away, "
            "not the reading of the lungs.")


# ---- reading the data set -----------------------------------------------------------------------

@dataclass
class DataArtefacts:
    """A prepared data cache (docs/CONTRACTS.md, Cache folder) and what the data page shows."""

    cache_dir: Path
    index: pd.DataFrame
    meta: dict[str, Any]
    manifest_path: Path | None = None
    quarantine: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["image_id", "path", "reason"]))
    duplicates: pd.DataFrame | None = None
    # Fields blanked at import (image_id, column, value, reason) and collections not imported
    # (collection, folder, reason): cmtlib.data.manifest.import_findings.
    notes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["image_id", "column", "value", "reason"]))
    not_imported: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["collection", "folder", "reason"]))

    @property
    def manifest_hash(self) -> str:
        return str(self.meta.get("manifest_hash", ""))

    def arrays(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, lung, disease) uint8 arrays (N, S, S) for the given cache rows."""
        out = []
        for name in ("images", "lung", "disease"):
            arr = np.load(self.cache_dir / f"{name}.npy", mmap_mode="r")
            out.append(np.asarray(arr[rows]))
        return out[0], out[1], out[2]


def load_data(cache_dir: str | Path) -> DataArtefacts:
    """A cache folder with what its manifest's import left out or unknown (quarantine, notes, collections
    not imported: cmtlib.data.manifest.import_findings) and its duplicate evidence."""
    cache_dir = Path(cache_dir)
    index_path = cache_dir / "index.csv"
    if not index_path.is_file():
        raise MissingInputError(f"{cache_dir} is not a data cache (no index.csv); build one with `cmt data cache`")
    index = read_manifest(index_path)
    meta = read_json(cache_dir / "meta.json", {}) or {}
    manifest = Path(meta["manifest"]) if meta.get("manifest") else None
    frames = [read_quarantine(cache_dir / "quarantine.csv")]
    notes = not_imported = duplicates = None
    if manifest is not None:
        quarantine, notes, not_imported = import_findings(manifest)
        frames.append(quarantine)
        # A manifest joined by hand from per-collection imports has their quarantine files beside it;
        # only the collections its own image ids name (their source prefix) count.
        prefixes = set(index["image_id"].astype(str).str.partition(":")[0]) if "image_id" in index.columns else set()
        for q in sorted({*manifest.parent.glob("*.quarantine.csv"), *manifest.parent.glob("*/*.quarantine.csv")} - {quarantine_path(manifest)}):
            frames.append(_of_collections(read_quarantine(q), prefixes))
        dup_path = manifest.with_name(f"{manifest.stem}.duplicates.csv")
        duplicates = pd.read_csv(dup_path, dtype=str, keep_default_na=False) if dup_path.is_file() else None
    quarantine = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    data = DataArtefacts(cache_dir, index, meta, manifest, quarantine.drop_duplicates(subset=["image_id", "reason"]), duplicates)
    if notes is not None:
        data.notes, data.not_imported = notes.drop_duplicates(), not_imported.drop_duplicates()
    return data


def _of_collections(quarantine: pd.DataFrame, prefixes: set[str]) -> pd.DataFrame:
    """Quarantine rows whose image_id prefix ("nih" of "nih:000..") is one of `prefixes` (all rows
    when `prefixes` is empty or an id has no prefix)."""
    if not prefixes or quarantine.empty:
        return quarantine
    prefix = quarantine["image_id"].astype(str).str.partition(":")
    return quarantine[(prefix[1] == "") | prefix[0].isin(prefixes)]
