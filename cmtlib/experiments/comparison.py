"""The comparison with the paper's baselines, trained: what the CAM page (07) and the baselines page
(09) read.

``ensure_comparison(params, run_dir, report_dir)`` trains and evaluates, with the one engine, the run's
data and split and the same metrics, each baseline of ``report_baselines`` for each seed of
``report_seeds``; a CMTNet at the baselines' setting whenever that setting is reduced (smaller images,
fewer epochs), so that deep baselines are compared with a CMTNet trained exactly like them; and the
embedding classifiers on the run's own CMTNet embeddings. What a report folder already holds is
reused. ``roles`` limits it to what one page needs (the CAM page: the classifiers). Layout:

    <report_dir>/comparison/
        comparison.json           what was compared: entries, settings, seconds
        <name>-seed<s>/           a run folder (config, checkpoints, metrics.json, predictions.csv)
        embedding/<kind>/         an embedding classifier's predictions.csv, metrics.json, selection.json

Mask R-CNN's training subset of the cache (every test film kept) is a data product, not a report
one: it lies beside the cache it comes from (`<cache>-maskrcnn-<n>`), whose index names the
original files, so no file name of the source collections lands in the report folder.
``load_comparison(report_dir)`` reads what was made, for pages that only read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from cmtlib.data.prepare import prepare_data
from cmtlib.data.subset import subset_cache
from cmtlib.errors import ConfigError, MissingInputError
from cmtlib.experiments.baselines import DEEP_BASELINES, baseline_params_files, setting_params
from cmtlib.experiments.embedding_classifiers import EMBEDDING_CLASSIFIERS, run_embedding_classifiers, run_embeddings
from cmtlib.experiments.runs import ensure_run
from cmtlib.fileio import locked, read_json, write_json
from cmtlib.run import Evaluation, Run

ROLES = ("cmtnet", "classifier", "segmentation", "embedding")
LABELS = {"segnet_lung": "SegNet, lung only", "segnet_disease": "SegNet, disease only"}


@dataclass
class Entry:
    """One compared method: a run folder (or an embedding classifier's folder) with metrics.json
    and predictions.csv (test films), and how it was trained, in words."""

    key: str  # params/baselines stem, "cmtnet" (at the baselines' setting), "cmtnet-run" or a classifier kind
    label: str  # the paper's name of the method
    role: str  # one of ROLES
    folder: Path
    seed: int
    setting: str  # "64 px, 1 epoch, width 0.25"
    init: str  # starting weights, in words
    seconds: float | None = None  # training + evaluation here (None: made before this call)
    model: str = ""
    width: float = 1.0
    primary: bool = True  # the one the tables show: the first seed, the report's run, classifiers on its embeddings

    def metrics(self) -> dict[str, Any]:
        return Evaluation(self.folder).metrics or {}

    def predictions(self) -> pd.DataFrame:
        found = Evaluation(self.folder).predictions
        if found is None:
            raise MissingInputError(f"{self.folder}: no predictions; the comparison did not finish this method")
        return found


@dataclass
class Comparison:
    entries: list[Entry]
    seeds: list[int]
    notes: list[str] = field(default_factory=list)  # what was reduced, in plain words
    seconds: float = 0.0  # wall time of the ensure_comparison call that made it

    def select(self, *roles: str, first_seed: bool = True) -> list[Entry]:
        """Entries of these roles; first_seed keeps the primary one of each method (see Entry)."""
        return [e for e in self.entries if e.role in roles and (e.primary or not first_seed)]


def load_comparison(report_dir: str | Path) -> Comparison:
    """The comparison a report folder holds (comparison.json), for pages that only read it."""
    path = Path(report_dir) / "comparison" / "comparison.json"
    data = read_json(path)
    if data is None:
        raise MissingInputError(f"{path} not found: the comparison has not been trained; `cmt report` trains it, or "
                                "cmtlib.experiments.comparison.ensure_comparison(params, run_dir, report_dir)")
    entries = [Entry(**{**e, "folder": Path(e["folder"])}) for e in data["entries"]]
    return Comparison(entries, list(data["seeds"]), list(data.get("notes", [])), float(data.get("seconds_this_call", 0.0)))


# ---- orchestration ---------------------------------------------------------------------------

def init_words(source: str, model: str = "", width: float = 1.0) -> str:
    """run.json's encoder_weights_source in a few plain words, with the reason for a random start."""
    low = str(source).lower()
    for test, words in ((low.startswith("imagenet"), "ImageNet"), (low.startswith("state_dict"), "weights from a file"),
                        ("not found" in low, "random (no ImageNet file on this machine)"),
                        (model == "unet", "random (no ImageNet UNet exists; the paper's too)"),
                        ("width" in low or (width != 1.0 and model != "resnet18"), "random (narrowed network)")):
        if test:
            return words
    return "random (encoder_weights none)"


def _entry(key: str, label: str, role: str, folder: Path, seed: int, seconds: float | None, subset: bool = False) -> Entry:
    """An entry for a run folder, its setting and starting weights read from config.yaml and run.json."""
    run = Run.open(folder)
    c, model, width = run.config, str(run.config.get("model", "")), float(run.config.get("width", 1.0))
    setting = f"{c.get('image_size')} px, {c.get('epochs')} epoch{'s' if int(c.get('epochs', 0)) != 1 else ''}, width {width:g}"
    if subset:  # Mask R-CNN's loss uses only films with both outlines known; subset_cache samples those
        pool = read_json(Path(run.info.data_cache) / "meta.json", {}).get("train_pool")
        setting += f", {run.info.n_train} training films" + (" (all with both outlines)" if run.info.n_train == pool
                                                             else f" (of {pool} with both outlines)")
    init = init_words(run.info.encoder_weights_source, model, width)
    return Entry(key, label, role, folder, seed, setting, init, seconds, model, width)


def _quiet_run(params, folder: Path) -> float | None:
    """Train and evaluate into folder unless it holds that evaluated run; seconds, or None if reused."""
    if Run(folder).evaluated:
        ensure_run(params, folder)  # checks that the folder's run was made with these params
        return None
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ensure_run(params, folder, quiet=True)
    return round(time.perf_counter() - t0, 1)


def plan(params) -> list[tuple[str, Path | None, int]]:
    """(name, params file or None for CMTNet, seed) of every deep run beside the report's own."""
    rc = params.experiments
    files = {f.stem: f for f in baseline_params_files()}
    unknown = [b for b in rc.report_baselines if b not in files]
    if unknown:
        raise ConfigError(f"report_baselines names {unknown}; params/baselines holds {', '.join(files)}")
    seeds = list(rc.report_seeds) or [params.train.seed]
    size, epochs = _baseline_size(params), rc.baseline_epochs or params.train.epochs
    same = (size, epochs) == (params.data.image_size, params.train.epochs)
    out = [("cmtnet", None, s) for s in seeds if not (same and s == params.train.seed) and (same or rc.report_baselines)]
    return out + [(b, files[b], s) for b in rc.report_baselines for s in seeds]


def _baseline_size(params) -> int:
    # A run given a ready cache folder cannot make another size of it: the baselines use its size.
    return params.data.image_size if params.data.cache_dir else (params.experiments.baseline_image_size or params.data.image_size)


def ensure_comparison(params, run_dir: str | Path, report_dir: str | Path, roles: tuple[str, ...] = ROLES,
                      progress: Callable[[str], None] | None = None, seconds: dict | None = None) -> Comparison:
    """Every compared method of `roles` trained (or found) and evaluated; see the module docstring.
    The report's own run is always the first entry. `progress` is told each method's time as it is
    made (the console of `cmt report`; a notebook page stays quiet); `seconds` gives the times of
    runs made by other tasks of the report's graph (`deep_run`), (key, seed) -> seconds."""
    t0 = time.perf_counter()
    rc, root, run_dir = params.experiments, Path(report_dir).resolve() / "comparison", Path(run_dir).resolve()
    with contextlib.redirect_stdout(io.StringIO()):
        ensure_run(params, run_dir)
    old = read_json(root / "comparison.json", {})
    # A reused run keeps the time it took when it was made (here before, or by another task of the graph).
    spent = {**{(e["key"], e["seed"]): e["seconds"] for e in old.get("entries", [])}, **(seconds or {})}
    seeds, size, epochs = list(rc.report_seeds) or [params.train.seed], _baseline_size(params), rc.baseline_epochs or params.train.epochs
    reduced = (size, epochs) != (params.data.image_size, params.train.epochs)
    entries = [_entry("cmtnet-run", "CMTNet (this report's run)" if reduced else "CMTNet", "cmtnet", run_dir, params.train.seed, None)]
    for entry in deep_entries(params, report_dir, roles, spent, progress):
        entry.primary = entry.seed == seeds[0] and not (entry.key == "cmtnet" and not reduced)  # without reduction the run is CMTNet's row
        entries.append(entry)
    if "embedding" in roles:
        # Embedding classifiers per CMTNet seed trained at the run's own setting (the run; more with >1 seed and no reduction).
        sources = [(params.train.seed, run_dir)] + ([] if reduced else [(e.seed, e.folder) for e in entries if e.key == "cmtnet"])
        for seed, source in sources:
            entries += _embedding_entries(params, source, root / "embedding", seed, seed != params.train.seed, entries[0].label, spent)
    comp = Comparison(entries, seeds, reduction_notes(params, entries), round(time.perf_counter() - t0, 1))
    _record(params, root, entries, seeds, comp.seconds)
    return comp


def _record(params, root: Path, entries: list[Entry], seeds: list[int], seconds: float) -> None:
    """Merge `entries` into comparison.json. Entries of roles this call did not ask for (another
    page's) stay in the file, with their times; the lock keeps two callers (the experiments step and
    a page that starts while it runs) from dropping each other's entries."""
    with locked(root):
        made = {(e["key"], e["seed"]): e for e in read_json(root / "comparison.json", {}).get("entries", [])}
        made.update({(e.key, e.seed): {**dataclasses.asdict(e), "folder": str(e.folder)} for e in entries})
        write_json(root / "comparison.json", {
            "seeds": seeds, "notes": reduction_notes(params, [Entry(**{**e, "folder": Path(e["folder"])}) for e in made.values()]),
            "seconds_this_call": seconds, "seconds_trained": round(sum(e["seconds"] or 0 for e in made.values()), 1),
            "entries": list(made.values())})


def deep_entries(params, report_dir: str | Path, roles: tuple[str, ...] = ROLES, spent: dict | None = None,
                 progress: Callable[[str], None] | None = None) -> list[Entry]:
    """The deep runs of the plan (the baselines and CMTNet at their setting) whose role is wanted,
    trained (or found) and evaluated. They need nothing of the report's own run: the report's task
    graph trains them (`deep_run`) while that run trains."""
    rc, root, spent = params.experiments, Path(report_dir).resolve() / "comparison", dict(spent or {})
    setting = (_baseline_size(params), rc.baseline_epochs or params.train.epochs)
    out = []
    for key, file, seed in plan(params):
        entry = _deep_entry(params, root, key, file, seed, setting, roles, spent)
        if entry is not None and progress is not None:
            progress(f"  {entry.label}, seed {seed}: " + ("found (made earlier)" if entry.seconds is None else f"{entry.seconds:.0f} s"))
        if entry is not None:
            out.append(entry)
    return out


def deep_plan(params, roles: tuple[str, ...] = ROLES) -> list[tuple[str, Path | None, int, str, Any]]:
    """The deep runs of the plan whose role is wanted, each (key, params file, seed, role, its params
    without a run folder): what the report's task graph trains, one task each (`deep_run`), after
    the data their params ask for."""
    rc, out = params.experiments, []
    size, epochs = _baseline_size(params), rc.baseline_epochs or params.train.epochs
    for key, file, seed in plan(params):
        p = setting_params(params, key, file, image_size=size, epochs=epochs, seed=seed, overrides=rc.baseline_overrides if file else ())
        role = "cmtnet" if file is None else ("classifier" if "multilabel" in p.model.tasks else "segmentation")
        if role in roles:
            out.append((key, file, seed, role, p))
    return out


def deep_run(params, report_dir: str | Path, key: str, file: Path | None, seed: int) -> Entry:
    """One deep run of the plan trained (or found) and evaluated; its Entry (seconds None if found)."""
    rc, root = params.experiments, Path(report_dir).resolve() / "comparison"
    setting = (_baseline_size(params), rc.baseline_epochs or params.train.epochs)
    return _deep_entry(params, root, key, file, seed, setting, ROLES, {})


def _deep_entry(params, root: Path, key: str, file: Path | None, seed: int, setting: tuple[int, int], roles: tuple[str, ...],
                spent: dict) -> Entry | None:
    """One deep run of the plan trained (or found) and evaluated; None when its role is not wanted."""
    rc, (size, epochs) = params.experiments, setting
    folder = root / f"{key}-seed{seed}"
    p = setting_params(params, key, file, image_size=size, epochs=epochs, seed=seed, overrides=rc.baseline_overrides if file else (), run_dir=folder)
    role = "cmtnet" if file is None else ("classifier" if "multilabel" in p.model.tasks else "segmentation")
    if role not in roles:
        return None
    subset = p.model.model.startswith("maskrcnn") and rc.baseline_maskrcnn_max_images > 0
    if subset:
        with contextlib.redirect_stdout(io.StringIO()):
            source = prepare_data(p)
            n = rc.baseline_maskrcnn_max_images
            cache = subset_cache(source, source.with_name(f"{source.name}-maskrcnn-{n}"), n, seed=0)
        p = dataclasses.replace(p, data=dataclasses.replace(p.data, cache_dir=str(cache)))
    seconds = _quiet_run(p, folder)
    reduced = (size, epochs) != (params.data.image_size, params.train.epochs)
    label = ("CMTNet (at the baselines' setting)" if reduced else "CMTNet") if file is None else LABELS.get(key, DEEP_BASELINES.get(p.model.model, key))
    return _entry(key, label, role, folder, seed, spent.get((key, seed)) if seconds is None else seconds, subset)


def _embedding_entries(params, source: Path, out: Path, seed: int, suffix: bool, run_label: str, spent: dict) -> list[Entry]:
    """The embedding classifiers on one CMTNet run's embeddings (made unless out/<kind>[-seedS] holds them)."""
    kinds = [k for k in params.experiments.report_embedding_classifiers if k in EMBEDDING_CLASSIFIERS]
    out = out / f"seed{seed}" if suffix else out
    todo = [k for k in kinds if not Evaluation(out / k).evaluated]
    t0 = time.perf_counter()
    if todo:
        run_embedding_classifiers(run_embeddings(source, device="cpu"), Run.open(source).info.threshold_rule, todo, seed=seed, out_dir=out)
    each = round((time.perf_counter() - t0) / len(todo), 1) if todo else None
    return [Entry(k, EMBEDDING_CLASSIFIERS[k], "embedding", out / k, seed, f"on the embeddings of {run_label}", "none: fitted on "
                  "CMTNet's features", each if k in todo else spent.get((k, seed)), k, primary=not suffix) for k in kinds]


def reduction_notes(params, entries: list[Entry]) -> list[str]:
    """What the comparison departs from the paper's protocol in, in plain words ([] = nothing)."""
    rc, notes = params.experiments, []
    size, epochs = _baseline_size(params), rc.baseline_epochs or params.train.epochs
    passes = f"{epochs} pass{'es' if epochs != 1 else ''}"
    if (size, epochs) == (params.data.image_size, params.train.epochs) and (size, epochs) != (224, 30):
        notes.append(f"Every network, CMTNet included, learned from {size}-pixel images for {passes} over the training films "
                     "(the paper: 224 pixels, 30 passes).")
    elif (size, epochs) != (params.data.image_size, params.train.epochs):
        notes.append(f"The baselines learned from {size}-pixel images for {passes} over the "
                     f"training films (the paper: 224 pixels, 30 passes), to fit a 2-core computer. A CMTNet was trained the same "
                     f"way beside them: compare the deep baselines with that row, not with this report's own CMTNet "
                     f"({params.data.image_size} pixels, {params.train.epochs} pass{'es' if params.train.epochs != 1 else ''})."
                     + (f" After {passes} the networks outline the lungs but have not yet learnt the faint disease "
                        "regions: disease scores at this setting say little." if epochs < 3 else ""))
    narrow = list(dict.fromkeys(f"{'CMTNet' if e.role == 'cmtnet' else e.label} {e.width:g}" for e in entries
                                if e.role != "embedding" and e.width != 1.0 and e.model != "resnet18"))
    if narrow:
        notes.append("Narrower networks than the paper's (the share of the full network's channels kept): " + "; ".join(narrow) + ".")
    if any(e.init.startswith("random") for e in entries if e.role != "embedding"):
        notes.append("Random starting weights (the paper started from ImageNet weights): narrowed networks cannot take "
                     "ImageNet weights, none exist for UNet, and the CPU report asks for none; the 'starting weights' "
                     "column says which applies to each.")
    if len({e.seed for e in entries if e.role != "embedding"}) < 3:
        notes.append("One training seed per network: how much a result moves from one training to the next (the paper's "
                     "Fig. 7) needs at least 3 seeds, as params/paper.yaml runs on a GPU.")
    for e in (e for e in entries if e.model.startswith("maskrcnn") and e.primary):
        words = [(f"{e.label} learned from {e.setting.split(', ', 3)[-1]}: its loss uses only films whose lung and disease "
                  "outlines are both known. It is scored on every test film.")] if "training films" in e.setting else []
        words += ["Its backbone is ResNet18 (the paper's: ResNet50)."] if e.model == "maskrcnn" else []
        words += [("It finds the lungs within one pass but needs 5 to 8 to find disease regions (600 phantoms at 64 px): "
                   "its disease scores here are under-trained.")] if epochs < 5 else []
        notes += [" ".join(words)] if words else []
    return notes


