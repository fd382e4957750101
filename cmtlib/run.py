"""A run folder and its one owner, `Run`: where a trained model lives.

    <run>/config.yaml        the resolved flat params (every key)
    <run>/run.json           what ran where (RunInfo: device, versions, data cache, status, threshold rule, run_format)
    <run>/train.log          the log (appended on --resume)
    <run>/history.csv|json   one row per epoch
    <run>/checkpoints/{best,last,model}.pt
    <run>/threshold.json     the COVID operating threshold and how it was chosen (written once, at training)
    <run>/predictions_val.csv  the validation films scored by the best checkpoint (written with threshold.json)
    <run>/indist.npz         what the training films look like to the network, and the in-distribution thresholds
                             set on the validation films (cmtlib.indist.Reference; written with threshold.json)
    <run>/predictions.csv, metrics.json, embeddings.npy, embeddings_index.csv   `cmt evaluate` (an Evaluation)
    <run>/external/<name>/   evaluations of other manifests (never over the run's own results)
    <run>/explanations/      heat maps and reliance measured against known truth (phantoms)
    <run>/shortcut_audit.json  the shortcut audit: its checks, the data and network verdicts, the twins' truth

The engine writes a run (claim, logging, run.json, threshold.json); evaluation, prediction, the
experiments and the report pages read it through `Run` and `Evaluation`, never by path arithmetic of
their own: this module is the only one that knows the folder's file names and run.json's keys.
A run folder records its `run_format`; one of another format gets one clear error saying to retrain it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cmtlib.configs import switches_on
from cmtlib.errors import ConfigError, MissingInputError, RunFolderError
from cmtlib.fileio import atomic_path, read_json, write_json
from cmtlib.params import dump_params, key_owner

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# The layout of a run folder and of run.json. A folder of another format is refused with a note to
# retrain it (runs are cheap to retrain; converting old layouts is code nobody tests).
RUN_FORMAT = 2
# Keys that may change between a run and its --resume (they do not change what is learned).
RESUMABLE_CHANGES = frozenset({"epochs", "device", "threads", "compile", "log_every", "eval_batch_size", "cache_dir", "reports_dir",
                               "scheduler", "report_jobs"})
# Keys that may differ between a finished run and the params asking for it without changing its
# results (where and how fast it ran); experiments and report keys are never compared either.
NOT_RESULT_KEYS = frozenset({"run_dir", "threads", "eval_batch_size", "device", "compile", "log_every", "cache_dir"})
SHORTCUT_AUDIT = "shortcut_audit.json"
CHECKPOINTS = {"best": "best.pt", "last": "last.pt", "model": "model.pt"}  # model.pt: the best weights without optimizer (prediction)


class RunMismatchError(RunFolderError):
    """The folder holds a run made with other params; the message lists the keys that differ."""


@dataclass
class RunInfo:
    """run.json: what ran where. Written by the engine through `Run.write_info`, read as `Run.info`."""

    run_format: int = RUN_FORMAT
    name: str = ""
    params_file: str = ""
    run_dir: str = ""
    status: str = ""  # running | finished ("" = not recorded: a start that stopped before writing run.json)
    device: str = ""  # in words, e.g. "cpu (1 thread)"
    world_size: int = 1
    threads: int = 0  # CPU threads the run used; a --resume continues with them (the order of sums)
    precision: str = ""  # bf16 | fp32
    torch: str = ""
    torchvision: str = ""
    cmtlib: str = ""
    git_commit: str = ""
    model: str = ""
    encoder_weights_source: str = ""
    data_cache: str = ""
    manifest: str = ""
    manifest_hash: str = ""
    n_train: int = 0
    n_val: int = 0
    steps_per_epoch: int = 0
    images_per_epoch: int = 0
    start_time: str = ""
    end_time: str | None = None
    resumed_at: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_epoch: list[float] = field(default_factory=list)
    epochs_done: int = 0
    threshold_rule: str = ""  # the rule only: the threshold itself lives in threshold.json

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: Path) -> RunInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RunFolderError(f"{where} holds keys this cmtlib does not write ({', '.join(unknown[:6])}); was it made by another version?")
        return cls(**values)


def run_dir_for(params) -> Path:
    """`train.run_dir`, or runs/<run name> under the current folder."""
    return Path(params.train.run_dir or Path("runs") / params.run_name).resolve()


def with_run_dir(params, run_dir: str | Path):
    """A copy of params whose training writes into run_dir (absolute)."""
    train = dataclasses.replace(params.train, run_dir=str(Path(run_dir).resolve()))
    return dataclasses.replace(params, train=train)


def _norm(v: Any) -> str:
    return yaml.safe_dump(list(v) if isinstance(v, tuple) else v).strip()


def _read_csv(path: Path) -> pd.DataFrame | None:
    import pandas as pd  # here, not at the top: `cmt predict` reads no CSV and starts faster without pandas

    return pd.read_csv(path, dtype={"image_id": str, "patient_id": str}) if path.is_file() else None


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """A frame as CSV, atomically (empty cells for missing values)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, na_rep="")
    return path


