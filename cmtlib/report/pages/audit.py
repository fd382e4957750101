"""Glue of page 8, the shortcut audit: plain words and tables from a run's shortcut_audit.json
(cmtlib.experiments.audit; keys in docs/CONTRACTS.md). The page leads with the network verdict,
puts the data verdict beside it, states the audit's calibration, lists each check's evidence, and
on phantoms shows the twins' truth as the check of the audit, never as part of it."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from cmtlib.explain.cue_twins import FOLLOWS, IGNORES, NETWORK_NAMES
from cmtlib.explain.verdicts import CUES, NET_EFFECT, STRENGTH, WORDS, calibration, calibration_sentence


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def _ci(value: Any, low: Any, high: Any, signed: bool = False) -> str:
    v, lo, hi = _f(value), _f(low), _f(high)
    if math.isnan(v):
        return "not measured"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return fmt.format(v) + ("" if math.isnan(lo) or math.isnan(hi) else f" ({fmt.format(lo)} to {fmt.format(hi)})")


def cue_name(cue: str) -> str:
    """A cue in plain words, capitalised for a table's first column."""
    text = WORDS.get(cue, cue)
    return text[0].upper() + text[1:]


def network_notice(audit: dict) -> tuple[str, str]:
    """(the network verdict in plain words, the notice kind: warning when it names a cue, else ok)."""
    v = audit["network_verdict"]
    return v["words"], v["kind"]


def data_notice(audit: dict) -> tuple[str, str]:
    """(the data verdict in plain words, info: a cue in the data is a risk, not a finding about the network)."""
    return "What the films carry: " + audit["data_verdict"]["words"], "info"


def calibration_text() -> str:
    """The calibration sentence of the package's calibration record."""
    return calibration_sentence(calibration())


def network_table(audit: dict) -> pd.DataFrame:
    """Per cue: the deciding check, the change of the COVID-19 probability it measured, whether the
    score follows the cue, and what the supporting checks say."""
    rows = []
    for cue in CUES:
        c = audit["network_verdict"]["cues"][cue]
        support = " ".join(s["words"] + (" (supports it)" if s["agrees"] else " (does not support it)") for s in c.get("support", []))
        rows.append({"cue": cue_name(cue), "deciding check": c["check"], "strength of its evidence": STRENGTH[c["check"]].split(":")[0],
                     "change of the COVID-19 probability (95 % CI)": _ci(c["effect"], c["ci_low"], c["ci_high"], signed=True),
                     "the score follows it": "yes" if c["named"] else "no", "what was measured": c["words"],
                     "supporting checks": support or "–"})
    return pd.DataFrame(rows)


def strength_text() -> str:
    """What each kind of check can show, in one sentence per kind."""
    return " ".join(f"{name.capitalize()}: {words}." for name, words in
                    (("a swap", STRENGTH["swap"]), ("the score within each class", STRENGTH["score within each class"]),
                     ("a supporting check", STRENGTH["support"])))


def data_table(audit: dict) -> pd.DataFrame:
    """Per cue of the data verdict: the check, its AUC for the label, and whether it predicts the label."""
    rows = []
    for cue, c in audit["data_verdict"]["cues"].items():
        rows.append({"cue": cue_name(cue), "check": "recorded metadata" if c["check"] == "metadata" else "simple classifier on the region",
                     "AUC for COVID-19 (95 % CI)": _ci(c["auc"], c["ci_low"], c["ci_high"]),
                     "predicts the label": "yes" if c["named"] else "no"})
    return pd.DataFrame(rows)


