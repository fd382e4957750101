"""The comparison page (09_baselines): CMTNet against the paper's baselines (Section V, Table IV, Figs. 5-8).

``ensure_comparison(params, run_dir, report_dir)`` trains and evaluates, with the one engine, the run's
data and split and the same metrics, each baseline of ``report_baselines`` for each seed of
``report_seeds``; a CMTNet at the baselines' setting whenever that setting is reduced (smaller images,
fewer epochs), so that deep baselines are compared with a CMTNet trained exactly like them; and the
embedding classifiers on the run's own CMTNet embeddings. What a report folder already holds is reused
(page 07 may call it first for the baselines' Grad-CAMs). Layout:

    <report_dir>/comparison/
        comparison.json           what was compared: entries, settings, seconds
        <name>-seed<s>/           a run folder (config, checkpoints, metrics.json, predictions.csv)
        embedding/<kind>/         an embedding classifier's predictions.csv, metrics.json, selection.json

Mask R-CNN's training subset of the cache (every test film kept) is a data product, not a report
one: it lies beside the cache it comes from (`<cache>-maskrcnn-<n>`), whose index names the
original files, so no file name of the source collections lands in the report folder.

Tables and figures take the returned ``Comparison``; images are named by image_id only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmtlib.errors import ConfigError
from cmtlib.baselines import (
    DEEP_BASELINES,
    EMBEDDING_CLASSIFIERS,
    baseline_params_files,
    metrics_row,
    setting_params,
    subset_cache,
)
from cmtlib.fileio import write_json
from cmtlib.report.tables import ci_text, get_path

ROLES = ("cmtnet", "classifier", "segmentation", "embedding")
LABELS = {"segnet_lung": "SegNet, lung only", "segnet_disease": "SegNet, disease only"}
CLASSIFICATION_COLUMNS = (("covid.sens_at_spec99", "COVID-19 sensitivity at 99 % specificity"), ("covid.auc", "COVID-19 AUC"),
                          ("covid.eer", "equal error rate"), ("covid.accuracy", "COVID-19 accuracy"))
SEGMENTATION_COLUMNS = (("lung.dice", "lung Dice"), ("lung.iou", "lung IoU"), ("disease.dice", "disease Dice"),
                        ("disease.iou", "disease IoU"))


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
        return json.loads((self.folder / "metrics.json").read_text(encoding="utf-8"))

    def predictions(self) -> pd.DataFrame:
        return pd.read_csv(self.folder / "predictions.csv", dtype={"image_id": str, "patient_id": str})


@dataclass
class Comparison:
    entries: list[Entry]
    seeds: list[int]
    notes: list[str] = field(default_factory=list)  # what was reduced, in plain words
    seconds: float = 0.0  # wall time of the ensure_comparison call that made it

    def select(self, *roles: str, first_seed: bool = True) -> list[Entry]:
        """Entries of these roles; first_seed keeps the primary one of each method (see Entry)."""
        return [e for e in self.entries if e.role in roles and (e.primary or not first_seed)]


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
    from cmtlib.report.session import load_run

    run = load_run(folder)
    c, model, width = run.config, str(run.config.get("model", "")), float(run.config.get("width", 1.0))
    setting = f"{c.get('image_size')} px, {c.get('epochs')} epoch{'s' if int(c.get('epochs', 0)) != 1 else ''}, width {width:g}"
    if subset:  # Mask R-CNN's loss uses only films with both outlines known; subset_cache samples those
        pool = json.loads((Path(run.info["data_cache"]) / "meta.json").read_text()).get("train_pool")
        setting += f", {run.info.get('n_train')} training films" + (" (all with both outlines)" if run.info.get("n_train") == pool
                                                                     else f" (of {pool} with both outlines)")
    init = init_words(run.info.get("encoder_weights_source", ""), model, width)
    return Entry(key, label, role, folder, seed, setting, init, seconds, model, width)


def _quiet_run(params, folder: Path) -> float | None:
    """Train and evaluate into folder unless it holds that evaluated run; seconds, or None if reused."""
    from cmtlib.report.session import ensure_run, load_run

    if (folder / "metrics.json").is_file() and load_run(folder).metrics is not None:
        ensure_run(params, folder)  # checks that the folder's run was made with these params
        return None
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ensure_run(params, folder, quiet=True)
    return round(time.perf_counter() - t0, 1)


def plan(params) -> list[tuple[str, Path | None, int]]:
    """(name, params file or None for CMTNet, seed) of every deep run beside the report's own."""
    rc = params.report
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
    return params.data.image_size if params.data.cache_dir else (params.report.baseline_image_size or params.data.image_size)


