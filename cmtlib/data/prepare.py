"""From params to a cache folder: the data chain a run asks for, built once and shared.

    synthetic          make_synthetic -> split_manifest -> build_cache
    auto, ieee8023...  import_collection -> split_manifest -> build_cache   (the kinds of
                       cmtlib.data.collections.registry that need no option; `findings` adds
                       'TEXT=CLASS' entries to the finding vocabulary of the import)
    manifest           split_manifest (only when no row has a split) -> build_cache
    cache_dir set      used as it is (how a GPU machine trains on a carried cache)

Artefacts go to `<data dir>/<data_kind>-<key>/`, where the data dir is $CMT_DATA_DIR or ./data and
the key is a short hash of the DataConfig fields that decide the images and the split (for a
manifest also its content hash). Runs that share those fields (the ablation runs, the baselines)
share one split and one cache, built once; each image size gets its own `cache-<size>/` inside.

    <kind>-<key>/source.csv       the source manifest with absolute paths (input to the split)
    <kind>-<key>/manifest.csv     the split manifest (absent when the given manifest was split)
    <kind>-<key>/synth/ import/   what make_synthetic (truth and twins included) / import_collection wrote
    <kind>-<key>/cache-<size>/    the cache (docs/CONTRACTS.md)
    <kind>-<key>/data.json        the fields behind the key, and what was built

Beside each manifest lie its import findings (`<stem>.quarantine.csv`, `.notes.csv`,
`.not_imported.csv`; `manifest.import_findings`), carried from the import to source.csv and to the
split manifest, so a report reading the manifest a run used sees what its import left out.

A present cache is reused when complete and built from the current manifest (meta.json's
manifest_hash); a file lock keeps concurrent runs (or torchrun's processes) from building it twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from cmtlib.errors import ConfigError
from cmtlib.data.holdout import apply_holdout
from cmtlib.data.manifest import carry_findings, manifest_hash, read_manifest, resolve_path, write_manifest
from cmtlib.fileio import locked, write_json

log = logging.getLogger("cmtlib.data")
PATH_COLUMNS = ("path", "lung_mask", "disease_mask")


def data_dir() -> Path:
    """Where prepared data lives: $CMT_DATA_DIR, else ./data (git-ignored)."""
    return Path(os.environ.get("CMT_DATA_DIR") or "data").resolve()


def data_key(data) -> dict[str, Any]:
    """The DataConfig fields (and manifest content hash) that decide the images and the split."""
    kind = data.data_kind
    key: dict[str, Any] = {"data_kind": kind, "val_fraction": data.val_fraction, "test_fraction": data.test_fraction, "split_seed": data.split_seed}
    if kind == "synthetic":
        key.update(synth_n=data.synth_n, synth_size=data.synth_size, synth_seed=data.synth_seed)
        # Only settings away from the defaults join the key, so the caches of data sets made before
        # these keys existed (the same films, byte for byte) keep their folders.
        default = type(data)()
        for name in synth_keys():
            if getattr(data, name) != getattr(default, name):
                key[name] = getattr(data, name)
    else:
        key["data_root"] = str(Path(data.data_root).resolve())
        if kind == "manifest":
            key["manifest_hash"] = manifest_hash(data.data_root)
    if data.holdout:
        key["holdout"] = list(data.holdout)
    findings = list(getattr(data, "findings", []))  # getattr: a caller may pass only the split keys
    if kind not in ("synthetic", "manifest") and findings:
        key["findings"] = findings  # other labels: another import
    return key


def synth_keys() -> list[str]:
    """The DataConfig keys of the phantoms' cues and external site (beyond synth_n, _size, _seed)."""
    from cmtlib.data.synth.ties import CUES

    return [f"synth_{cue}_strength" for cue in CUES] + ["synth_external_n", "synth_covid_opacity"]


