"""The `cmt` command (DESIGN.md, Command line). Each sub-command is a thin call into cmtlib;
heavy modules are imported only by the command that needs them, so `cmt --help` stays fast."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The evaluate splits, kept here rather than imported from cmtlib.evaluate (torch) so --help stays fast;
# tests/test_evaluate.py checks they match evaluate.SPLIT_CHOICES.
SPLIT_CHOICES = ("train", "val", "test", "holdout", "all")


# The phantoms' cues, in cmtlib.data.synth.ties.CUES order (kept here so --help stays light; the
# defaults come from DataConfig, and tests/test_synth_truth.py checks the two lists agree).
SYNTH_CUES = ("source", "view", "marker", "text", "size", "border", "tubes")


def _cmd_synth(a: argparse.Namespace) -> int:
    from cmtlib.data.manifest import read_manifest
    from cmtlib.data.synth import Strengths, cue_strengths, make_synthetic, read_truth

    strengths = Strengths(**{cue: getattr(a, f"{cue}_strength") for cue in SYNTH_CUES})
    manifest = make_synthetic(Path(a.out), n=a.n, size=a.size, seed=a.seed, strengths=strengths, external_n=a.external_n,
                              covid_opacity=a.covid_opacity)
    truth = read_truth(manifest)
    labels = read_manifest(manifest)["label_covid"]
    print(f"wrote {manifest}, with truth.csv and twins.csv beside it")
    print("cue strengths realised (share of COVID-19 films carrying the cue minus the others'):")
    print(cue_strengths(truth, labels).round(3).to_string())
    return 0


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    """`--map` / `--const` values COLUMN=VALUE as a dict; a value without '=' is a user error."""
    from cmtlib.errors import ConfigError

    out = {}
    for kv in values or []:
        key, sep, value = kv.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {kv!r}: write COLUMN=VALUE, e.g. {flag} finding=COVID-19")
        out[key.strip()] = value
    return out


class _Kinds:
    """The collection kinds, for `cmt data import`'s choices: read from the importers' registry
    (cmtlib.data.collections.registry) when the command parses or prints its help, not when the
    parser is built, so that `cmt --help` stays fast."""

    def _names(self) -> tuple[str, ...]:
        from cmtlib.data.collections.registry import kind_names

        return kind_names()

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def _cmd_import(a: argparse.Namespace) -> int:
    from cmtlib.data.collections import import_collection

    report = import_collection(a.kind, Path(a.root), Path(a.out), column_map=_pairs(a.map, "--map"), source=a.source,
                               uncertain=a.uncertain, constants=_pairs(a.const, "--const"),
                               allow_outside_root=a.allow_outside_root, findings=a.finding or [])
    print(report.summary())
    return 0


def _cmd_merge(a: argparse.Namespace) -> int:
    from cmtlib.data.merge import merge_manifests

    print(merge_manifests([Path(p) for p in a.manifests], Path(a.out)).summary())
    return 0


def _cmd_check(a: argparse.Namespace) -> int:
    from cmtlib.data.check import value_problems
    from cmtlib.data.manifest import check_manifest, read_manifest

    df = read_manifest(a.manifest)
    problems = check_manifest(df)
    if not problems:  # value rules read columns the contract check has just vouched for
        problems = value_problems(df, a.manifest, findings=a.finding or [])
    if problems:
        print(f"{a.manifest}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{a.manifest}: {len(df)} rows, valid")
    return 0


def _cmd_split(a: argparse.Namespace) -> int:
    from cmtlib.data.split import split_manifest

    report = split_manifest(Path(a.manifest), Path(a.out), val=a.val, test=a.test, seed=a.seed, find_duplicates=not a.no_duplicates)
    print(report.summary())
    return 0


def _cmd_cache(a: argparse.Namespace) -> int:
    from cmtlib.data.cache import build_cache

    report = build_cache(Path(a.manifest), size=a.size, out=Path(a.out), workers=a.workers)
    print(report.summary())
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from cmtlib.engine import train
    from cmtlib.params import load_params

    params = load_params(a.params, a.set or [])
    run_dir = train(params, resume=a.resume, overwrite=a.overwrite)
    print(f"run folder: {run_dir}")
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from cmtlib.evaluate import evaluate_run

    metrics = evaluate_run(Path(a.run), manifest=Path(a.manifest) if a.manifest else None, split=a.split, out_dir=Path(a.out) if a.out else None)
    c = metrics["covid"]
    print(f"COVID AUC {c['auc']}, EER {c['eer']}, sensitivity at 99% specificity {c['sens_at_spec99']}; lung Dice {metrics['lung']['dice']}")
    print(f"wrote predictions.csv and metrics.json into {metrics['evaluation']['out_dir']}")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from cmtlib.predict import predict_files

    results = predict_files(Path(a.run), [Path(p) for p in a.inputs], Path(a.out), judge_anyway=a.judge_anyway)
    failed = [r for r in results if r.get("error")]
    outside = sum(r.get("in_distribution") is False for r in results)
    what = "judged anyway (--judge-anyway)" if a.judge_anyway else "not judged (--judge-anyway decides them all the same)"
    print(f"{len(results) - len(failed)} image(s) predicted into {a.out}; {len(failed)} failed"
          + (f"; {outside} outside what the run was trained on: {what}" if outside else ""))
    for r in failed:
        print(f"  - {r['input']}: {r['error']}", file=sys.stderr)
    return 1 if failed and len(failed) == len(results) else 0


def _cmd_report(a: argparse.Namespace) -> int:
    from cmtlib.report.chain.runner import run_report

    # The flags are the params keys `scheduler` and `report_jobs`, so the report's params.yaml repeats them.
    flags = ([f"scheduler={a.scheduler}"] if a.scheduler else []) + ([f"report_jobs={a.jobs}"] if a.jobs is not None else [])
    index = run_report(Path(a.params), out=Path(a.out) if a.out else None, overrides=[*(a.set or []), *flags])
    print(f"report: {index}")
    return 0


def _seeds(text: str | None) -> list[int] | None:
    """--seeds 0,1,2 as a list (None when not given); a user error names the bad value."""
    from cmtlib.errors import ConfigError

    if text is None:
        return None
    try:
        seeds = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give comma-separated whole numbers, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r}: give distinct non-negative whole numbers, e.g. --seeds 0,1,2")
    return seeds


def _cmd_ablation(a: argparse.Namespace) -> int:
    from cmtlib.report.chain.ablation import run_ablation

    summary = run_ablation([Path(p) for p in a.params], out=Path(a.out) if a.out else None, overrides=a.set or [],
                           seeds=_seeds(a.seeds), scheduler=a.scheduler, jobs=a.jobs, explain=a.explain)
    print(f"ablation summary: {summary}")
    return 0


def _cmd_heatmaps(a: argparse.Namespace) -> int:
    from cmtlib.report.chain.heatmaps import run_heatmap_study

    page = run_heatmap_study(Path(a.params), seeds=_seeds(a.seeds), out=Path(a.out) if a.out else None, overrides=a.set or [],
                             scheduler=a.scheduler, jobs=a.jobs)
    print(f"heat-map study: {page}")
    return 0


def _cmd_mitigation(a: argparse.Namespace) -> int:
    from cmtlib.report.chain.mitigation import run_mitigation

    summary = run_mitigation([Path(p) for p in a.params], a.fold or [], _seeds(a.seeds), out=Path(a.out) if a.out else None,
                             overrides=a.set or [], scheduler=a.scheduler, jobs=a.jobs)
    print(f"mitigation summary: {summary}")
    return 0


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """--scheduler and --jobs: where the command's task graph runs (cmtlib.experiments.cluster)."""
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on the Dask cluster whose scheduler is at ADDRESS (tcp://HOST:PORT) instead of a local one "
                        "(default: the params key scheduler)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="local worker processes: 0 = sized to this machine, 1 = no cluster, one task after another here "
                        "(debugging) (default: the params key report_jobs)")