def twins_table(audit: dict) -> pd.DataFrame:
    """Per cue the run's films carry: what the twins show (the truth) beside what the network verdict
    said; empty without twins (real collections)."""
    twins = audit.get("twins") or {}
    named = set(audit["network_verdict"]["named"])
    rows = []
    for cue, t in twins.items():
        change = _f(t["mean_change"])
        truth = "followed" if change >= FOLLOWS else "ignored" if change < IGNORES else "partly followed (between the bars)"
        said = sorted(named & set(_names_for(cue)))
        agree = ("yes" if (truth == "followed") == bool(said) else "no") if truth != "partly followed (between the bars)" else "–"
        rows.append({"planted cue": cue, "films carrying it (test)": t["n"],
                     "twins: mean change when only the cue is removed (95 % CI)": _ci(t["mean_change"], t["ci_low"], t["ci_high"], signed=True),
                     "what the twins show": truth, "network verdict named": ", ".join(said) or "nothing for this cue",
                     "verdict agrees with the twins": agree})
    return pd.DataFrame(rows)


def _names_for(cue: str) -> tuple[str, ...]:
    """The verdict names that count as this cue (the calibration's list)."""
    return NETWORK_NAMES.get(cue, (cue,))


def twins_text(audit: dict) -> str:
    if not audit.get("twins"):
        return ("These films have no twins (real collections, or phantoms without cues tied to the label): nothing here says "
                "how far this audit's verdict is right; the calibration above says how often it was on phantoms.")
    return (f"The twins are the same test films with only the cue removed. A mean change of {FOLLOWS:.2f} or more means the "
            f"network follows the cue, below {IGNORES:.2f} that it ignores it. They are the check of the audit, kept apart "
            "from it: the verdicts above never read them, and real films have none.")


def blanking_table(audit: dict) -> pd.DataFrame:
    b = audit["checks"]["blanking"]
    return pd.DataFrame({"films shown to the network": ["whole film", "lungs blanked out (grey)", "everything but the lungs blanked out"],
                         "COVID-19 AUC": [_f(b.get("auc_full")), _f(b.get("auc_lungs_blanked")), _f(b.get("auc_outside_blanked"))]})


def floors_table(audit: dict) -> pd.DataFrame:
    floors = audit["checks"]["floors"]
    rows = [{"what sees the films": "CMTNet (the whole network, whole film)", "share of the film": 1.0,
             "COVID-19 AUC (95 % CI)": _ci(audit["checks"]["model_auc"], None, None)}]
    rows += [{"what sees the films": f"simple classifier on a 32 x 32 thumbnail of: {name}", "share of the film": f.get("area"),
              "COVID-19 AUC (95 % CI)": _ci(f["auc"], f["ci_low"], f["ci_high"])} for name, f in floors.items()]
    return pd.DataFrame(rows)


def metadata_table(audit: dict) -> pd.DataFrame:
    """Per metadata cue: its tie to the label, the score within each class, the embedding's probe."""
    rows = []
    for cue, m in audit["checks"]["metadata"].items():
        tie, w, probe = m["tie"], m["within_class"], m["probe"]
        rows.append({"cue": cue_name(cue), "levels among the test films": tie["levels"],
                     "AUC of the label from the cue": _ci(tie["auc"], tie["ci_low"], tie["ci_high"]),
                     "score difference with the label fixed": _ci(w["effect"], w["ci_low"], w["ci_high"], signed=True),
                     "embedding tells it apart within a class (accuracy)": _ci(probe.get("accuracy"), None, None),
                     "by guessing the commonest": _ci(probe.get("majority_rate"), None, None),
                     "note": tie.get("note") or w.get("note") or ""})
    return pd.DataFrame(rows)


def heat_map_table(audit: dict) -> pd.DataFrame:
    h = audit["checks"].get("heat_map") or {}
    return pd.DataFrame([{"region": name, "share of the default heat map": h[name]["share"], "share of the film": h[name]["area"]}
                         for name in ("outside the lungs", "frame", "corners") if name in h])


def settings_text(audit: dict) -> str:
    c = audit["checks"]
    return (f"Measured on {c['n_test']} test films (floors trained on {c['n_train']} training films) in {c['seconds']:.0f} s. A cue is "
            f"named when its deciding check moves the COVID-19 probability by {NET_EFFECT:.2f} or more, the 95 % interval "
            "(patients resampled) above zero.")