class Evaluation:
    """A folder of evaluated films: a run folder itself (its own test split), `<run>/external/<name>/`,
    or a comparison method's folder. Reading properties load on first use (None when absent)."""

    PREDICTIONS, PREDICTIONS_VAL, METRICS = "predictions.csv", "predictions_val.csv", "metrics.json"
    EMBEDDINGS, EMBEDDINGS_INDEX = "embeddings.npy", "embeddings_index.csv"

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @functools.cached_property
    def metrics(self) -> dict[str, Any] | None:
        return read_json(self.path / self.METRICS)

    @functools.cached_property
    def predictions(self) -> pd.DataFrame | None:
        return _read_csv(self.path / self.PREDICTIONS)

    @functools.cached_property
    def predictions_val(self) -> pd.DataFrame | None:
        return _read_csv(self.path / self.PREDICTIONS_VAL)

    @property
    def evaluated(self) -> bool:
        return (self.path / self.METRICS).is_file()

    @property
    def evaluated_at(self) -> float | None:
        """When metrics.json was written (seconds since the epoch), None before."""
        path = self.path / self.METRICS
        return path.stat().st_mtime if path.is_file() else None

    @property
    def embeddings_path(self) -> Path:
        return self.path / self.EMBEDDINGS

    def embeddings(self) -> tuple[np.ndarray, pd.DataFrame] | None:
        """(embeddings (N, D) float32, their index: image_id, split, cache_row), None when not written."""
        import numpy as np

        index = _read_csv(self.path / self.EMBEDDINGS_INDEX)
        if index is None or not self.embeddings_path.is_file():
            return None
        return np.load(self.embeddings_path), index

    def refresh(self) -> Evaluation:
        """Forget what was read (the folder changed)."""
        for name in ("metrics", "predictions", "predictions_val"):
            self.__dict__.pop(name, None)
        return self

    def write(self, *, predictions: pd.DataFrame | None = None, predictions_val: pd.DataFrame | None = None,
              metrics: dict[str, Any] | None = None, embeddings: np.ndarray | None = None) -> None:
        """Write what is given, each file atomically; metrics last, so that a folder with metrics.json
        holds the predictions it was computed from."""
        import numpy as np

        self.path.mkdir(parents=True, exist_ok=True)
        if predictions_val is not None:
            write_csv(predictions_val, self.path / self.PREDICTIONS_VAL)
        if predictions is not None:
            write_csv(predictions, self.path / self.PREDICTIONS)
        if embeddings is not None and predictions is not None:
            with atomic_path(self.embeddings_path) as tmp:
                np.save(tmp, embeddings)
            write_csv(predictions[["image_id", "split", "cache_row"]], self.path / self.EMBEDDINGS_INDEX)
        if metrics is not None:
            write_json(self.path / self.METRICS, metrics)
        self.refresh()