def _cmd_audit_calibration(a: argparse.Namespace) -> int:
    from cmtlib.experiments.audit_calibration import FAINT_OPACITY, calibrate, table_text
    from cmtlib.explain.verdicts import CALIBRATION_FILE, calibration_sentence
    from cmtlib.fileio import write_json

    kinds = [k.strip() for k in a.cues.split(",") if k.strip()]
    record = calibrate(Path(a.out), a.params_dir, _seeds(a.seeds), _seeds(a.clean_seeds), kinds,
                       faint=None if a.no_faint else a.faint_opacity or FAINT_OPACITY, scheduler=a.scheduler, jobs=a.jobs)
    print(table_text(record))
    print(calibration_sentence(record))
    if a.update_package:
        import cmtlib.explain

        target = Path(cmtlib.explain.__file__).with_name(CALIBRATION_FILE)
        write_json(target, record)
        print(f"wrote {target}: every audit page now cites this calibration")
    return 0


def _pixels(text: str) -> int:
    """argparse type for image sides: an integer of at least 16 px."""
    value = int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"{value} px is too small; use at least 16 (the paper uses 224)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmt", description="CMTNet: explainable multi-task COVID-19 chest X-ray screening (research use only).")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error the command explains in one line")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub.add_parser("data", help="build, check, split and cache image manifests").add_subparsers(dest="data_command", required=True))
    _add_run_commands(sub)
    _add_audit_command(sub)
    return parser