def ensure_comparison(params, run_dir: str | Path, report_dir: str | Path) -> Comparison:
    """Every compared method trained (or found) and evaluated; see the module docstring."""
    from cmtlib.data.prepare import prepare_data
    from cmtlib.report.session import ensure_run

    t0 = time.perf_counter()
    rc, root, run_dir = params.report, Path(report_dir).resolve() / "comparison", Path(run_dir).resolve()
    with contextlib.redirect_stdout(io.StringIO()):
        ensure_run(params, run_dir)
    old = json.loads((root / "comparison.json").read_text()) if (root / "comparison.json").is_file() else {}
    spent = {(e["key"], e["seed"]): e["seconds"] for e in old.get("entries", [])}  # a reused run keeps its first time
    seeds, size, epochs = list(rc.report_seeds) or [params.train.seed], _baseline_size(params), rc.baseline_epochs or params.train.epochs
    deep = plan(params)
    reduced = (size, epochs) != (params.data.image_size, params.train.epochs)
    entries = [_entry("cmtnet-run", "CMTNet (this report's run)" if reduced else "CMTNet", "cmtnet", run_dir, params.train.seed, None)]
    for key, file, seed in deep:
        folder = root / f"{key}-seed{seed}"
        p = setting_params(params, key, file, image_size=size, epochs=epochs, seed=seed, overrides=rc.baseline_overrides if file else (), run_dir=folder)
        subset = p.model.model.startswith("maskrcnn") and rc.baseline_maskrcnn_max_images > 0
        if subset:
            with contextlib.redirect_stdout(io.StringIO()):
                source = prepare_data(p)
                n = rc.baseline_maskrcnn_max_images
                cache = subset_cache(source, source.with_name(f"{source.name}-maskrcnn-{n}"), n, seed=0)
            p = dataclasses.replace(p, data=dataclasses.replace(p.data, cache_dir=str(cache)))
        seconds = _quiet_run(p, folder)
        role = "cmtnet" if file is None else ("classifier" if "multilabel" in p.model.tasks else "segmentation")
        label = ("CMTNet (at the baselines' setting)" if reduced else "CMTNet") if file is None else LABELS.get(key, DEEP_BASELINES.get(p.model.model, key))
        entries.append(_entry(key, label, role, folder, seed, spent.get((key, seed)) if seconds is None else seconds, subset))
        entries[-1].primary = seed == seeds[0] and not (file is None and not reduced)  # without reduction the run is CMTNet's row
    # Embedding classifiers per CMTNet seed trained at the run's own setting (the run; more with >1 seed and no reduction).
    sources = [(params.train.seed, run_dir)] + ([] if reduced else [(e.seed, e.folder) for e in entries if e.key == "cmtnet"])
    for seed, source in sources:
        entries += _embedding_entries(params, source, root / "embedding", seed, seed != params.train.seed, entries[0].label, spent)
    comp = Comparison(entries, seeds, reduction_notes(params, entries), round(time.perf_counter() - t0, 1))
    write_json(root / "comparison.json", {"seeds": seeds, "notes": comp.notes, "seconds_this_call": comp.seconds,
                                          "seconds_trained": round(sum(e.seconds or 0 for e in entries), 1),
                                          "entries": [{**dataclasses.asdict(e), "folder": str(e.folder)} for e in entries]})
    return comp


