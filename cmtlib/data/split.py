"""Patient- and duplicate-disjoint, stratified train / val / test split of a manifest.

Units: a patient's images never straddle splits, and neither do the copies of one picture. A
duplicate group (kept from the manifest's `duplicate_group` column, e.g. the NIH importer's
same-image-two-sizes groups, plus the groups `find_duplicates` confirms) joins the patients it
contains into one unit: ieee8023 patient 137 and 202 are one film, so both patients go to the
same split. This union over patients is intended; the image-level grouping itself is complete
linkage and never chains unrelated pictures (cmtlib.data.duplicates).

Stratum of a unit: its source (the most common among its images; ties go to the collection with
more images overall) and its label class (covid if any image is COVID-19, else the most common of
other / healthy / unknown). Within each stratum the units are shuffled with a generator seeded by
(seed, stratum name), so a stratum's assignment depends neither on the manifest's row order nor
on the other strata. A stratum of two or more units gets at least one test unit, and one of four
or more at least one validation unit (the smallest units, so tiny classes are still tested); the
rest go one by one to the split that, with the unit added, is least filled relative to its target
image count. Fractions therefore hold per stratum to within about one unit's images.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cmtlib.errors import ConfigError
from cmtlib.data.check import label_conflicts
from cmtlib.data.rules import same_path_groups
from cmtlib.data.manifest import (
    DUPLICATE_GROUP, LABEL_COLUMNS, ManifestError, absolute_paths, carry_findings, check_manifest, read_manifest, resolve_path,
    write_manifest,
)

__all__ = ["SplitReport", "split_manifest", "evidence_path", "image_class"]

SPLIT_NAMES = ("train", "val", "test")
CLASS_TIE_ORDER = ("other", "healthy", "unknown")  # majority ties among non-COVID units


@dataclass
class SplitReport:
    """What `split_manifest` did; `summary()` is what `cmt data split` prints."""

    out: Path
    seed: int
    fractions: dict[str, float]
    n_images: int = 0
    n_patients: int = 0
    n_units: int = 0
    groups_kept: int = 0
    groups_detected: int = 0
    groups: int = 0
    groups_joining_patients: int = 0
    evidence: Path | None = None
    duplicate_search: str = ""
    unreadable: int = 0
    counts: pd.DataFrame = field(default_factory=pd.DataFrame)
    strata: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        f = self.fractions
        lines = [
            f"split {self.out}: {self.n_images} images, {self.n_patients} patients in {self.n_units} units, seed {self.seed} "
            f"(requested train {f['train']:.2f} / val {f['val']:.2f} / test {f['test']:.2f})",
            f"duplicate groups: {self.groups} ({self.groups_kept} kept from the manifest, {self.groups_detected} detected; "
            f"{self.groups_joining_patients} join two or more patients into one unit)",
        ]
        if self.evidence is not None:
            lines.append(f"duplicate evidence: {self.evidence} ({self.unreadable} unreadable image(s) not compared)")
            lines.append(f"duplicate search: {self.duplicate_search}")
        else:
            lines.append("duplicate detection: skipped (--no-duplicates); only the manifest's duplicate_group values were used")
        lines.append("images per split by source and label:")
        lines.append(self.counts.to_string())
        lines.append("per stratum (a unit's majority source and label; image counts):")
        lines.append(self.strata.to_string())
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def evidence_path(out: str | Path) -> Path:
    """`<out stem>.duplicates.csv` beside the split manifest."""
    out = Path(out)
    return out.with_name(f"{out.stem}.duplicates.csv")


def image_class(df: pd.DataFrame) -> pd.Series:
    """covid / healthy / other / unknown per row, from the label columns ('1' wins in that order)."""
    cls = pd.Series("unknown", index=df.index)
    for col, name in (("label_other", "other"), ("label_healthy", "healthy"), ("label_covid", "covid")):
        cls[df[col] == "1"] = name
    return cls


def split_manifest(manifest: Path, out: Path, val: float = 0.15, test: float = 0.2, seed: int = 0,
                   find_duplicates: bool = True, workers: int | None = None, progress: bool = True) -> SplitReport:
    """Write `out`: the manifest with `duplicate_group` and `split` filled (module docstring).

    Args:
        manifest: input manifest CSV (paths relative to its folder are resolved from there).
        out: output manifest; the duplicate evidence goes to `<out stem>.duplicates.csv`.
        val, test: fractions of images per stratum; train gets the rest.
        seed: the same seed gives the same split.
        find_duplicates: detect near-duplicate images (cmtlib.data.duplicates) in addition to the
            manifest's own duplicate_group values.
        workers, progress: passed to find_duplicates.

    Raises:
        ValueError: fractions out of range. ManifestError: an input manifest that breaks the
            contract (other than an old split, which is replaced).
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"val={val} and test={test} must be fractions in [0, 1) that sum to less than 1 (train gets the rest)")
    manifest, out = Path(manifest), Path(out)
    df = read_manifest(manifest)
    if df.empty:
        raise ManifestError(f"{manifest} has no rows to split; import a collection first (cmt data import)")
    if DUPLICATE_GROUP not in df.columns:
        df[DUPLICATE_GROUP] = ""
    problems = check_manifest(df.assign(split="", **{DUPLICATE_GROUP: ""}))
    if problems:
        raise ManifestError(f"{manifest} cannot be split until it is valid (run `cmt data check`):\n  - " + "\n  - ".join(problems))
    fractions = {"train": 1 - val - test, "val": val, "test": test}
    report = SplitReport(out=out, seed=seed, fractions=fractions, n_images=len(df))
    notes = _blank_conflicting_labels(df, manifest, report)
    detected = _detect(df, manifest, out, report, workers, progress) if find_duplicates else []
    detected += _same_file_groups(df, manifest)
    report.groups_kept = df.loc[df[DUPLICATE_GROUP] != "", DUPLICATE_GROUP].nunique()
    report.groups_detected = len(detected)
    df[DUPLICATE_GROUP] = _merge_groups(df, detected)

    patient = df["patient_id"].where(df["patient_id"] != "", "image:" + df["image_id"])
    if (df["patient_id"] == "").any():
        report.notes.append(f"{int((df['patient_id'] == '').sum())} image(s) without patient_id are each their own patient")
    unit = _units(patient, df[DUPLICATE_GROUP])
    report.n_patients, report.n_units = patient.nunique(), unit.nunique()
    grouped = df[DUPLICATE_GROUP] != ""
    report.groups = df.loc[grouped, DUPLICATE_GROUP].nunique()
    report.groups_joining_patients = int((patient[grouped].groupby(df.loc[grouped, DUPLICATE_GROUP]).nunique() > 1).sum())

    cls = image_class(df)
    stratum = _strata(unit, df["source"], cls)
    split_of_unit: dict[str, str] = {}
    rows = []
    sizes = unit.value_counts()
    for name in sorted(set(stratum.values())):
        members = sorted(u for u, s in stratum.items() if s == name)
        assigned = _allocate(members, {u: int(sizes[u]) for u in members}, fractions, seed, name)
        split_of_unit.update(assigned)
        n = Counter()
        for u, s in assigned.items():
            n[s] += int(sizes[u])
        total = sum(n.values())
        rows.append({"stratum": name, "units": len(members), "images": total, **{s: n[s] for s in SPLIT_NAMES},
                     "test_fraction": round(n["test"] / total, 3)})
        if len(members) < 2 and test > 0:
            report.notes.append(f"stratum {name} has a single unit ({total} image(s)): it cannot have test examples")
    df["split"] = unit.map(split_of_unit)
    report.strata = pd.DataFrame(rows).set_index("stratum")
    report.counts = (pd.crosstab([df["source"], cls.rename("label")], df["split"])
                     .reindex(columns=list(SPLIT_NAMES), fill_value=0))
    report.counts.loc[("all", "patients"), :] = [patient[df["split"] == s].nunique() for s in SPLIT_NAMES]
    report.counts.loc[("all", "images"), :] = [int((df["split"] == s).sum()) for s in SPLIT_NAMES]
    report.counts = report.counts.astype(int)

    problems = check_manifest(df)
    if problems:  # a bug here, not in the input: the unit construction guarantees disjointness
        raise RuntimeError("split produced an invalid manifest: " + "; ".join(problems))
    if Path(out).resolve().parent != Path(manifest).resolve().parent:
        df = absolute_paths(df, manifest)  # relative cells would otherwise resolve from the wrong folder
    write_manifest(df, out)
    carry_findings(manifest, out, notes)
    return report


