"""The evaluation page (03): the test metrics, the COVID-19 threshold, the test films unlike the
training films (cmtlib.indist), results by view and by source, in plain words and tables."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pandas as pd

from cmtlib.explain.plots import group_table
from cmtlib.metrics.operating import describe_rule
from cmtlib.report.pages.tables import as_number, get_path

# metrics.json key -> (plain name, how to read it). The order is the page's.
METRICS = (
    ("covid.auc", "COVID-19 detection: area under the ROC curve",
     "1 = every COVID-19 film scores above every other film; 0.5 = chance"),
    ("covid.sens_at_spec99", "COVID-19 detection: sensitivity at 99 % specificity (threshold chosen on validation)",
     "share of COVID-19 films flagged at the threshold fixed beforehand on the validation films to allow 1 false alarm in 100"),
    ("covid.sens_at_spec99_oracle", "COVID-19 detection: sensitivity at 99 % specificity (threshold chosen on the test films)",
     "the same with the threshold tuned on the test films themselves: optimistic, an upper bound"),
    ("covid.sensitivity", "COVID-19 detection: sensitivity at the run's threshold",
     "share of COVID-19 films flagged at the operating threshold fixed at training (see below)"),
    ("covid.specificity", "COVID-19 detection: specificity at the run's threshold",
     "share of COVID-negative films left unflagged at that threshold"),
    ("covid.eer", "COVID-19 detection: equal error rate",
     "error rate at the threshold where missed COVID-19 films and false alarms are equally common (lower is better)"),
    ("covid.accuracy", "COVID-19 detection: accuracy at probability 0.5", "share of films called correctly COVID-19 or not"),
    ("healthy.accuracy", "Healthy or unhealthy: accuracy at probability 0.5", "share of films called correctly healthy or unhealthy"),
    ("other.accuracy", "Other disease: accuracy at probability 0.5", "share of films called correctly as showing another disease or not"),
    ("covid_as_unhealthy", "COVID-19 films called unhealthy",
     "share of COVID-19 films that the healthy/unhealthy output calls unhealthy (higher is better)"),
    ("lung.dice", "Lung outline: Dice overlap", "overlap of the outlined lungs with the reference outline (1 = identical, 0 = none)"),
    ("lung.iou", "Lung outline: intersection over union", "a stricter overlap score (1 = identical)"),
    ("disease.dice", "Disease region: Dice overlap", "overlap with the reference disease region, on films that have one (1 = identical)"),
    ("disease.iou", "Disease region: intersection over union", "a stricter overlap score (1 = identical)"),
    ("calibration.ece", "COVID-19 probability: expected calibration error",
     "average gap between the stated COVID-19 probability and how often it is COVID-19 (0 = honest probabilities)"),
)
# by_view / by_source tables: (metrics key, plain column name).
GROUP_KEYS = (("covid.auc", "COVID-19 AUC"), ("covid.sens_at_spec99", "sensitivity at 99 % specificity"),
              ("covid.accuracy", "COVID-19 accuracy"), ("healthy.accuracy", "healthy/unhealthy accuracy"),
              ("lung.dice", "lung Dice"), ("disease.dice", "disease Dice"), ("calibration.ece", "calibration error"))
CONFUSION_COLUMNS = {"n": "films", "tn": "true negatives", "fp": "false positives", "fn": "false negatives",
                     "tp": "true positives", "task": "decision"}
MIN_NEGATIVES = 100  # below this a 1 % false-alarm rate cannot be estimated (DESIGN.md, Metrics)


def _metric(metrics: dict | None, key: str) -> tuple[Any, Any, Any]:
    """(value, ci_low, ci_high) of a dotted metrics.json key ('covid_as_unhealthy' is top-level)."""
    section, _, name = key.rpartition(".")
    block = get_path(metrics, section) if section else metrics
    if not isinstance(block, dict):
        return None, None, None
    return block.get(name), block.get(f"{name}_ci_low"), block.get(f"{name}_ci_high")


def metrics_table(metrics: dict | None) -> pd.DataFrame:
    """The test metrics with plain names: measure, value, 95 % confidence interval, how to read it."""
    rows = []
    for key, name, meaning in METRICS:
        value, low, high = _metric(metrics, key)
        v, lo, hi = as_number(value), as_number(low), as_number(high)
        rows.append({"measure": name,
                     "value": "not available (no ground truth)" if v is None else f"{v:.3f}",
                     "95 % confidence interval": "" if v is None or lo is None or hi is None else f"{lo:.3f} to {hi:.3f}",
                     "how to read it": meaning})
    return pd.DataFrame(rows)


def threshold_text(threshold: dict | None) -> str:
    """The COVID-19 operating threshold in words, from the run's threshold record (Run.threshold): its
    value, the rule that chose it, how it did on the validation films, and how it differs from the
    paper's 99 %-specificity point."""
    threshold = threshold or {}
    t = as_number(threshold.get("covid_threshold"))
    if t is None:
        return ("No COVID-19 threshold could be chosen on the validation films (none is COVID-negative, or the model has "
                "no COVID-19 output), so no film is called COVID-19 and sensitivity at 99 % specificity is not available.")
    rule = threshold["threshold_rule"]
    spec, sens = as_number(threshold.get("val_specificity")), as_number(threshold.get("val_sensitivity"))
    on_val = (f" On those films it left {spec:.0%} of the COVID-negative films unflagged and caught {sens:.0%} of the COVID-19 films."
              if spec is not None and sens is not None else "")
    paper = as_number(threshold.get("spec99_threshold"))
    return (f"The COVID-19 threshold is {t:.3g}: a film whose COVID-19 probability is at or above it is called COVID-19. It was "
            f"fixed when the network was trained, on the validation films, by this rule: {describe_rule(rule)} "
            f"(`{rule}`).{on_val} It is held fixed for the test films and for any other collection: nothing is re-tuned on the "
            "films being judged." + (f" The paper's measure, sensitivity at 99 % specificity, uses a threshold of its own "
                                      f"({paper:.3g}), set on the same validation films." if paper is not None else ""))


