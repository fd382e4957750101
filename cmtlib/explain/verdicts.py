"""The shortcut audit's two verdicts, from its checks (cmtlib.experiments.audit.measure).

The DATA verdict: which cues predict the label in these films. A metadata cue (source, view,
original size) when its levels predict the label on the test films (AUC at least DATA_AUC, the
interval above 0.5); an image region (frame, corners, outside the lungs) when a thumbnail floor on it
does (AUC at least FLOOR_AUC, the interval above 0.5; the regions overlap: outside the lungs holds
the frame and the corners, so a mark in the corners is named there too). A cue in the data is a
risk, not a shortcut: a network may or may not follow it.

The NETWORK verdict: which cues the network's score follows. A cue is named when its deciding
check moves the score by at least NET_EFFECT (in p(COVID-19)), the interval above 0:
- a region or a look: swapping it for a film of the other class rather than of the same class
  (cmtlib.explain.swaps). "Outside the lungs" holds the frame and the corners; it is named beside
  them only when it moves the score by NET_EFFECT / 2 more than the larger of the two (lines and
  tubes, the body: something outside the lungs other than the edges);
- a metadata cue: the score difference between its films and the others with the label fixed
  (cmtlib.explain.cue_checks.within_class), judged only where the data verdict names the cue (a cue
  not tied to the label has no direction to follow).
The other checks support or weaken a named cue without deciding it: the embedding's probe within
each class, the floor's output against the score within each class, blanking the lungs, and the
default heat map's share of each region beside its area. Twins never enter either verdict.

Every threshold is here; SETTINGS (written into shortcut_audit.json) changes with them, so a kept
audit made under other thresholds gets its verdicts made again (its measurements do not depend on them).
"""

from __future__ import annotations

import math
from pathlib import Path

from cmtlib.explain.cue_checks import CUE_FLOORS, METADATA
from cmtlib.explain.swaps import LOOKS, REGIONS

AUDIT_FORMAT = 1
CALIBRATION_FILE = "audit_calibration.json"  # beside this module: `cmt audit-calibration --update-package` writes it
DATA_AUC = 0.6
FLOOR_AUC = 0.65
# A cue is named when its deciding check moves p(COVID-19) by this much. Set from the clean runs of the
# calibration alone (no planted cue; docs/audit.md): no check moved their score by more than 0.013, so
# 0.05 is about four times the checks' noise, and the planted runs then test it without having chosen it.
NET_EFFECT = 0.05
PROBE_MARGIN = 0.15  # a within-class probe this much above guessing the commonest level: the embedding encodes the cue
ASSOCIATION = 0.2  # a within-class rank correlation of the score with a floor's output from here on supports the region
BLANKED_HIGH = 0.75  # the score still separates the classes with the lungs blanked
HEAT_RATIO = 2.0  # the heat map puts this many times a region's area into it
SETTINGS = {"data_auc": DATA_AUC, "floor_auc": FLOOR_AUC, "net_effect": NET_EFFECT, "probe_margin": PROBE_MARGIN,
            "association": ASSOCIATION, "blanked_high": BLANKED_HIGH, "heat_ratio": HEAT_RATIO}
# How strong each check's evidence is, as the page states it (real collections get exactly these checks).
STRENGTH = {"swap": "strong: the film itself is changed in that one part, against a same-class placebo",
            "score within each class": "moderate: films with and without the cue are compared, so whatever else goes with "
                                       "the cue (how sick the patients are) counts too",
            "support": "weak: shown beside the deciding check, never naming a cue alone"}
CUES = METADATA + REGIONS + LOOKS  # every cue a verdict can name, in the order the page lists them
OUTSIDE = "outside the lungs"
WORDS = {"source": "the source (hospital or scanner)", "view": "the view (AP or PA)", "original size": "the original image size",
         "frame": "the film's frame (its edges)", "corners": "the film's corners (markers, burned-in text)",
         "outside the lungs": "something outside the lungs", "grey levels": "the film's grey levels (contrast, brightness)",
         "fine detail": "the film's fine detail (noise, sharpness, resolution)"}


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _clears(value, low, bar: float, floor: float) -> bool:
    v, lo = _num(value), _num(low)
    return not math.isnan(v) and v >= bar and not math.isnan(lo) and lo > floor