def _detect(df: pd.DataFrame, manifest: Path, out: Path, report: SplitReport, workers: int | None, progress: bool) -> list[tuple[str, ...]]:
    """Near-duplicate groups of the manifest's images; the evidence goes beside `out`."""
    from cmtlib.data.duplicates import find_duplicates as detect

    images = {iid: resolve_path(manifest, p) for iid, p in zip(df["image_id"], df["path"])}
    result = detect(images, workers=workers, progress=progress)
    report.evidence = result.write_evidence(evidence_path(out))
    report.unreadable = len(result.unreadable)
    bound = (f"at most {result.per_image} per image, nearest first; {result.at_bound} image(s) had that many or more"
             if result.per_image else "every pair within the hash distance")
    report.duplicate_search = f"{result.n_compared} candidate pair(s) compared ({bound}), {result.seconds:.1f} s"
    return result.groups


def _same_file_groups(df: pd.DataFrame, manifest: Path) -> list[tuple[str, ...]]:
    """Rows naming one file, as duplicate groups: they go to one split even without the image search."""
    paths = [str(resolve_path(manifest, p)) if p else "" for p in df["path"]]
    return [tuple(df["image_id"].iloc[i] for i in g) for g in same_path_groups(paths)]


def _blank_conflicting_labels(df: pd.DataFrame, manifest: Path, report: SplitReport) -> list[dict]:
    """One file listed on several rows with different labels: which label is right is unknown, so
    every such row's labels are left unknown (never split on a guess). Returns the notes for
    `<out stem>.notes.csv`."""
    notes = []
    for group in label_conflicts(df, manifest):
        rows = df.index[group]
        seen = ", ".join(f"{df.at[i, 'image_id']} ({'/'.join(df.at[i, c] or '?' for c in LABEL_COLUMNS)})" for i in rows)
        for i in rows:
            for c in LABEL_COLUMNS:
                if df.at[i, c]:
                    notes.append({"image_id": df.at[i, "image_id"], "column": c, "value": df.at[i, c],
                                  "reason": f"the same file is listed with other labels ({seen}); left unknown"})
                    df.at[i, c] = ""
            if df.at[i, "disease_boxes"] == "[]":
                df.at[i, "disease_boxes"] = ""  # known empty only through the healthy label
    if notes:
        report.notes.append(f"{len(notes)} label(s) left unknown: one file listed with different labels (see the notes file)")
    return notes


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _merge_groups(df: pd.DataFrame, detected: list[tuple[str, ...]]) -> pd.Series:
    """Manifest groups joined with detected ones; id = the smallest kept id, else 'dup:<first image>'.

    Both inputs are trusted groupings (the importer's, and complete-linkage confirmed ones), so
    their overlap is merged.
    """
    uf = _UnionFind()
    ids = df["image_id"].tolist()
    for iid, g in zip(ids, df[DUPLICATE_GROUP]):
        uf.find(iid)
        if g:
            uf.union(iid, "group:" + g)
    for members in detected:
        for other in members[1:]:
            uf.union(members[0], other)
    components: dict[str, list[str]] = {}
    for iid in ids:
        components.setdefault(uf.find(iid), []).append(iid)
    kept = dict(zip(ids, df[DUPLICATE_GROUP]))
    out = {}
    for members in components.values():
        existing = sorted({kept[m] for m in members if kept[m]})
        if existing:
            name = existing[0]
        elif len(members) > 1:
            name = "dup:" + min(members)
        else:
            name = ""
        out.update({m: name for m in members})
    return df["image_id"].map(out)


