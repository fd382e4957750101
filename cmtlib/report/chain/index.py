"""Index pages: `<report>/index.html` (one run: headline results, pages, run facts, parameters)
and `<reports_dir>/index.html` (every report run, newest first).

A report folder's state lives in `<report>/report.json` (written by the chain at each step); the
pages are rendered from it plus what the run folder holds, so an interrupted or failed chain
still leaves an index that says what happened.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, ClassVar

import yaml

from cmtlib import __version__
from cmtlib.errors import DataFileError
from cmtlib.fileio import read_json, write_json, write_text
from cmtlib.configs import switches_on
from cmtlib.params import key_owner
from cmtlib.report.chain.render import TEMPLATES, check_self_contained, report_css
from cmtlib.metrics.operating import describe_rule
from cmtlib.report.pages import external as external_page
from cmtlib.report.pages.common import read_facts
from cmtlib.report.pages.data import mixed_source_auc
from cmtlib.report.pages.tables import as_number, get_path, headline_table, params_table, to_html
from cmtlib.run import Run

RECORD = "report.json"
# Headline numbers shown as percentages (rates) rather than fractions (scores).
_PERCENT = {"covid.sens_at_spec99", "covid.eer"}
_NO_SPEC99 = "cannot be estimated: fewer than 100 non-COVID films to set a 1 % false-alarm rate"


def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined)


def read_record(report_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(report_dir) / RECORD, {}) or {}


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if percent else f"{value:.3f}"


def headline_cards(metrics: dict[str, Any] | None) -> list[dict[str, str]]:
    """Headline metrics as display strings; [] when the run has no metrics."""
    if not metrics:
        return []
    cards = []
    for row in headline_table(metrics).to_dict("records"):
        row.update({k: as_number(row[k]) for k in ("value", "ci_low", "ci_high")})  # NaN -> None
        pct = row["key"] in _PERCENT
        ci = f"95 % CI {_fmt(row['ci_low'], pct)} to {_fmt(row['ci_high'], pct)}" if row["ci_low"] is not None and row["ci_high"] is not None else ""
        value = _fmt(row["value"], pct) if row["value"] is not None else "not available"
        if row["value"] is None and row["key"] == "covid.sens_at_spec99" and get_path(metrics, "covid") is not None:
            ci = _NO_SPEC99
        cards.append({"metric": row["metric"], "value_text": value, "ci_text": ci, "meaning": row["meaning"]})
    return cards


def summarize(report_dir: Path, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the index shows besides the chain's record: facts, headline metrics, parameters."""
    run = Run(report_dir / "run")
    info = run.info
    facts = read_facts(report_dir)
    params_path = report_dir / "params.yaml"
    flat = yaml.safe_load(params_path.read_text(encoding="utf-8")) if params_path.is_file() else {}
    record = record or {}
    rows = [
        ("date", record.get("date", "")),
        ("params file", record.get("params_source", "")),
        ("git commit", record.get("commit") or "not available (not a git checkout)"),
        ("device", info.device or "not recorded (the run did not finish)"),
        ("precision", info.precision or "not recorded"),
        ("encoder weights", info.encoder_weights_source or "not recorded"),
        ("data manifest hash", facts.get("manifest_hash") or info.manifest_hash or "not recorded"),
        ("images (train / val / test)", facts.get("split_counts", "not recorded")),
        ("quarantined images (could not be read or used)", facts.get("quarantine_count", "not recorded")),
        ("fields left unknown at import (could not be read as given)", facts.get("notes_count", "not recorded")),
        ("collections not imported", ", ".join(facts["not_imported"]) or "none" if "not_imported" in facts else "not recorded"),
        ("shortcut mitigations (docs/shortcuts.md)", "; ".join(switches_on(flat or {})) or "none"),
        ("test films unlike the training films (cmt predict gives them no COVID-19 call)", in_distribution_fact(run.metrics)),
    ]
    caveats = list(facts.get("caveats") or [])
    if run.predictions is not None:
        within = mixed_source_auc(run.predictions.astype({"source": str}))
        caveats += [within] if within else []
    return {
        "headline": headline_cards(run.metrics),
        "threshold": threshold_sentence(run.threshold or {}),
        "external": external_page.index_rows(run),
        "caveats": caveats,
        "facts": [(k, v) for k, v in rows if v != ""],
        "params_html": to_html(params_table(flat or {}, key_owner()), max_rows=None) if flat else "<p>params.yaml is missing.</p>",
    }


