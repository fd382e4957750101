"""A run folder and its one owner, `Run`: where a trained model lives.

    <run>/config.yaml        the resolved flat params (every key)
    <run>/run.json           what ran where: device, versions, data cache, status, the COVID threshold
    <run>/train.log          the log (appended on --resume)
    <run>/history.csv|json   one row per epoch
    <run>/checkpoints/{best,last}.pt
    <run>/predictions.csv, predictions_val.csv, metrics.json, embeddings.npy, embeddings_index.csv
    <run>/threshold.json     the COVID operating threshold and how it was chosen
    <run>/external/<name>/   evaluations of other manifests (never over the run's own results)

The engine writes a run (claim, logging, run.json); evaluation, prediction, the experiments and the
report pages read it through `Run`, never by path arithmetic of their own.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cmtlib.errors import ConfigError, MissingInputError, RunFolderError
from cmtlib.fileio import read_json, write_json
from cmtlib.params import key_owner

if TYPE_CHECKING:
    import pandas as pd

# Keys that may change between a run and its --resume (they do not change what is learned).
RESUMABLE_CHANGES = frozenset({"epochs", "device", "threads", "compile", "log_every", "eval_batch_size", "cache_dir", "reports_dir"})
# Keys that may differ between a finished run and the params asking for it without changing its
# results (where and how fast it ran); experiments and report keys are never compared either.
NOT_RESULT_KEYS = frozenset({"run_dir", "threads", "eval_batch_size", "device", "compile", "log_every", "cache_dir"})


class RunMismatchError(RunFolderError):
    """The folder holds a run made with other params; the message lists the keys that differ."""


def mitigations_of(config: dict[str, Any]) -> list[str]:
    """The shortcut mitigations (docs/shortcuts.md) a run's flat config switches on, in words; [] for none."""
    def on(key: str) -> bool:
        return config.get(key) in (True, "true", "True")

    out = []
    if on("lung_focus"):
        out.append("lung focus: the heads classify only the film's own lung region (the network's lung outline)")
    px = config.get("effective_px")
    if px not in (None, "", 0, "0"):
        out.append(f"acquisition harmonisation: every film brought to {px} px effective resolution")
    if on("balance_sources"):
        out.append(f"source-balanced sampling: every collection x COVID-19 label drawn equally often (cap {config.get('balance_cap')})")
    if on("covid_loss_within"):
        out.append("COVID-19 loss only on collections holding both labels")
    return out


def run_dir_for(params) -> Path:
    """`train.run_dir`, or runs/<run name> under the current folder."""
    return Path(params.train.run_dir or Path("runs") / params.run_name).resolve()


def with_run_dir(params, run_dir: str | Path):
    """A copy of params whose training writes into run_dir (absolute)."""
    train = dataclasses.replace(params.train, run_dir=str(Path(run_dir).resolve()))
    return dataclasses.replace(params, train=train)


def _norm(v: Any) -> str:
    return yaml.safe_dump(list(v) if isinstance(v, tuple) else v).strip()