def _embedding_entries(params, source: Path, out: Path, seed: int, suffix: bool, run_label: str, spent: dict) -> list[Entry]:
    """The embedding classifiers on one CMTNet run's embeddings (made unless out/<kind>[-seedS] holds them)."""
    from cmtlib.baselines import run_embedding_classifiers, run_embeddings

    kinds = [k for k in params.report.report_embedding_classifiers if k in EMBEDDING_CLASSIFIERS]
    out = out / f"seed{seed}" if suffix else out
    todo = [k for k in kinds if not (out / k / "metrics.json").is_file()]
    t0 = time.perf_counter()
    if todo:
        run_embedding_classifiers(run_embeddings(source, device="cpu"), todo, seed=seed, out_dir=out)
    each = round((time.perf_counter() - t0) / len(todo), 1) if todo else None
    return [Entry(k, EMBEDDING_CLASSIFIERS[k], "embedding", out / k, seed, f"on the embeddings of {run_label}", "none: fitted on "
                  "CMTNet's features", each if k in todo else spent.get((k, seed)), k, primary=not suffix) for k in kinds]


def reduction_notes(params, entries: list[Entry]) -> list[str]:
    """What the comparison departs from the paper's protocol in, in plain words ([] = nothing)."""
    rc, notes = params.report, []
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


def method_text(comp: Comparison) -> str:
    """How every method was trained and scored, in one paragraph."""
    n_test = len(comp.entries[0].predictions())
    deep = [e for e in comp.select("classifier", "segmentation")]
    return (f"{len(comp.select(*ROLES))} methods are compared on the same {n_test} test films. "
            + (f"The {len(deep)} other networks were trained by the same training program as CMTNet, on the same films, "
               "the same split into training, validation and test films (by patient) and the same image augmentation, "
               "and scored with the same measures; each chose its alarm threshold on the validation films. " if deep else "")
            + "The embedding classifiers (SVMs and a random forest) learned from the features CMTNet computes for each "
              "film, on the training films, with their settings chosen on the validation films.")


# ---- tables ----------------------------------------------------------------------------------

def rows_frame(entries: list[Entry]) -> pd.DataFrame:
    """One numeric row per entry (cmtlib.baselines.metrics_row: value, _ci_low, _ci_high columns)."""
    return pd.DataFrame([metrics_row(e.label, e.metrics(), key=e.key, role=e.role, seed=e.seed, setting=e.setting, init=e.init)
                         for e in entries])


def _table(entries: list[Entry], columns) -> pd.DataFrame:
    rows = []
    for e in entries:
        m = e.metrics()
        row = {"method": e.label, "trained at": e.setting, "starting weights": e.init}
        for key, name in columns:
            section, metric = key.split(".")
            block = get_path(m, section) or {}
            row[name] = ci_text(block.get(metric), block.get(f"{metric}_ci_low"), block.get(f"{metric}_ci_high"))
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "trained at", "starting weights", *(n for _, n in columns)])


def _order(comp: Comparison, roles: tuple[str, ...]) -> list[Entry]:
    """Deep baselines, then CMTNet at their setting, then the embedding classifiers, then the run."""
    rank = {"classifier": 0, "segmentation": 0, "embedding": 2}
    return sorted(comp.select(*roles), key=lambda e: (3 if e.key == "cmtnet-run" else (1 if e.role == "cmtnet" else rank[e.role])))


def classification_table(comp: Comparison) -> pd.DataFrame:
    """Table IV: COVID-19 sensitivity at 99 % specificity, AUC, EER and accuracy, each with its 95 % CI;
    with several seeds, the spread of the sensitivity over them."""
    entries = _order(comp, ("cmtnet", "classifier", "embedding"))
    table = _table(entries, CLASSIFICATION_COLUMNS)
    if len(comp.seeds) > 1:
        table["sensitivity over seeds"] = [seed_spread_text(comp, e.label) for e in entries]
    return table