def synth_strengths(data):
    """The DataConfig's cue strengths as cmtlib.data.synth.ties.Strengths (ConfigError out of [0, 1])."""
    from cmtlib.data.synth.ties import CUES, Strengths

    return Strengths(**{cue: getattr(data, f"synth_{cue}_strength") for cue in CUES})


def data_folder(data) -> Path:
    key = data_key(data)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return data_dir() / f"{data.data_kind}-{digest}"


def prepare_data(params) -> Path:
    """Run the chain `params.data` asks for and return the cache folder at data.image_size."""
    data = params.data if hasattr(params, "data") else params
    if data.cache_dir:
        return _given_cache(Path(data.cache_dir), data.image_size)
    _check_kind(data)
    if data.data_kind != "synthetic" and not data.data_root:
        raise ConfigError(f"data_kind={data.data_kind} needs data_root (a manifest or a collection folder)")
    folder = data_folder(data)
    with locked(folder):
        source = _source_manifest(data, folder)
        manifest = _split_manifest(data, source, folder)
        cache = folder / f"cache-{data.image_size}"
        if not _cache_is_current(cache, manifest, data.image_size):
            from cmtlib.data.cache import build_cache

            log.info("caching %s at %d px into %s", manifest, data.image_size, cache)
            report = build_cache(manifest, size=data.image_size, out=cache, workers=0)
            log.info(report.summary())
        else:
            log.info("reusing the cache %s", cache)
        write_json(folder / "data.json", {"key": data_key(data), "manifest": str(manifest), "caches": sorted(p.name for p in folder.glob("cache-*"))})
    return cache


def _check_kind(data) -> None:
    """data_kind is synthetic, manifest or an import kind that needs no option (the registry's)."""
    if data.data_kind in ("synthetic", "manifest"):
        return
    from cmtlib.data.collections.registry import data_kinds, kinds

    if data.data_kind not in data_kinds():
        needs = kinds().get(data.data_kind)
        hint = (f"; {data.data_kind} needs options params cannot give ({', '.join(needs.required)}): import it with "
                f"`cmt data import {data.data_kind} ...` and use data_kind: manifest" if needs else "")
        raise ConfigError(f"data_kind must be synthetic, manifest or one of {', '.join(data_kinds())}; got {data.data_kind!r}{hint}")
    if getattr(data, "findings", []):
        from cmtlib.data.findings import parse_entries

        parse_entries(data.findings, "findings")  # refused here, before anything is imported


def _given_cache(cache: Path, image_size: int) -> Path:
    from cmtlib.data.cache import CacheError, open_cache

    _, images, _, _, _ = open_cache(cache)
    if images.shape[1] != image_size:
        raise CacheError(f"cache_dir {cache} holds {images.shape[1]} px images but image_size is {image_size}; set image_size={images.shape[1]} or rebuild the cache")
    return cache


def _source_manifest(data, folder: Path) -> Path:
    """Make (synthetic) or import the images; the manifest they are listed in."""
    kind = data.data_kind
    if kind == "manifest":
        return Path(data.data_root).resolve()
    if kind == "synthetic":
        out = folder / "synth"
        manifest = out / "manifest.csv"
        # A data set made before the generator wrote its truth is made again: the same films, byte for
        # byte (so the split and the cache stay current), now with truth.csv and twins.csv beside them.
        if not manifest.is_file() or not (out / "truth.csv").is_file():
            from cmtlib.data.synth import make_synthetic

            strengths = synth_strengths(data)
            tied = ", ".join(f"{c} {getattr(strengths, c):g}" for c in strengths.tied()) or "none"
            log.info("making %d synthetic images and %d of the external site (%d px, seed %d; cues tied to the label: %s; "
                     "COVID-19 opacity x%g) in %s", data.synth_n, data.synth_external_n, data.synth_size, data.synth_seed, tied,
                     data.synth_covid_opacity, out)
            manifest = Path(make_synthetic(out, n=data.synth_n, size=data.synth_size, seed=data.synth_seed,
                                           strengths=strengths, external_n=data.synth_external_n,
                                           covid_opacity=data.synth_covid_opacity))
        return manifest
    manifest = folder / "import" / "manifest.csv"
    if not manifest.is_file():
        from cmtlib.data.collections import import_collection

        log.info("importing %s collection(s) from %s", kind, data.data_root)
        report = import_collection(kind, Path(data.data_root), manifest, findings=list(getattr(data, "findings", [])))
        log.info(report.summary())
    return manifest