def _units(patient: pd.Series, group: pd.Series) -> pd.Series:
    """Unit id per row: patients joined by shared duplicate groups (id = smallest patient id)."""
    uf = _UnionFind()
    for p, g in zip(patient, group):
        uf.find("patient:" + p)
        if g:
            uf.union("patient:" + p, "~group:" + g)  # '~' sorts after letters: a patient names the unit
    return pd.Series([uf.find("patient:" + p).removeprefix("patient:") for p in patient], index=patient.index)


def _strata(unit: pd.Series, source: pd.Series, cls: pd.Series) -> dict[str, str]:
    """unit -> 'source/label' (module docstring)."""
    out = {}
    frame = pd.DataFrame({"unit": unit, "source": source, "cls": cls})
    overall = Counter(source)
    for u, g in frame.groupby("unit", sort=True):
        sources = Counter(g["source"])
        # Ties go to the larger collection, so a two-collection patient joins a big stratum.
        src = min(sources, key=lambda s: (-sources[s], -overall[s], s))
        classes = Counter(g["cls"])
        label = "covid" if classes["covid"] else min(classes, key=lambda c: (-classes[c], CLASS_TIE_ORDER.index(c)))
        out[u] = f"{src or '(no source)'}/{label}"
    return out


def _allocate(units: list[str], sizes: dict[str, int], fractions: dict[str, float], seed: int, stratum: str) -> dict[str, str]:
    """Assign one stratum's units to splits (module docstring)."""
    rng = np.random.default_rng([seed, zlib.crc32(stratum.encode())])
    order = [units[i] for i in rng.permutation(len(units))]
    total = sum(sizes.values())
    target = {s: fractions[s] * total for s in SPLIT_NAMES}
    count = dict.fromkeys(SPLIT_NAMES, 0)
    assigned: dict[str, str] = {}
    smallest = sorted(order, key=lambda u: sizes[u])  # stable: shuffled order breaks ties
    forced = []
    if len(units) >= 2 and fractions["test"] > 0:
        forced.append("test")
    if len(units) >= 4 and fractions["val"] > 0:
        forced.append("val")
    for s, u in zip(forced, smallest):
        assigned[u] = s
        count[s] += sizes[u]
    for u in order:
        if u in assigned:
            continue
        open_splits = [s for s in SPLIT_NAMES if target[s] > 0]
        best = min(open_splits, key=lambda s: ((count[s] + sizes[u]) / target[s], SPLIT_NAMES.index(s)))
        assigned[u] = best
        count[best] += sizes[u]
    return assigned