def segmentation_table(comp: Comparison) -> pd.DataFrame:
    """Lung and disease Dice and IoU (95 % CIs) of the segmentation baselines and CMTNet's decoders."""
    return _table(_order(comp, ("cmtnet", "segmentation")), SEGMENTATION_COLUMNS)


def seed_values(comp: Comparison, label: str, key: str = "covid.sens_at_spec99") -> list[float]:
    return [float(v) for e in comp.entries if e.label == label and (v := get_path(e.metrics(), key)) is not None]


def seed_spread_text(comp: Comparison, label: str) -> str:
    v = seed_values(comp, label)
    if len(v) < 2:
        return "one seed"
    return f"mean {np.mean(v):.3f}, SD {np.std(v, ddof=1):.3f} ({len(v)} seeds)"  # the paper's Fig. 7 gives the SD


def timing_caption(comp: Comparison) -> str:
    total = sum(e.seconds or 0 for e in comp.entries)
    return (f"Seconds each method took to train and score on the machine that made this report ({total:.0f} s in all); "
            "a method trained earlier, for another page, is reused rather than trained again. The embedding classifiers "
            "share their time equally; an empty cell was not recorded.")


def timing_table(comp: Comparison) -> pd.DataFrame:
    """Seconds each method took here (training and evaluation); '' where it was made earlier."""
    return pd.DataFrame([{"method": e.label, "seed": e.seed, "seconds": "" if e.seconds is None else f"{e.seconds:.0f}"}
                         for e in comp.entries if e.key != "cmtnet-run"])


# ---- figures ---------------------------------------------------------------------------------

def seed_figure(comp: Comparison, dpi: int = 110):
    """Fig. 7: COVID-19 sensitivity at 99 % specificity of each method of Table IV (one row each), one
    dot per training seed (the embedding classifiers: per seed of the CMTNet whose embeddings they
    use); with a single seed, the 95 % interval of that run as a grey bar."""
    from cmtlib.report.figures import OKABE_ITO, new_figure, style

    entries = _order(comp, ("cmtnet", "classifier", "embedding"))
    colours = {"cmtnet": OKABE_ITO["vermillion"], "classifier": OKABE_ITO["blue"], "embedding": OKABE_ITO["green"]}
    with style(dpi):
        fig, axes = new_figure(1, 1, width=7.0, height=0.45 * len(entries) + 1.2, dpi=dpi)
        ax = axes[0, 0]
        for i, e in enumerate(entries):
            values = seed_values(comp, e.label)
            c = e.metrics().get("covid") or {}
            if len(values) == 1 and c.get("sens_at_spec99_ci_low") is not None:
                ax.plot([c["sens_at_spec99_ci_low"], c["sens_at_spec99_ci_high"]], [i, i], color=OKABE_ITO["grey"], lw=6, alpha=0.45)
            ax.plot(values, np.full(len(values), i), "o", color=colours[e.role], ms=7, alpha=0.85)
        ax.set_yticks(range(len(entries)), [e.label for e in entries])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("COVID-19 sensitivity at 99 % specificity")
        ax.set_title(f"One dot per training seed ({len(comp.seeds)} seed{'s' if len(comp.seeds) > 1 else ''})", fontsize=10)
    return fig


def seed_caption(comp: Comparison) -> str:
    if len(comp.seeds) >= 3:
        return (f"Each dot is one training of the network with another random seed ({len(comp.seeds)} seeds): how far "
                "the dots spread shows how much the result depends on chance in training, as in the paper's Fig. 7.")
    return ("Each dot is one training of the network; this report trained each network once, so the spread between "
            "trainings cannot be shown: it needs at least 3 seeds, as params/paper.yaml runs on a GPU. The grey bar is the "
            "95 % confidence range of that single training, which reflects the number of test films, not chance in training.")