def _split_manifest(data, source: Path, folder: Path) -> Path:
    """The manifest to cache: the source itself when it is split, else its split copy."""
    df = read_manifest(source)
    assigned = (df["split"] != "").sum() if "split" in df.columns else 0
    if assigned:
        if assigned < len(df):
            log.warning("%s: %d of %d rows have no split and are not used", source, len(df) - assigned, len(df))
        return _with_holdout(data, source, folder) if data.holdout else source
    out = folder / "manifest.csv"
    if out.is_file():
        return _with_holdout(data, out, folder) if data.holdout else out
    from cmtlib.data.split import split_manifest

    # Absolute paths first: the split manifest lives in another folder than the source.
    absolute = folder / "source.csv"
    for col in PATH_COLUMNS:
        if col in df.columns:
            df[col] = [str(resolve_path(source, v)) if v else "" for v in df[col]]
    write_manifest(df, absolute)
    carry_findings(source, absolute)  # the import's quarantine, notes and not-imported list travel along
    log.info("splitting %s (val %.2f, test %.2f, seed %d)", source, data.val_fraction, data.test_fraction, data.split_seed)
    # Phantoms are all distinct by construction, so duplicate detection is skipped for them.
    report = split_manifest(absolute, out, val=data.val_fraction, test=data.test_fraction, seed=data.split_seed, find_duplicates=data.data_kind != "synthetic")
    log.info(report.summary() if hasattr(report, "summary") else str(report))
    final = _with_holdout(data, out, folder) if data.holdout else out
    if data.data_kind == "synthetic":  # beside the split's summary, once, when the split is made
        _log_cue_strengths(final)
    return final


def _log_cue_strengths(manifest: Path) -> None:
    """Log each cue's realised strength (COVID-19 share minus the others') per split of the phantoms."""
    from cmtlib.data.synth.truth import cue_strengths, read_truth

    truth = read_truth(manifest)
    if truth is None:
        return
    labels = read_manifest(manifest).set_index("image_id").loc[truth["image_id"], "label_covid"].reset_index(drop=True)
    table = cue_strengths(truth, labels, truth["split"])
    log.info("cue strengths realised (share of COVID-19 films carrying the cue minus the others'):\n%s", table.round(3).to_string())


def _with_holdout(data, split: Path, folder: Path) -> Path:
    """The split manifest with data.holdout's films held out (cmtlib.data.holdout), beside it."""
    out = folder / "holdout.csv"
    if out.is_file() and out.stat().st_mtime >= split.stat().st_mtime:
        return out
    df, report = apply_holdout(read_manifest(split), list(data.holdout))
    write_manifest(df, out)
    carry_findings(split, out)
    dup = split.with_name(f"{split.stem}.duplicates.csv")
    if dup.is_file():
        shutil.copyfile(dup, out.with_name(f"{out.stem}.duplicates.csv"))
    log.info(report.summary())
    return out


def _cache_is_current(cache: Path, manifest: Path, size: int) -> bool:
    """Complete, of this size, and built from this manifest's current content."""
    from cmtlib.data.cache import CacheError, open_cache

    if not (cache / "meta.json").is_file():
        return False
    try:
        _, images, _, _, meta = open_cache(cache)
    except (FileNotFoundError, CacheError) as err:
        log.warning("rebuilding %s: %s", cache, err)
        return False
    return images.shape[1] == size and meta.get("manifest_hash") == manifest_hash(manifest)