class Run(Evaluation):
    """One run folder: its training (config, run.json, checkpoints, threshold) and, as an Evaluation,
    its own test split's results. `refresh()` forgets what was read after the folder changed."""

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """An existing run folder of this cmtlib's format; MissingInputError saying how to make one otherwise."""
        run = cls(path)
        if not run.path.is_dir():
            raise MissingInputError(f"run folder not found: {run.path}; train it with `cmt train --params ...`")
        run.info  # noqa: B018 -- reading it refuses a folder of another run format, with the fix
        return run

    def refresh(self) -> Run:
        super().refresh()
        for name in ("info", "config", "history", "threshold", "indist"):
            self.__dict__.pop(name, None)
        return self

    # ---- paths -------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def checkpoint(self, which: str = "best") -> Path:
        """checkpoints/best.pt, last.pt (what --resume reads) or model.pt (the best weights, light)."""
        if which not in CHECKPOINTS:
            raise ValueError(f"which must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
        return self.path / "checkpoints" / CHECKPOINTS[which]

    def weights(self, which: str = "best") -> Path:
        """The file prediction loads for `which` (best: model.pt where written, else best.pt)."""
        if which == "best" and self.checkpoint("model").is_file():
            return self.checkpoint("model")
        path = self.checkpoint(which)
        if not path.is_file():
            if not self.path.exists():
                raise MissingInputError(f"run folder not found: {self.path}; train one with `cmt train --params YAML`")
            raise MissingInputError(f"{path} not found; is {self.path} a run folder whose training finished at least one epoch?")
        return path

    @property
    def judged_path(self) -> Path:
        """The films a study judged this run on (cmtlib.experiments.mitigation: held-out fold and test)."""
        return self.path / "judged.csv"

    @property
    def explanations_dir(self) -> Path:
        """Where the explanation measures of this run are kept (cmtlib.experiments.heatmaps)."""
        return self.path / "explanations"

    @property
    def shortcut_audit(self) -> dict[str, Any] | None:
        """shortcut_audit.json (cmtlib.experiments.audit; keys in docs/CONTRACTS.md), None before it is written."""
        return read_json(self.path / SHORTCUT_AUDIT)

    @property
    def shortcut_audit_at(self) -> float | None:
        """When shortcut_audit.json was written (seconds since the epoch), None before."""
        path = self.path / SHORTCUT_AUDIT
        return path.stat().st_mtime if path.is_file() else None

    def write_shortcut_audit(self, record: dict[str, Any]) -> None:
        """shortcut_audit.json, atomically (cmtlib.experiments.audit.audit_run)."""
        write_json(self.path / SHORTCUT_AUDIT, record)

    def external(self, name: str) -> Evaluation:
        """The evaluation of another set: external/<name>/ (a manifest's stem, or holdout)."""
        return Evaluation(self.path / "external" / name)

    def externals(self) -> list[Evaluation]:
        """Every evaluated external/<name>/, holdout first, then by name."""
        root = self.path / "external"
        found = [Evaluation(p) for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        return sorted((e for e in found if e.evaluated), key=lambda e: (e.name != "holdout", e.name))

    def eval_cache(self, stem: str, digest: str) -> Path:
        """Where another manifest is cached at the run's image size for evaluation."""
        return self.path / "eval_cache" / f"{stem}-{digest}"

    # ---- reading -----------------------------------------------------------------------------
    @functools.cached_property
    def info(self) -> RunInfo:
        """run.json (defaults where the run has not written it yet); RunFolderError for another run format."""
        path = self.path / "run.json"
        values = read_json(path, {}) or {}
        if values and values.get("run_format") != RUN_FORMAT:
            raise RunFolderError(f"{self.path} was made by an earlier cmtlib (run format {values.get('run_format', 1)}; this one reads "
                                 f"{RUN_FORMAT}): retrain it with `cmt train --params ... --overwrite` (runs are not converted)")
        return RunInfo.from_dict(values, path) if values else RunInfo(run_format=0)

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """config.yaml: the run's resolved flat params ({} when absent)."""
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {} if self.config_path.is_file() else {}

    @functools.cached_property
    def history(self) -> pd.DataFrame | None:
        return _read_csv(self.path / "history.csv")

    @property
    def mitigations(self) -> list[str]:
        """The shortcut mitigations the run trained with, in words (cmtlib.configs.switches_on)."""
        return switches_on(self.config)

    @functools.cached_property
    def threshold(self) -> dict[str, Any] | None:
        """threshold.json: the operating threshold chosen at training (cmtlib.metrics.operating.choose_thresholds)."""
        return read_json(self.path / "threshold.json")

    @functools.cached_property
    def indist(self) -> dict[str, np.ndarray] | None:
        """indist.npz: the in-distribution reference recorded at training, as plain arrays for
        cmtlib.indist.Reference.from_arrays (None when the run has none)."""
        import numpy as np

        path = self.path / "indist.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}

    @property
    def operating_threshold(self) -> float:
        """The COVID-19 operating threshold (NaN when the run has none)."""
        value = (self.threshold or {}).get("covid_threshold")
        return float("nan") if value is None else float(value)

    @property
    def finished(self) -> bool:
        """Training completed: run.json says so (written after the threshold was frozen)."""
        return self.info.status == "finished"

    def cache_dir(self, required: bool = True) -> Path | None:
        """The data cache the run was trained on (run.json `data_cache`), when it is on this machine."""
        path = self.info.data_cache
        if path and (Path(path) / "index.csv").is_file() and (Path(path) / "meta.json").is_file():
            return Path(path)
        if not required:
            return None
        raise MissingInputError(f"the data cache of {self.path} ({path or 'not recorded in run.json'}) is not on this machine; "
                                "run where the cache is, or rebuild it with the run's params (cmt train --params ... prepares it)")

    def load_model(self, which: str = "best", device: str = "cpu"):
        """(model in eval mode on `device`, checkpoint metadata): cmtlib.checkpoint.load_model."""
        from cmtlib.checkpoint import load_model  # torch and the model registry: not needed to read a run's files

        return load_model(self.weights(which), device)

    # ---- writing (the engine's side) ---------------------------------------------------------
    def write_info(self, info: RunInfo) -> None:
        write_json(self.path / "run.json", dataclasses.asdict(info))
        self.__dict__.pop("info", None)

    def update_info(self, **values: Any) -> None:
        self.write_info(dataclasses.replace(self.info, **values))

    def write_threshold(self, record: dict[str, Any]) -> None:
        """threshold.json, once per training (the engine's freeze step)."""
        write_json(self.path / "threshold.json", record)
        self.__dict__.pop("threshold", None)

    def write_indist(self, arrays: dict[str, np.ndarray]) -> None:
        """indist.npz, once per training (the engine's freeze step, beside threshold.json)."""
        import numpy as np

        with atomic_path(self.path / "indist.npz") as tmp:
            np.savez(tmp, **arrays)
        self.__dict__.pop("indist", None)

    def unfinished_start(self) -> bool:
        """True when the folder holds nothing but train.log: a start that failed before writing
        config.yaml, run.json or a checkpoint. A rerun may reuse such a folder; a folder holding
        anything else is a run or the user's, and stays as it is."""
        return self.path.is_dir() and [p.name for p in self.path.iterdir()] == [self.log_path.name]

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Refuse to overwrite a run silently; --overwrite replaces only a cmtlib run folder."""
        if resume and overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it; give one of them")
        if resume:
            if not self.config_path.is_file():
                raise MissingInputError(f"nothing to resume: {self.path} holds no run (no config.yaml); start the run without --resume")
            self.info  # noqa: B018 -- refuses a run of another format before anything is resumed
            return
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise RunFolderError(f"run folder {self.path} already exists; use --resume to continue it or --overwrite to replace it")
            if not any(p.exists() for p in (self.config_path, self.path / "run.json", self.path / "checkpoints")):
                raise RunFolderError(f"{self.path} is not a cmtlib run folder (no config.yaml, run.json or checkpoints/); remove or rename it yourself")
            shutil.rmtree(self.path)
            self.refresh()
        self.path.mkdir(parents=True, exist_ok=True)

    def check_resume(self, flat: dict[str, Any]) -> None:
        """Refuse to resume with parameters that change what is learned."""
        stored = self.config
        changed = sorted(k for k in set(stored) | set(flat) if stored.get(k) != flat.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            diffs = "; ".join(f"{k}: {stored.get(k)!r} -> {flat.get(k)!r}" for k in changed[:8])
            raise ConfigError(f"cannot resume {self.path} with different parameters ({diffs}); resume with the run's own config.yaml or start a new run")

    def check_made_with(self, params) -> None:
        """Refuse a run whose recorded config differs from params in a key that changes results."""
        config = self.config
        if not config:
            return
        not_model = {k for k, comp in key_owner().items() if comp in ("report", "experiments")}
        wanted = params.flat()
        differ = sorted(k for k in wanted.keys() & config.keys()
                        if k not in NOT_RESULT_KEYS | not_model and _norm(wanted[k]) != _norm(config[k]))
        if differ:
            detail = "; ".join(f"{k}: run has {config[k]!r}, params say {wanted[k]!r}" for k in differ[:8])
            raise RunMismatchError(f"{self.path} holds a run made with other parameters ({detail}). "
                                   "Use another run_dir, or delete that folder to retrain.")

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """history.csv and history.json, each written atomically."""
        import pandas as pd

        write_json(self.path / "history.json", history)
        write_csv(pd.DataFrame(history), self.path / "history.csv")
        self.__dict__.pop("history", None)

    def dump_config(self, params) -> None:
        dump_params(params, self.config_path)
        self.__dict__.pop("config", None)

    def logging(self, enabled: bool = True) -> RunLogging:
        return RunLogging(self.log_path, enabled)


class RunLogging:
    """train.log (appended on resume) and the console for the 'cmtlib' loggers, rank 0 only."""

    def __init__(self, log_path: Path, enabled: bool):
        self.logger, self.handlers = logging.getLogger("cmtlib"), []
        if enabled:
            fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
            self.handlers = [logging.FileHandler(log_path, mode="a", encoding="utf-8"), logging.StreamHandler()]
            for h in self.handlers:
                h.setFormatter(fmt)

    def __enter__(self):
        self.saved = (self.logger.level, self.logger.propagate)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = not self.handlers  # our own console handler replaces the root's
        for h in self.handlers:
            self.logger.addHandler(h)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.handlers:
            # The error reaches the console through the caller; train.log must say why the run
            # stopped too, or a folder left by a failed start reads as an unexplained empty log.
            record = self.logger.makeRecord(self.logger.name, logging.ERROR, __file__, 0, "stopped: %s: %s",
                                            (exc_type.__name__, exc), None)
            self.handlers[0].handle(record)
        for h in self.handlers:
            self.logger.removeHandler(h)
            h.close()
        self.logger.level, self.logger.propagate = self.saved