def roc_comparison_figure(comp: Comparison, dpi: int = 110):
    """Fig. 8: COVID-19 ROC curves on the test films; left the deep networks, right the classifiers on
    CMTNet's embedding (with the CMTNet run whose embedding they use, dashed)."""
    from cmtlib.metrics import roc_auc, roc_curve
    from cmtlib.report.figures import OKABE_ITO, PALETTE, new_figure, style

    run = [e for e in comp.entries if e.key == "cmtnet-run"]
    panels = (("Deep networks", [e for e in _order(comp, ("cmtnet", "classifier")) if e.key != "cmtnet-run"] or run),
              ("Classifiers on CMTNet's embedding", _order(comp, ("embedding",))))
    with style(dpi):
        fig, axes = new_figure(1, 2, width=4.6, height=4.2, dpi=dpi)
        for ax, (title, entries) in zip(axes[0], panels):
            for i, e in enumerate(entries + (run if title.startswith("Classifiers") else [])):
                df = e.predictions()
                y, s = pd.to_numeric(df["label_covid"], errors="coerce"), pd.to_numeric(df["p_covid"], errors="coerce")
                keep = (y.notna() & s.notna()).to_numpy()
                if keep.sum() == 0 or len(np.unique(y[keep])) < 2:
                    continue
                fpr, tpr, _ = roc_curve(y[keep].to_numpy(), s[keep].to_numpy())
                dashed = e.key == "cmtnet-run" and title.startswith("Classifiers")
                ax.plot(fpr, tpr, drawstyle="steps-post", lw=2 if e.role == "cmtnet" else 1.3, ls="--" if dashed else "-",
                        color=OKABE_ITO["black"] if e.role == "cmtnet" else PALETTE[i % len(PALETTE)],
                        label=f"{e.label} (AUC {roc_auc(y[keep].to_numpy(), s[keep].to_numpy()):.3f})")
            ax.plot([0, 1], [0, 1], color=OKABE_ITO["grey"], lw=0.8)
            ax.axvline(0.01, color=OKABE_ITO["grey"], ls=":", lw=1)
            ax.set(xlabel="false-positive rate (1 - specificity)", ylabel="sensitivity", title=title, ylim=(0, 1.02))
            ax.legend(loc="lower right", fontsize=7)
    return fig


@dataclass
class OverlaySet:
    """Test films with reference masks and each segmentation method's predicted probabilities."""

    images: np.ndarray  # (N, S, S) uint8, from the report's run's cache
    true: dict[str, np.ndarray]  # task -> (N, S, S) bool
    predicted: dict[str, dict[str, np.ndarray]]  # method label -> task -> (N, S, S) float in [0, 1], resized to S
    dice: dict[str, dict[str, np.ndarray]]  # method label -> task -> (N,) Dice at the method's own image size
    image_ids: list[str]