def in_distribution_fact(metrics: dict[str, Any] | None) -> str:
    """The in-distribution check's share of flagged test films, beside the share it was set to flag."""
    block = get_path(metrics or {}, "in_distribution") or {}
    if not block:
        return "not recorded"
    if not block.get("available"):
        return f"not available: {block.get('why_not') or 'the run holds no record of its training films'}"
    n, flagged = int(block.get("n") or 0), int(block.get("n_flagged") or 0)
    share_set = as_number(block.get("share_set"))
    limit = f"; set to flag {100 * share_set:.0f} % of films like the validation films" if share_set is not None else ""
    return f"{flagged} of {n} ({100 * flagged / n:.1f} %{limit})" if n else "no test films"


def threshold_sentence(threshold: dict[str, Any]) -> str:
    """The operating threshold and its rule in one sentence ('' when the run has none)."""
    t = as_number(threshold.get("covid_threshold"))
    if t is None:
        return ""
    rule = threshold["threshold_rule"]
    return (f"Films are called COVID-19 at a probability of {t:.3g} or more: a threshold fixed when the network was trained, "
            f"on its validation films, as {describe_rule(rule)} (rule {rule}). It is never re-tuned on the films being judged.")


def write_report_index(report_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write <report>/report.json and <report>/index.html from the chain's record."""
    report_dir = Path(report_dir)
    write_json(report_dir / RECORD, record)
    summary = summarize(report_dir, record)
    html = _env().get_template("report_index.html.j2").render(
        r=_Record(record), s=summary, css=report_css(), version=__version__, now=_now())
    check_self_contained(html, f"{report_dir.name}/index.html")
    return write_text(report_dir / "index.html", html)


def write_reports_index(reports_dir: str | Path) -> Path:
    """Write <reports_dir>/index.html listing every report folder (report.json), newest first."""
    reports_dir = Path(reports_dir)
    runs = []
    for record_path in reports_dir.glob(f"*/{RECORD}"):
        try:
            rec = read_json(record_path, {}) or {}
            metrics = Run(record_path.parent / "run").metrics
        except DataFileError as err:  # another report's broken file: listed as such, this report goes on
            rec, metrics = {"status": f"unreadable ({err})"}, None
        auc, sens = get_path(metrics, "covid.auc"), get_path(metrics, "covid.sens_at_spec99")
        runs.append({
            "name": record_path.parent.name, "href": f"{record_path.parent.name}/index.html",
            "date": rec.get("date", ""), "status": rec.get("status", "unknown"), "commit": rec.get("commit", ""),
            "auc": _fmt(auc, False) if isinstance(auc, (int, float)) else "–",
            "sens": _fmt(sens, True) if isinstance(sens, (int, float)) else "–",
        })
    runs.sort(key=lambda r: (r["date"], r["name"]), reverse=True)
    html = _env().get_template("reports_list.html.j2").render(runs=runs, css=report_css(), version=__version__, now=_now())
    check_self_contained(html, f"{reports_dir.name}/index.html")
    return write_text(reports_dir / "index.html", html)


def _now() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


class _Record(dict):
    """The record with attribute access and defaults for the template (StrictUndefined elsewhere)."""

    _DEFAULTS: ClassVar[dict[str, Any]] = {"status": "running", "failed": "", "failed_html": "", "error": "", "notebooks": [], "total_s": 0.0, "run_name": ""}

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        if name in self._DEFAULTS:
            return self._DEFAULTS[name]
        raise AttributeError(name)