def negatives_warnings(metrics: dict | None, threshold: dict | None) -> list[str]:
    """With fewer than 100 COVID-negative films in validation or test, that the 1 % false-alarm rate
    cannot be estimated there (DESIGN.md, Metrics); [] otherwise."""
    out = []
    n_val = (threshold or {}).get("n_negative")
    if n_val is not None and int(n_val) < MIN_NEGATIVES:
        out.append(f"The validation split has only {int(n_val)} COVID-negative films, fewer than {MIN_NEGATIVES}: the 1 % "
                   "false-alarm rate cannot be estimated. The threshold sits above every validation negative, so "
                   "'sensitivity at 99 % specificity' here means sensitivity with no validation false alarm.")
    n_test = get_path(metrics, "counts.n_negative")
    if n_test is not None and int(n_test) < MIN_NEGATIVES:
        out.append(f"The test split has only {int(n_test)} COVID-negative films, fewer than {MIN_NEGATIVES}: the 1 % "
                   "false-alarm rate cannot be estimated on it (a single false alarm is already more than 1 %).")
    return out


# metrics.json names in the evaluation's notes -> plain words (longest first, so no name is cut).
_NOTE_WORDS = {"sens_at_spec99_oracle": "sensitivity at 99 % specificity (threshold chosen on the test films)",
               "sens_at_spec99": "sensitivity at 99 % specificity", "covid_as_unhealthy": "COVID-19 films called unhealthy",
               "calibration.ece": "calibration error", "covid.": "COVID-19 ", "healthy.": "healthy/unhealthy ",
               "other.": "other-disease ", "lung.": "lung ", "disease.": "disease ", "dice": "Dice", "iou": "IoU",
               "auc": "AUC", "eer": "equal error rate", "CIs": "confidence intervals", "CI null": "no confidence interval"}
_NOTE_RE = re.compile("|".join(rf"(?<!\w){re.escape(k)}" + (r"(?!\w)" if k[-1].isalnum() else "")
                               for k in sorted(_NOTE_WORDS, key=len, reverse=True)))


def plain_notes(notes: Iterable[str]) -> list[str]:
    """metrics.json's notes with its key names replaced by plain words."""
    return [_NOTE_RE.sub(lambda m: _NOTE_WORDS[m.group(0)], str(n)) for n in notes or []]


def counts_text(metrics: dict | None) -> str:
    c = get_path(metrics, "counts") or {}
    if not c:
        return "The test counts were not recorded."
    return (f"{c.get('n_images', '?')} test films from {c.get('n_patients', '?')} patients: {c.get('n_covid', '?')} "
            f"COVID-19 and {c.get('n_negative', '?')} COVID-negative (the rest have no COVID-19 label).")