def _ci(low, high) -> str:
    lo, hi = _num(low), _num(high)
    return "" if math.isnan(lo) or math.isnan(hi) else f" (95 % CI {lo:.2f} to {hi:.2f})"


def _data_metadata(cue: str, m: dict) -> dict:
    tie = m["tie"]
    named = _clears(tie["auc"], tie["ci_low"], DATA_AUC, 0.5)
    if tie.get("note"):
        words = f"{WORDS[cue].capitalize()}: not measured ({tie['note']})."
    else:
        rates = ", ".join(f"{k or 'unknown'} {v:.0%}" for k, v in sorted(tie["rates"].items()))
        words = (f"{WORDS[cue].capitalize()} {'predicts' if named else 'does not clearly predict'} the label: AUC {_num(tie['auc']):.2f}"
                 f"{_ci(tie['ci_low'], tie['ci_high'])} on {tie['n']} test films (share of COVID-19 films by level in training: {rates}).")
    return {"named": named, "check": "metadata", "auc": tie["auc"], "ci_low": tie["ci_low"], "ci_high": tie["ci_high"], "words": words}


def _data_floor(cue: str, f: dict) -> dict:
    named = _clears(f["auc"], f["ci_low"], FLOOR_AUC, 0.5)
    if math.isnan(_num(f["auc"])):
        words = f"{WORDS[cue].capitalize()}: no floor (it needs both classes among the train and the test films)."
        return {"named": False, "check": "image floor", "auc": None, "ci_low": None, "ci_high": None, "words": words}
    words = (f"A simple classifier on a thumbnail of {WORDS[cue].replace('something outside', 'everything outside')} "
             f"{'predicts' if named else 'does not clearly predict'} the label: AUC {_num(f['auc']):.2f}{_ci(f['ci_low'], f['ci_high'])}.")
    return {"named": named, "check": "image floor", "auc": f["auc"], "ci_low": f["ci_low"], "ci_high": f["ci_high"], "words": words}


def data_verdict(checks: dict) -> dict:
    """{named: [cues], cues: {cue: {named, check, auc, ci_low, ci_high, words}}, words} (module docstring)."""
    cues = {cue: _data_metadata(cue, checks["metadata"][cue]) for cue in METADATA}
    cues.update({cue: _data_floor(cue, checks["floors"][cue]) for cue in CUE_FLOORS})
    named = [c for c in cues if cues[c]["named"]]
    whole = checks["floors"].get("whole film", {})
    if named:
        words = (f"These films carry cues that predict the label without the lungs: {_listing(named)}. A network trained on "
                 "them may use these cues instead of the disease; the network verdict says whether this one does.")
    else:
        words = "No cue outside the lungs, and none of source, view or original size, predicts the label in these films."
    if not math.isnan(_num(whole.get("auc"))):
        words += f" For reference, a simple classifier on the whole film's thumbnail reaches AUC {_num(whole['auc']):.2f}."
    return {"named": named, "cues": cues, "words": words}


def _listing(cues) -> str:
    names = [WORDS[c] for c in cues]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _swap(checks: dict, kind: str) -> dict:
    return next((s for s in checks["swaps"] if s["kind"] == kind), {"effect": None, "ci_low": None, "ci_high": None, "n": 0})