def choose_films(index: pd.DataFrame, has_region: np.ndarray, n: int = 4, seed: int = 0) -> list[str]:
    """Test films with both reference masks and a disease region: half COVID-19 and half other disease
    where there are enough, else any such film; a seeded choice, in image_id order."""
    ok = ((index["split"] == "test") & (index["has_lung"] == "1") & (index["has_disease"] == "1")).to_numpy() & has_region
    rng = np.random.default_rng(seed)
    picked: list[str] = []
    for label, k in (("label_covid", n - n // 2), ("label_other", n // 2), ("", n)):
        pool = sorted(set(index.loc[ok & ((index[label] == "1").to_numpy() if label else True), "image_id"].astype(str)) - set(picked))
        k = min(k, n - len(picked), len(pool))
        picked += [str(i) for i in rng.choice(pool, size=k, replace=False)] if k > 0 else []
    return sorted(picked)


def overlay_set(comp: Comparison, n: int = 4, seed: int = 0) -> OverlaySet:
    """Figs. 5-6: the same test films (``choose_films``) through every segmentation baseline and CMTNet,
    each model on the films of its own cache (its own image size), shown at the report run's size."""
    from cmtlib.data.cache import open_cache
    from cmtlib.explain.overlays import load_images, predict_masks
    from cmtlib.metrics import dice

    seg = _order(comp, ("cmtnet", "segmentation"))
    index, _, _, disease, _ = open_cache(_cache(seg[-1]))
    ids = choose_films(index, np.asarray(disease).reshape(len(index), -1).any(1), n, seed)
    shown = load_images(_cache(seg[-1]), image_ids=ids)
    predicted, scores = {}, {}
    for e in seg:
        films = load_images(_cache(e), image_ids=ids)
        probs = predict_masks(_model(e)[0], films.images)
        predicted[e.label] = {k: _resized(v, shown.images.shape[-1]) for k, v in probs.items()}
        scores[e.label] = {k: dice(v >= 0.5, getattr(films, k)) for k, v in probs.items()}
    return OverlaySet(shown.images, {"lung": shown.lung, "disease": shown.disease}, predicted, scores, shown.image_ids)


def _cache(e: Entry) -> str:
    from cmtlib.report.session import load_run

    return str(load_run(e.folder).info.get("data_cache", ""))


def _model(e: Entry):
    """(the entry's best model on the CPU, its input side)."""
    from cmtlib.checkpoint import load_model

    model, meta = load_model(e.folder, "best", "cpu")
    return model, int(meta["preprocessing"]["input_size"][0])


def _resized(a: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S) arrays resized to (N, size, size): bilinear, uint8 kept uint8."""
    import torch
    import torch.nn.functional as F

    if a.shape[-1] == size:
        return a
    t = F.interpolate(torch.as_tensor(np.asarray(a, dtype=np.float32))[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return t.round().clamp(0, 255).numpy().astype(np.uint8) if a.dtype == np.uint8 else t.numpy()


def overlay_figure(data: OverlaySet, task: str = "lung", dpi: int = 110):
    """One row per film; columns: the reference outline, then each method's (p >= 0.5) with its Dice
    (at the method's own image size, as in the segmentation table)."""
    from cmtlib.report.figures import DISEASE_COLOUR, LUNG_COLOUR, new_figure, style

    methods = [m for m, p in data.predicted.items() if task in p]
    colour = LUNG_COLOUR if task == "lung" else DISEASE_COLOUR
    with style(dpi):
        fig, axes = new_figure(len(data.images), 1 + len(methods), width=2.2, height=2.35, dpi=dpi)
        for r, img in enumerate(data.images):
            for c, name in enumerate(["reference", *methods]):
                ax = axes[r, c]
                ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
                ax.set_axis_off()
                mask = data.true[task][r] if c == 0 else data.predicted[name][task][r] >= 0.5
                if mask.any():
                    ax.contourf(mask.astype(float), levels=[0.5, 1.5], colors=[colour], alpha=0.35)
                    ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
                score = "" if c == 0 else f"\nDice {data.dice[name][task][r]:.2f}"
                head = (name if r == 0 or c == 0 else "").replace(", ", ",\n").replace(" (", "\n(")
                ax.set_title((f"{data.image_ids[r]}\n" if c == 0 else "") + head + score, fontsize=7)
    return fig


# ---- Grad-CAM of the classification baselines (for page 07) -------------------------------------

def baseline_cams(comp: Comparison, images, target_index: int = 0, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Grad-CAM of the COVID-19 logit (``target_index`` 0 of ``multilabel``) of each trained
    classification baseline (first seed) on ``images``, each at the baseline's own input size and
    brought back to the images' size.

    Shape:
        images: (N, H, W) uint8 or float in [0, 1] (H == W); returns label -> (N, H, W) float32 in [0, 1].
    """
    from cmtlib.explain.cam import compute_cams

    images = np.asarray(images)
    out = {}
    for e in comp.select("classifier"):
        model, size = _model(e)
        x = _resized(images if images.dtype == np.uint8 else images.astype(np.float32), size)
        maps = compute_cams(model, x, methods=("gradcam",), target_index=target_index, batch_size=batch_size)["gradcam"]
        out[e.label] = np.clip(_resized(maps, images.shape[-1]), 0, 1).astype(np.float32)
    return out