def group_metrics_table(metrics: dict, by: str) -> pd.DataFrame:
    """metrics.json's by_view / by_source with plain column names (values 'x (low-high)')."""
    if f"by_{by}" not in (metrics or {}):
        return pd.DataFrame()
    return group_table(metrics, by, GROUP_KEYS).rename(columns={"images": "films", "COVID-19": "COVID-19 films"})


def confusion_table(table: pd.DataFrame) -> pd.DataFrame:
    """review.group_confusion_table with plain column names."""
    return table.rename(columns=CONFUSION_COLUMNS)


def ci_sentence(metrics: dict | None) -> str:
    ci = get_path(metrics, "ci") or {}
    n = ci.get("n_boot")
    return ("Confidence intervals: 95 %, from " + (f"{n} " if n else "") + "bootstrap resamples of the test patients "
            "(a patient's films stay together), with the threshold held fixed. A wide interval means few test films.")


# ---- the in-distribution check (cmtlib.indist): predictions.csv's in_distribution, ood_score, ood_reason ----
def flags(df: pd.DataFrame | None) -> pd.Series | None:
    """Each film's in-distribution verdict as 1 / 0 (NaN unknown); None when the check did not run."""
    if df is None or "in_distribution" not in df.columns:
        return None
    values = pd.to_numeric(df["in_distribution"], errors="coerce")
    return None if values.isna().all() else values


def common_reasons(df: pd.DataFrame, top: int = 3) -> str:
    """The reasons given for the flagged films of `df`, most frequent first: 'lungs not found (4), ...'."""
    reasons = df.get("ood_reason", pd.Series(dtype=str)).fillna("").astype(str)
    counts = pd.Series([r for text in reasons for r in text.split("; ") if r]).value_counts()
    return ", ".join(f"{r} ({n})" for r, n in counts.head(top).items())


def flag_counts(df: pd.DataFrame, threshold: float | None = None) -> dict[str, Any]:
    """Films, films flagged and their share, and what the flagged films score: their COVID-19
    probabilities (median and range) and how many reach the COVID-19 threshold."""
    f = flags(df)
    flagged = df[f == 0] if f is not None else df.iloc[:0]
    p = pd.to_numeric(flagged.get("p_covid", pd.Series(dtype=float)), errors="coerce").dropna()
    out: dict[str, Any] = {"films": len(df), "flagged": len(flagged), "share flagged": f"{100 * len(flagged) / len(df):.1f} %" if len(df) else ""}
    out["COVID-19 probability of the flagged films"] = (f"median {p.median():.2f} (from {p.min():.2f} to {p.max():.2f})" if len(p) else "")
    if threshold is not None:
        out["flagged films at or above the threshold"] = int((p >= threshold).sum())
    out["most common reasons"] = common_reasons(flagged)
    return out


def in_distribution_text(metrics: dict | None, predictions: pd.DataFrame | None) -> str:
    """How many test films the in-distribution check flagged, against the share it was set to flag."""
    block = get_path(metrics, "in_distribution") or {}
    if flags(predictions) is None or not block.get("available"):
        why = block.get("why_not") or "the run holds no record of its training films"
        return f"The check for films unlike the training films is not available for this run: {why}."
    c = flag_counts(predictions)
    set_share, val_share = as_number(block.get("share_set")), as_number(block.get("validation_share_flagged"))
    on_val = f" ({100 * val_share:.1f} % of the validation films were)" if val_share is not None else ""
    return (f"{c['flagged']} of {c['films']} test films ({c['share flagged']}) look unlike the films this network was trained on. The "
            f"check compares each film with the training films as the network sees them (its image features), by its lung outline "
            f"and by the film's brightness, contrast, sharpness, layout and orientation; its limits were set when the network was "
            f"trained, on the validation films, to flag at most {100 * (set_share or 0):.0f} % of films like them{on_val}. "
            "`cmt predict` gives a flagged film no COVID-19 call; the measures on this page still count every test film, flagged or not.")


def in_distribution_table(predictions: pd.DataFrame | None) -> pd.DataFrame:
    """Per source collection of the test films: films, flagged, share flagged, the flagged films'
    COVID-19 probabilities and the most common reasons (empty when the check did not run)."""
    if flags(predictions) is None:
        return pd.DataFrame()
    source = predictions["source"].fillna("").replace("", "unknown")
    rows = [{"films from": "all test films", **flag_counts(predictions)}]
    rows += [{"films from": name, **flag_counts(group)} for name, group in predictions.groupby(source, sort=True)] if source.nunique() > 1 else []
    return pd.DataFrame(rows)