def _swap_words(cue: str, s: dict) -> str:
    if math.isnan(_num(s["effect"])):
        return f"Swapping {WORDS[cue]}: not measured (it needs test films of both classes from more than one patient each)."
    what = "its look" if cue in LOOKS else "that part of the film"
    return (f"Swapping {WORDS[cue].replace('something outside', 'everything outside')} for that of a film of the other class rather than "
            f"one of the same class moves the COVID-19 probability by {_num(s['effect']):+.2f}{_ci(s['ci_low'], s['ci_high'])} "
            f"on {s['n']} test films ({what} {'is followed' if _clears(s['effect'], s['ci_low'], NET_EFFECT, 0) else 'barely moves it'}).")


def _network_region(cue: str, checks: dict) -> dict:
    s = _swap(checks, cue)
    named = _clears(s["effect"], s["ci_low"], NET_EFFECT, 0.0)
    support = []
    if cue in CUE_FLOORS:
        a = _num(checks["floors"][cue].get("association"))
        if not math.isnan(a):
            support.append({"check": "floor against the score", "value": a, "agrees": a >= ASSOCIATION,
                            "words": f"Within each class the score's rank correlation with the {cue} floor's output is {a:.2f}."})
    heat = checks.get("heat_map", {}).get(cue)
    if heat and heat.get("area"):
        ratio = heat["share"] / heat["area"]
        support.append({"check": "heat map", "value": ratio, "agrees": ratio >= HEAT_RATIO,
                        "words": f"The default heat map puts {heat['share']:.0%} of itself there ({ratio:.1f} times the region's {heat['area']:.0%} of the film)."})
    if cue == OUTSIDE:
        b = checks.get("blanking", {})
        lb = _num(b.get("auc_lungs_blanked"))
        if not math.isnan(lb):
            support.append({"check": "lungs blanked", "value": lb, "agrees": lb >= BLANKED_HIGH or lb <= 1 - BLANKED_HIGH,
                            "words": f"With the lungs blanked out the network's AUC is {lb:.2f} (whole film {_num(b.get('auc_full')):.2f})."})
    return {"named": named, "check": "swap", "effect": s["effect"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
            "words": _swap_words(cue, s), "support": support}


def _network_metadata(cue: str, checks: dict, in_data: bool) -> dict:
    m = checks["metadata"][cue]
    w, probe = m["within_class"], m["probe"]
    measured = not math.isnan(_num(w["effect"]))
    named = in_data and _clears(w["effect"], w["ci_low"], NET_EFFECT, 0.0)
    if not measured:
        words = f"{WORDS[cue].capitalize()}: the score could not be compared within a class ({w.get('note') or 'too few films'})."
    else:
        words = (f"With the label fixed, the films whose {cue} is commoner among COVID-19 films score {_num(w['effect']):+.2f}"
                 f"{_ci(w['ci_low'], w['ci_high'])} against the others.")
        if not in_data:
            words += " The data does not tie this cue to the label, so it cannot be followed as a shortcut here."
    support = []
    acc, base = _num(probe.get("accuracy")), _num(probe.get("majority_rate"))
    if not math.isnan(acc):
        support.append({"check": "embedding probe within each class", "value": acc - base, "agrees": acc - base >= PROBE_MARGIN,
                        "words": f"Within each class the embedding tells its {cue} apart with accuracy {acc:.2f} (always guessing the commonest: {base:.2f})."})
    return {"named": named, "check": "score within each class", "effect": w["effect"], "ci_low": w["ci_low"], "ci_high": w["ci_high"],
            "words": words, "support": support}


def network_verdict(checks: dict) -> dict:
    """{named: [cues], cues: {cue: {named, check, effect, ci_low, ci_high, words, support}}, words, kind}."""
    in_data = data_verdict(checks)["cues"]
    cues = {cue: _network_metadata(cue, checks, in_data[cue]["named"]) for cue in METADATA}
    cues.update({cue: _network_region(cue, checks) for cue in REGIONS + LOOKS})
    edges = [_num(cues[c]["effect"]) for c in ("frame", "corners")]
    if cues[OUTSIDE]["named"] and _num(cues[OUTSIDE]["effect"]) < max(e for e in edges if not math.isnan(e)) + NET_EFFECT / 2:
        cues[OUTSIDE]["named"] = False
        cues[OUTSIDE]["words"] += " No more than the frame or the corners alone move it."
    named = [c for c in CUES if cues[c]["named"]]
    return {"named": named, "cues": cues, "words": _network_words(named, cues, checks, in_data), "kind": "warning" if named else "ok"}


def _network_words(named: list[str], cues: dict, checks: dict, in_data: dict) -> str:
    auc = _num(checks.get("model_auc"))
    if named:
        each = "; ".join(f"{WORDS[c]}, by {_num(cues[c]['effect']):+.2f}{_ci(cues[c]['ci_low'], cues[c]['ci_high'])}" for c in named)
        return (f"The network's COVID-19 score follows {each}: changing only that, the disease left as it is, moves the "
                f"COVID-19 probability by the amount shown. Part of its AUC ({auc:.2f}) comes from this, and another hospital's "
                "films may not carry it: do not trust the score on films from elsewhere until it is checked there.")
    carried = [c for c in in_data if in_data[c]["named"]]
    text = f"No cue was found that the network's COVID-19 score follows: no check moved it by {NET_EFFECT:.2f} or more."
    if carried:
        verb = "predicts" if len(carried) == 1 else "predict"
        text += f" The films do carry {_listing(carried)}, which {verb} the label; the network does not measurably follow it."
    lb = _num(checks.get("blanking", {}).get("auc_lungs_blanked"))
    if not math.isnan(lb) and abs(lb - 0.5) < 1 - BLANKED_HIGH:
        text += f" With the lungs blanked out its AUC falls to {lb:.2f}: what it reads lies in the lungs."
    return text + " This rules out the shortcuts these checks look for, not every other."


def calibration(path: str | Path | None = None) -> dict | None:
    """The audit's calibration record (cmtlib.experiments.audit_calibration), None before one was made."""
    from cmtlib.fileio import read_json

    return read_json(Path(path) if path else Path(__file__).with_name(CALIBRATION_FILE))


def _followed(summary: dict, kinds: int) -> str:
    """Which kinds the power rests on: a network that ignores most planted cues tests the audit's power on few."""
    followed = summary.get("kinds_followed") or []
    if not followed:
        return "; no run's network followed its cue, so the power is untested"
    missed = [k for k in followed if summary["per_kind"][k]["hits"] < summary["per_kind"][k]["followed"]]
    text = f"; {len(followed)} of {kinds} kinds were followed: {', '.join(followed)}"
    return text + (f"; missed at least once: {', '.join(missed)}" if missed else "")


def _faint(setting: dict) -> str:
    opacity = setting.get("faint_opacity")
    return "" if not opacity else f"; each again with the COVID-19 opacities at {opacity:g} of their density, so the cue competes"


def calibration_sentence(record: dict | None) -> str:
    """The calibration in one sentence with its figures (every audit page states it)."""
    if not record:
        return ("This audit has not been calibrated yet: `cmt audit-calibration` measures how often it names a planted cue "
                "and how often it names one where there is none.")
    s, setting = record["summary"], record["setting"]
    power, alarms, data = s["power"], s["false_alarms"], s["data"]
    kinds = len(s["per_kind"])
    return (f"Calibration ({record['made']}, phantoms at {setting['image_size']} px with one of {kinds} kinds of cue planted at "
            f"strength {setting['strength']}, {len(setting['seeds'])} seeds each, and {alarms['clean_runs']} clean runs"
            f"{_faint(setting)}): the "
            f"network verdict named the cue in {power['hits']} of {power['runs']} runs whose twins showed the network following it "
            f"(score change {record['thresholds']['follows']:.2f} or more when only the cue is removed{_followed(s, kinds)}), and named a cue in "
            f"{alarms['alarms']} of {alarms['runs']} runs where the network followed none (clean phantoms, or a change below "
            f"{record['thresholds']['ignores']:.2f}); the data verdict named the planted cue in {data['named']} of {data['runs']} runs.")
