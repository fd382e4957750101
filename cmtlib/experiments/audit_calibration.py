"""`cmt audit-calibration`: how often the shortcut audit is right, measured on phantoms with twins.

A study (cmtlib.experiments.study.run_study) trains the default run's network on phantoms with one
cue planted at strength 0.8 (params/phantoms/<cue>.yaml; two seeds each by default) and on clean
phantoms (params/phantoms/clean.yaml; three seeds), and analyses each run with the audit
(cmtlib.experiments.audit.analysis): both verdicts, and the twins' truth, the mean change of
p(COVID-19) when only the cue changes, over the test films carrying it. Then:

- power: of the planted runs whose twins show the network following its cue (mean change >=
  cue_twins.FOLLOWS), the share whose network verdict names it;
- false alarms: of the clean runs and of the planted runs whose twins show the network ignoring
  its cue (mean change < cue_twins.IGNORES), the share whose network verdict names anything;
- the data verdict: the share of planted runs whose data verdict names the planted cue.

The verdicts speak of regions and looks where a cue has no metadata column:
cmtlib.explain.cue_twins.NETWORK_NAMES says which names count as naming each planted kind. The result goes to <out>/audit_calibration.json and, with --update-package,
to the package (cmtlib/explain/audit_calibration.json), which every audit page cites.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from pathlib import Path

from cmtlib.errors import ConfigError
from cmtlib.experiments.audit import analysis
from cmtlib.explain.cue_twins import DATA_NAMES, FOLLOWS, IGNORES, NETWORK_NAMES
from cmtlib.explain.verdicts import CALIBRATION_FILE, SETTINGS
from cmtlib.fileio import write_json
from cmtlib.params import Params, load_params

KINDS = ("source", "view", "marker", "text", "size", "border", "tubes")
CLEAN = "clean"
FAINT = "-faint"      # a configuration trained with fainter COVID-19 opacities (synth_covid_opacity)
FAINT_OPACITY = 0.2   # the faint tier's opacity: the disease no longer outshines every cue (clean AUC 0.86; docs/audit.md)


def kind_of(config: str) -> str:
    """The planted kind (or clean) of a configuration name: border-faint -> border."""
    return config.removesuffix(FAINT)


def configurations(params_dir: str | Path, kinds: Sequence[str] = KINDS, faint: float | None = None) -> list[tuple[str, Params]]:
    """(name, params) of clean.yaml and each <kind>.yaml in params_dir (params/phantoms); with `faint`,
    each again as <name>-faint with the COVID-19 opacities scaled by it."""
    folder = Path(params_dir)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown cue kind(s) {unknown}; known: {', '.join(KINDS)}")
    out = []
    for name in (CLEAN, *kinds):
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"{path} not found: the calibration trains params/phantoms/{name}.yaml; run it from the repository "
                              "root or give --params-dir")
        out.append((name, load_params(path)))
    if faint is not None:
        if not 0 < faint < 1:
            raise ConfigError(f"the faint tier's opacity must lie in (0, 1), got {faint}")
        out += [(name + FAINT, load_params(folder / f"{name}.yaml", {"synth_covid_opacity": faint,
                                                                      "run_name": params.flat()["run_name"] + FAINT}))
                for name, params in list(out)]
    return out


def judge(config: str, seed: int, result: dict | None, status: str = "ok", error: str = "") -> dict:
    """One run of the calibration: its twins' truth for the planted cue, both verdicts, and what the
    twins make of the network verdict (a hit, a miss, a false alarm, a correct silence, or undecided)."""
    kind = kind_of(config)
    row = {"config": config, "seed": seed, "status": status, "error": error, "planted": None if kind == CLEAN else kind,
           "faint": config.endswith(FAINT)}
    if result is None:
        return row | {"outcome": "not run"}
    twins = (result.get("twins") or {}).get(kind) if kind != CLEAN else None
    change = None if twins is None else twins["mean_change"]
    network, data = list(result["network"]), list(result["data"])
    row |= {"twins_change": change, "twins_ci": None if twins is None else [twins["ci_low"], twins["ci_high"]],
            "twins_films": None if twins is None else twins["n"], "network": network, "data": data, "model_auc": result.get("model_auc")}
    if kind == CLEAN:
        row["outcome"] = "false alarm" if network else "correct silence"
        return row
    row["data_names_cue"] = any(n in DATA_NAMES[kind] for n in data)
    row["network_names_cue"] = any(n in NETWORK_NAMES[kind] for n in network)
    if change is None:
        row["outcome"] = "no twins"
    elif change >= FOLLOWS:
        row["outcome"] = "hit" if row["network_names_cue"] else "miss"
    elif change < IGNORES:
        row["outcome"] = "false alarm" if network else "correct silence"
    else:
        row["outcome"] = "undecided (twins between thresholds)"
    return row


def summarise(rows: list[dict]) -> dict:
    """Power, false alarms and the data verdict over the judged runs, overall and per kind."""
    followed = [r for r in rows if r["outcome"] in ("hit", "miss")]
    quiet = [r for r in rows if r["outcome"] in ("false alarm", "correct silence")]
    planted = [r for r in rows if r["planted"] and "data_names_cue" in r]
    per_kind = {}
    for kind in dict.fromkeys(r["planted"] for r in planted):
        mine = [r for r in planted if r["planted"] == kind]
        hits = [r for r in mine if r["outcome"] == "hit"]
        tested = [r for r in mine if r["outcome"] in ("hit", "miss")]
        per_kind[kind] = {"runs": len(mine), "followed": len(tested), "hits": len(hits),
                          "power": len(hits) / len(tested) if tested else None,
                          "data_named": sum(r["data_names_cue"] for r in mine)}
    return {"power": {"hits": sum(r["outcome"] == "hit" for r in followed), "runs": len(followed)},
            "false_alarms": {"alarms": sum(r["outcome"] == "false alarm" for r in quiet), "runs": len(quiet),
                             "clean_runs": sum(r["planted"] is None for r in quiet)},
            "data": {"named": sum(r["data_names_cue"] for r in planted), "runs": len(planted)},
            "kinds_with_power": sorted(k for k, v in per_kind.items() if v["followed"] and v["hits"] == v["followed"]),
            "kinds_followed": sorted(k for k, v in per_kind.items() if v["followed"]),
            "per_kind": per_kind, "undecided": sum(r["outcome"].startswith("undecided") for r in rows)}


def calibrate(folder: str | Path, params_dir: str | Path = "params/phantoms", seeds: Sequence[int] = (0, 1),
              clean_seeds: Sequence[int] = (0, 1, 2), kinds: Sequence[str] = KINDS, faint: float | None = FAINT_OPACITY,
              scheduler: str | None = None, jobs: int | None = None, say: Callable[[str], None] = print) -> dict:
    """Train and analyse every run (module docstring; a run already in `folder` is reused), judge them
    and return the calibration record (written to <folder>/audit_calibration.json). `faint`: the
    opacity of the faint tier (None: no faint tier). `scheduler` and `jobs` default to clean.yaml's
    `scheduler` and `report_jobs`."""
    from cmtlib.experiments.study import check, run_study

    configs = configurations(params_dir, kinds, faint)
    base = configs[0][1]
    scheduler = base.experiments.scheduler if scheduler is None else scheduler
    jobs = base.report.report_jobs if jobs is None else jobs
    clean = [c for c in configs if kind_of(c[0]) == CLEAN]
    planted = [c for c in configs if kind_of(c[0]) != CLEAN]
    outcomes = run_study(clean, folder, seeds=list(clean_seeds), analysis=analysis, scheduler=scheduler, jobs=jobs, say=say)
    outcomes += run_study(planted, folder, seeds=list(seeds), analysis=analysis, scheduler=scheduler, jobs=jobs, say=say)
    rows = [judge(o.config, o.seed, o.analysis if o.done else None, o.status, o.error) for o in outcomes]
    first = configs[0][1]
    record = {"made": _dt.date.today().isoformat(), "command": command_text(seeds, clean_seeds, kinds, faint),
              "setting": {"image_size": first.data.image_size, "epochs": first.train.epochs, "synth_n": first.data.synth_n,
                          "strength": 0.8, "seeds": list(seeds), "clean_seeds": list(clean_seeds), "faint_opacity": faint},
              "thresholds": {"follows": FOLLOWS, "ignores": IGNORES, **SETTINGS},
              "network_names": {k: list(v) for k, v in NETWORK_NAMES.items() if k in kinds},
              "runs": rows, "summary": summarise(rows)}
    write_json(Path(folder) / CALIBRATION_FILE, record)
    check(outcomes, Path(folder) / CALIBRATION_FILE)
    return record


def command_text(seeds: Sequence[int], clean_seeds: Sequence[int], kinds: Sequence[str], faint: float | None = FAINT_OPACITY) -> str:
    text = f"cmt audit-calibration --seeds {','.join(map(str, seeds))} --clean-seeds {','.join(map(str, clean_seeds))}"
    text += "" if tuple(kinds) == KINDS else f" --cues {','.join(kinds)}"
    return text + (" --no-faint" if faint is None else "" if faint == FAINT_OPACITY else f" --faint-opacity {faint:g}")


def table(record: dict):
    """One row per run: cue, seed, twins' mean change (95 % CI), what each verdict named, the outcome."""
    import pandas as pd

    def change(r):
        if r.get("twins_change") is None:
            return "–"
        low, high = r["twins_ci"]
        return f"{r['twins_change']:+.2f}" + ("" if low is None or high is None else f" ({low:+.2f} to {high:+.2f})")

    return pd.DataFrame([{"planted cue": r["config"], "seed": r["seed"], "twins: mean change": change(r),
                          "data verdict": ", ".join(r.get("data", [])) or "nothing",
                          "network verdict": ", ".join(r.get("network", [])) or "nothing", "judged by the twins": r["outcome"]}
                         for r in record["runs"]])


def table_text(record: dict) -> str:
    """The table and the summary, as the command prints them."""
    s = record["summary"]
    lines = [table(record).to_string(index=False), "",
             f"power: {s['power']['hits']} of {s['power']['runs']} runs whose twins show the cue followed "
             f"(kinds with every such run named: {', '.join(s['kinds_with_power']) or 'none'} of {', '.join(s['kinds_followed']) or 'none'})",
             f"false alarms: {s['false_alarms']['alarms']} of {s['false_alarms']['runs']} runs where nothing is followed",
             f"data verdict: names the planted cue in {s['data']['named']} of {s['data']['runs']} planted runs"]
    return "\n".join(lines)