_FINDING_HELP = ("add TEXT to the finding vocabulary as CLASS (healthy, covid, other or unknown); a finding the "
                 "vocabulary does not recognise gives no label (docs/CONTRACTS.md) (repeat)")


def _add_data_commands(data) -> None:
    """`cmt data synth | import | merge | check | split | cache`."""
    p = data.add_parser("synth", help="make synthetic chest X-ray phantoms with masks and labels")
    p.add_argument("--out", required=True, help="output folder (manifest.csv, images/, masks/; truth.csv, truth/, twins.csv, twins/)")
    p.add_argument("--n", type=int, default=2000, help="number of images")
    p.add_argument("--size", type=_pixels, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    from cmtlib.configs import DataConfig

    for cue in SYNTH_CUES:
        p.add_argument(f"--{cue}-strength", type=float, default=getattr(DataConfig, f"synth_{cue}_strength"), metavar="S",
                       help=f"tie of the {cue} cue to the label in [0, 1]: the share of COVID-19 films carrying it minus "
                            f"the others' (params key synth_{cue}_strength; default %(default)s)")
    p.add_argument("--external-n", type=int, default=0, help="films of a third site (synth-c), appended after the n films")
    p.add_argument("--covid-opacity", type=float, default=DataConfig.synth_covid_opacity, metavar="X",
                   help="scale of every COVID-19 opacity's density in (0, 2]: below 1 the disease is fainter, so a tied cue "
                        "competes with it (params key synth_covid_opacity; default %(default)s)")
    p.set_defaults(func=_cmd_synth)

    p = data.add_parser("import", help="turn a public collection into a manifest")
    p.add_argument("kind", choices=_Kinds(), metavar="KIND", help="the collection's kind: %(choices)s")
    p.add_argument("root", help="the collection's folder")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.add_argument("--map", action="append", metavar="COLUMN=SOURCE",
                   help="csv kind: manifest column = your CSV's column, or a template of them such as path=png/{image_id}.png (repeat)")
    p.add_argument("--const", action="append", metavar="COLUMN=VALUE",
                   help="csv kind: one value for every row, e.g. finding=COVID-19 for a collection of one class (repeat)")
    p.add_argument("--source", default="", help="csv kind: source name used to prefix ids")
    p.add_argument("--uncertain", choices=["unknown", "positive", "negative"], default="unknown", help="chexpert: how to read -1 labels")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="keep rows whose image path leads out of the collection's folder (quarantined otherwise)")
    p.add_argument("--finding", action="append", metavar="TEXT=CLASS", help=_FINDING_HELP)
    p.set_defaults(func=_cmd_import)

    p = data.add_parser("merge", help="join manifests into one before the split (paths rebased, duplicate ids refused)")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--out", required=True, help="manifest CSV to write (its quarantine and notes files beside it)")
    p.set_defaults(func=_cmd_merge)

    p = data.add_parser("check", help="validate a manifest against the contract (exit 1 naming the rows)")
    p.add_argument("manifest")
    p.add_argument("--finding", action="append", metavar="TEXT=CLASS",
                   help="a finding text the import was given with --finding, so that its labels are not reported (repeat)")
    p.set_defaults(func=_cmd_check)

    p = data.add_parser("split", help="patient- and duplicate-aware train/val/test split")
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--val", type=float, default=0.15)
    p.add_argument("--test", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-duplicates", action="store_true", help="skip near-duplicate detection (not recommended)")
    p.set_defaults(func=_cmd_split)

    p = data.add_parser("cache", help="resized uint8 images and masks as memory-mapped arrays")
    p.add_argument("manifest")
    p.add_argument("--size", type=_pixels, required=True, help="side of the cached square images in pixels")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=0, help="parallel readers (0 = number of CPUs)")
    p.set_defaults(func=_cmd_cache)