class Run:
    """One run folder. Reading properties load their file on first use (None / {} when absent);
    `refresh()` forgets them after the folder changed."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """An existing run folder; MissingInputError saying how to make one otherwise."""
        run = cls(path)
        if not run.path.is_dir():
            raise MissingInputError(f"run folder not found: {run.path}; train it with `cmt train --params ...`")
        return run

    def refresh(self) -> Run:
        for name in ("info", "config", "history", "metrics", "predictions", "threshold"):
            self.__dict__.pop(name, None)
        return self

    # ---- paths -------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint(self, which: str = "best") -> Path:
        if which not in ("best", "last"):
            raise ValueError(f"which must be 'best' or 'last', got {which!r}")
        return self.path / "checkpoints" / f"{which}.pt"

    @property
    def embeddings_path(self) -> Path:
        return self.path / "embeddings.npy"

    def external_dir(self, manifest: str | Path) -> Path:
        """Where an evaluation of another manifest goes: external/<manifest stem>/."""
        return self.path / "external" / Path(manifest).stem

    # ---- reading -----------------------------------------------------------------------------
    @functools.cached_property
    def info(self) -> dict[str, Any]:
        return read_json(self.file("run.json"), {}) or {}

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """config.yaml as one flat dict ({} when absent)."""
        path = self.file("config.yaml")
        if not path.is_file():
            return {}
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        flat: dict[str, Any] = {}
        for k, v in raw.items():  # config.yaml is flat; a nested (per-component) one is flattened
            if isinstance(v, dict):
                flat.update(v)
            else:
                flat[k] = v
        return flat

    @functools.cached_property
    def history(self) -> pd.DataFrame | None:
        return self.read_csv("history.csv")

    @functools.cached_property
    def metrics(self) -> dict[str, Any] | None:
        return read_json(self.file("metrics.json"))

    @functools.cached_property
    def predictions(self) -> pd.DataFrame | None:
        return self.read_csv("predictions.csv")

    @property
    def mitigations(self) -> list[str]:
        """mitigations_of(config.yaml), derived from the cached config."""
        return mitigations_of(self.config)

    @functools.cached_property
    def threshold(self) -> dict[str, Any] | None:
        return read_json(self.file("threshold.json"))

    def read_csv(self, name: str) -> pd.DataFrame | None:
        import pandas as pd  # here, not at the top: `cmt predict` reads no CSV and starts faster without pandas

        path = self.file(name)
        return pd.read_csv(path, dtype={"image_id": str, "patient_id": str}) if path.is_file() else None

    def info_value(self, *names: str, default: Any = None) -> Any:
        return info_value(self.info, *names, default=default)

    @property
    def finished(self) -> bool:
        """Training completed: run.json says so, or history reaches the configured epochs."""
        if self.info.get("status") == "finished":
            return True
        epochs, history = self.config.get("epochs"), self.history
        if history is not None and epochs and "epoch" in history.columns and len(history):
            return int(history["epoch"].max()) >= int(epochs)
        return False

    @property
    def evaluated(self) -> bool:
        return self.metrics is not None

    def cache_dir(self, required: bool = True) -> Path | None:
        """The data cache the run was trained on (run.json `data_cache`), when it is on this machine."""
        path = self.info.get("data_cache") or ""
        if path and (Path(path) / "index.csv").is_file() and (Path(path) / "meta.json").is_file():
            return Path(path)
        if not required:
            return None
        raise MissingInputError(f"the data cache of {self.path} ({path or 'not recorded in run.json'}) is not on this machine; "
                                "run where the cache is, or rebuild it with the run's params (cmt train --params ... prepares it)")

    def load_model(self, which: str = "best", device: str = "cpu"):
        """(model in eval mode on `device`, checkpoint metadata): cmtlib.checkpoint.load_model."""
        from cmtlib.checkpoint import load_model  # torch and the model registry: not needed to read a run's files

        return load_model(self.path, which, device)

    # ---- writing (the engine's side) ---------------------------------------------------------
    def write_info(self, info: dict[str, Any]) -> None:
        write_json(self.file("run.json"), info)
        self.__dict__.pop("info", None)

    def update_info(self, **values: Any) -> None:
        self.write_info({**self.info, **values})

    def unfinished_start(self) -> bool:
        """True when the folder holds nothing but train.log: a start that failed before writing
        config.yaml, run.json or a checkpoint. A rerun may reuse such a folder; a folder holding
        anything else is a run or the user's, and stays as it is."""
        return self.path.is_dir() and [p.name for p in self.path.iterdir()] == ["train.log"]

    def claim(self, resume: bool, overwrite: bool) -> None:
        """Refuse to overwrite a run silently; --overwrite replaces only a cmtlib run folder."""
        if resume and overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it; give one of them")
        if resume:
            if not self.file("config.yaml").is_file():
                raise MissingInputError(f"nothing to resume: {self.path} holds no run (no config.yaml); start the run without --resume")
            return
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise RunFolderError(f"run folder {self.path} already exists; use --resume to continue it or --overwrite to replace it")
            if not any(self.file(name).exists() for name in ("config.yaml", "run.json", "checkpoints")):
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

    def logging(self, enabled: bool = True) -> RunLogging:
        return RunLogging(self.path, enabled)


def info_value(info: dict[str, Any] | None, *names: str, default: Any = None) -> Any:
    """The first of `names` found in `info` or in any dict nested in it (run.json's layout is the
    engine's; readers only need the values)."""
    if not isinstance(info, dict):
        return default
    for name in names:
        if name in info and info[name] not in (None, ""):
            return info[name]
    for value in info.values():
        if isinstance(value, dict):
            found = info_value(value, *names)
            if found is not None:
                return found
    return default


class RunLogging:
    """train.log (appended on resume) and the console for the 'cmtlib' loggers, rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.logger, self.handlers = logging.getLogger("cmtlib"), []
        if enabled:
            fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
            self.handlers = [logging.FileHandler(run_dir / "train.log", mode="a", encoding="utf-8"), logging.StreamHandler()]
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