def _add_run_commands(sub) -> None:
    """`cmt train | evaluate | predict | report | ablation`."""
    p = sub.add_parser("train", help="train a model from a params YAML")
    p.add_argument("--params", required=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter (repeat)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate", help="predictions.csv and metrics.json for a trained run",
        description="Evaluate a trained run. Without --manifest: the run's own test split, written into RUN "
                    "(the report reads it there). With --manifest (an external test set): written into "
                    "RUN/external/<manifest stem>/ unless --out says otherwise, so the run's own results stay. "
                    "The COVID threshold is the run's operating threshold, fixed when the run was trained (threshold.json); "
                    "it is never re-chosen on the films being evaluated. --split holdout: the films the params' holdout held out.")
    p.add_argument("run", help="run folder (from `cmt train`)")
    p.add_argument("--manifest", default="", help="manifest to evaluate (default: the run's own data)")
    p.add_argument("--split", default="test", choices=SPLIT_CHOICES,
                   help="rows to evaluate (default: test); `all` = every row, e.g. an external manifest without a split column")
    p.add_argument("--out", default="", metavar="DIR",
                   help="output folder (default: RUN for the run's own data, RUN/external/<manifest stem>/ with --manifest)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict images, folders or DICOM files with a trained run")
    p.add_argument("run")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--judge-anyway", action="store_true",
                   help="give a COVID-19 decision also for images the in-distribution check flags as unlike the run's training films "
                        "(by default those are reported as 'outside what this run was trained on: not judged')")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("report", help="run the notebook chain and render the HTML reports")
    p.add_argument("--params", required=True)
    p.add_argument("--out", default="", help="report folder (default: reports/<run name>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    _add_cluster_flags(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("ablation", help="train + evaluate once per params file (and seed), then a summary page",
                       description="Train and evaluate each params file (with --seeds: once per seed) as one task each, on a "
                                   "local Dask cluster sized to this machine or the one at --scheduler. Run again with the "
                                   "same --out, it reuses the runs that finished and trains the rest.")
    p.add_argument("params", nargs="+")
    p.add_argument("--out", default="", help="the study's folder (default: <reports_dir>/ablation); an existing one is resumed")
    p.add_argument("--seeds", default=None, help="training seeds, comma-separated: one run per file and seed, summarised over seeds "
                                                 "(default: each file's own seed)")
    p.add_argument("--explain", action="store_true",
                   help="also measure each run's explanations (phantoms: reliance on the lesion, the default heat map against it; "
                        "any data: its faithfulness) and compare each configuration with the classification-only control "
                        "(params/ablation_control/), paired film by film")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    _add_cluster_flags(p)
    p.set_defaults(func=_cmd_ablation)

    p = sub.add_parser("heatmaps", help="the heat-map study: every CAM method and layer against known lesions, seeds pooled",
                       description="Train (or reuse) one run of PARAMS per seed on phantoms with truth and measure every heat-map "
                                   "method at every layer against the lesion, its faithfulness and the randomisation check; one "
                                   "summary page ranking the maps (docs/explanations.md).")
    p.add_argument("--params", required=True, help="a params file of phantoms with truth, e.g. params/phantoms/clean.yaml")
    p.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (default 0,1,2)")
    p.add_argument("--out", default="", help="the study's folder (default: <reports_dir>/heatmap-study); an existing one is resumed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    _add_cluster_flags(p)
    p.set_defaults(func=_cmd_heatmaps)

    p = sub.add_parser(
        "mitigation", help="shortcut mitigations trained and judged side by side on held-out folds, one summary page",
        description="Train each params file (a mitigation variant) once per --fold and seed, the fold's films held out "
                    "entirely, and judge them as a collection the run never saw: sensitivity at the frozen threshold (also "
                    "at 64 px), specificity on large films and thumbnails, AUC within collections, the lung audit.")
    p.add_argument("params", nargs="+", help="params files, the first being the reference the others are compared with")
    p.add_argument("--fold", action="append", metavar="[NAME:]FILTER[;FILTER]",
                   help="films to hold out, as the holdout params key takes them (repeat): e.g. 'figure1:source=figure1'")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (default 0)")
    p.add_argument("--out", default="", help="the study's folder (default: <reports_dir>/mitigation); an existing one is resumed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    _add_cluster_flags(p)
    p.set_defaults(func=_cmd_mitigation)


def _add_audit_command(sub) -> None:
    """`cmt audit-calibration`."""
    p = sub.add_parser(
        "audit-calibration", help="how often the shortcut audit is right: planted cues and clean phantoms, the twins as the truth",
        description="Train the default network on phantoms with one cue planted at strength 0.8 (params/phantoms/<cue>.yaml, "
                    "--seeds each) and on clean phantoms (--clean-seeds), audit every run, and judge the network verdict against "
                    "the twins (the same films with only the cue removed): power, false alarms, and the data verdict (docs/audit.md). "
                    "Runs already in --out are reused.")
    p.add_argument("--seeds", default="0,1", help="training seeds of each planted cue, comma-separated (default 0,1)")
    p.add_argument("--clean-seeds", default="0,1,2", help="training seeds of the clean phantoms (default 0,1,2)")
    p.add_argument("--cues", default=",".join(SYNTH_CUES), help="the planted cue kinds, comma-separated (default: all seven)")
    p.add_argument("--params-dir", default="params/phantoms", help="folder of clean.yaml and <cue>.yaml (default params/phantoms)")
    p.add_argument("--faint-opacity", type=float, default=None, metavar="X",
                   help="each configuration again with the COVID-19 opacities scaled by X (synth_covid_opacity), so that a "
                        "network leans on its cue and the audit's power is tested (default 0.2)")
    p.add_argument("--no-faint", action="store_true", help="no faint tier: only the opacities as drawn")
    p.add_argument("--out", default="reports/audit-calibration", help="study folder: runs/, params/, audit_calibration.json")
    _add_cluster_flags(p)
    p.add_argument("--update-package", action="store_true",
                   help="also write the result into the package (cmtlib/explain/audit_calibration.json), which page 8 cites")
    p.set_defaults(func=_cmd_audit_calibration)


def main(argv: list[str] | None = None) -> int:
    """Run one command. A CmtError (bad input, a missing file, a setting to change) is printed in
    one line with exit status 2, or with its traceback under --debug; any other exception is a
    bug and propagates with its traceback."""
    from cmtlib.errors import CmtError  # light: no torch, so `cmt --help` stays fast

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `cmt ... | head` closed the pipe: not an error of the command
        sys.stderr.close()
        return 0
    except CmtError as err:
        if args.debug:
            raise
        print(f"cmt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: what was written stays consistent (atomic writes; a run resumes with --resume).
        # Leave at once: a training still running in a background thread (cmt report) must not be
        # torn down by the interpreter's shutdown.
        print("cmt: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
