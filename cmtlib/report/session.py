"""What a notebook needs from a run, produced on demand so every notebook works standalone.

`ensure_run(params, run_dir)` returns the run's artefacts, training and evaluating it first when
`run_dir` holds no finished run (a researcher opening 05_overlays.ipynb in JupyterLab with the
smoke defaults gets a result, not a FileNotFoundError). In the report chain 02_training is the
notebook that trains; the later ones find the run done. `ensure_data(params)` does the same for
the prepared data (import, split, cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cmtlib.errors import CmtError, MissingInputError
from cmtlib.fileio import write_json
from cmtlib.params import Params, key_owner

# Keys that may differ between a finished run and the params asking for it without changing its
# results (where and how fast it ran); the report's own keys are never compared either.
_NOT_RESULT_KEYS = frozenset({"run_dir", "threads", "eval_batch_size", "device", "compile", "log_every", "cache_dir"})


class RunMismatchError(CmtError, ValueError):
    """run_dir holds a run made with other params; the message lists the keys that differ."""


@dataclass
class DataArtefacts:
    """A prepared data cache (docs/CONTRACTS.md, Cache folder) and what the data page shows."""

    cache_dir: Path
    index: pd.DataFrame
    meta: dict[str, Any]
    manifest_path: Path | None = None
    quarantine: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["image_id", "path", "reason"]))
    duplicates: pd.DataFrame | None = None

    @property
    def manifest_hash(self) -> str:
        return str(self.meta.get("manifest_hash", ""))

    def arrays(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, lung, disease) uint8 arrays (N, S, S) for the given cache rows."""
        out = []
        for name in ("images", "lung", "disease"):
            arr = np.load(self.cache_dir / f"{name}.npy", mmap_mode="r")
            out.append(np.asarray(arr[rows]))
        return out[0], out[1], out[2]


@dataclass
class RunArtefacts:
    """A trained (and, when metrics exist, evaluated) run folder, loaded."""

    run_dir: Path
    info: dict[str, Any]
    config: dict[str, Any]
    history: pd.DataFrame | None = None
    metrics: dict[str, Any] | None = None
    predictions: pd.DataFrame | None = None
    threshold: dict[str, Any] | None = None

    @property
    def embeddings_path(self) -> Path:
        return self.run_dir / "embeddings.npy"

    def info_value(self, *names: str, default: Any = None) -> Any:
        return info_value(self.info, *names, default=default)


def info_value(info: dict[str, Any] | None, *names: str, default: Any = None) -> Any:
    """The first of `names` found in `info` or in any dict nested in it (run.json's layout is the
    engine's; the report only needs the values)."""
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


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, dtype={"image_id": str, "patient_id": str}) if path.is_file() else None


def _flat_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    flat: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    return flat


def load_run(run_dir: str | Path) -> RunArtefacts:
    """Load whatever the run folder holds (missing artefacts are None)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingInputError(f"run folder not found: {run_dir}; train it with `cmt train --params ...` or call ensure_run(params, run_dir)")
    return RunArtefacts(
        run_dir=run_dir,
        info=_read_json(run_dir / "run.json") or {},
        config=_flat_config(run_dir / "config.yaml"),
        history=_read_csv(run_dir / "history.csv"),
        metrics=_read_json(run_dir / "metrics.json"),
        predictions=_read_csv(run_dir / "predictions.csv"),
        threshold=_read_json(run_dir / "threshold.json"),
    )


def with_run_dir(params: Params, run_dir: str | Path) -> Params:
    """A copy of params whose training writes into run_dir (absolute)."""
    train = dataclasses.replace(params.train, run_dir=str(Path(run_dir).resolve()))
    return dataclasses.replace(params, train=train)


def check_same_params(params: Params, config: dict[str, Any], run_dir: Path) -> None:
    """Refuse a run folder whose recorded config differs from params in a key that changes results."""
    if not config:
        return
    report_keys = {k for k, comp in key_owner().items() if comp == "report"}
    wanted = params.flat()
    differ = sorted(k for k in wanted.keys() & config.keys()
                    if k not in _NOT_RESULT_KEYS | report_keys and _norm(wanted[k]) != _norm(config[k]))
    if differ:
        detail = "; ".join(f"{k}: run has {config[k]!r}, params say {wanted[k]!r}" for k in differ[:8])
        raise RunMismatchError(f"{run_dir} holds a run made with other parameters ({detail}). "
                               "Use another run_dir, or delete that folder to retrain.")


def _norm(v: Any) -> str:
    return yaml.safe_dump(list(v) if isinstance(v, tuple) else v).strip()


def engine_functions():
    """(train, evaluate_run) from the engine; RuntimeError saying which piece is missing."""
    try:
        from cmtlib.engine import train
        from cmtlib.evaluate import evaluate_run
    except ImportError as err:
        raise RuntimeError(f"the training engine is not available ({err}); cmtlib.engine.train and "
                           "cmtlib.evaluate.evaluate_run are needed to make a run") from err
    return train, evaluate_run


def quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call fn with its console output (progress bars, log lines) kept off the report page; the
    run keeps its own train.log. On failure the last lines are printed, then the error raised."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            return fn(*args, **kwargs)
    except BaseException:
        print("\n".join(buf.getvalue().splitlines()[-30:]), file=sys.stderr)
        raise


def ensure_run(params: Params, run_dir: str | Path, evaluate: bool = True, quiet: bool = True) -> RunArtefacts:
    """The run in run_dir, trained (resuming an interrupted one) and evaluated first if needed.

    quiet keeps training's progress output off the page (see `quietly`).
    Raises RunMismatchError when run_dir holds a run made with other parameters.
    """
    run_dir = Path(run_dir).resolve()
    params = with_run_dir(params, run_dir)
    existing = load_run(run_dir) if run_dir.is_dir() else None
    if existing is not None:
        check_same_params(params, existing.config, run_dir)
        if existing.metrics is not None or (not evaluate and _finished(existing)):
            return existing
    train, evaluate_run = engine_functions()
    call = quietly if quiet else (lambda fn, *a, **kw: fn(*a, **kw))
    t0 = time.perf_counter()
    if existing is None or not _finished(existing):
        resume = (run_dir / "config.yaml").is_file()
        print(f"{'resuming' if resume else 'training'} the run (minutes on a CPU) ...", flush=True)
        call(train, params, resume=resume, overwrite=False)
    if evaluate:
        call(evaluate_run, run_dir)
    print(f"run ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return load_run(run_dir)


def _finished(run: RunArtefacts) -> bool:
    """Training completed: run.json says so (the engine's status), or history reaches the epochs."""
    if run.info.get("status") == "finished":
        return True
    epochs = run.config.get("epochs")
    if run.history is not None and epochs and "epoch" in run.history.columns and len(run.history):
        return int(run.history["epoch"].max()) >= int(epochs)
    return False


def load_data(cache_dir: str | Path) -> DataArtefacts:
    """A cache folder with its manifest's quarantine and duplicate evidence (when beside it)."""
    cache_dir = Path(cache_dir)
    index_path = cache_dir / "index.csv"
    if not index_path.is_file():
        raise MissingInputError(f"{cache_dir} is not a data cache (no index.csv); build one with `cmt data cache`")
    from cmtlib.data.manifest import quarantine_path, read_manifest, read_quarantine

    index = read_manifest(index_path)
    meta = _read_json(cache_dir / "meta.json") or {}
    manifest = Path(meta["manifest"]) if meta.get("manifest") else None
    frames = [read_quarantine(cache_dir / "quarantine.csv")]
    duplicates = None
    if manifest is not None:
        # Unreadable images are quarantined beside the manifest that listed them: the split
        # manifest, or the imported / synthetic one in a sub-folder (cmtlib/data/prepare.py), or
        # the per-collection imports a user joined into this manifest. Another import's file in the
        # same folder may hold collections this data set does not use: only the collections its own
        # image ids name (their source prefix) count.
        prefixes = set(index["image_id"].astype(str).str.partition(":")[0]) if "image_id" in index.columns else set()
        for q in sorted({quarantine_path(manifest), *manifest.parent.glob("*.quarantine.csv"), *manifest.parent.glob("*/*.quarantine.csv")}):
            frames.append(_of_collections(read_quarantine(q), prefixes))
        dup_path = manifest.with_name(f"{manifest.stem}.duplicates.csv")
        duplicates = pd.read_csv(dup_path, dtype=str, keep_default_na=False) if dup_path.is_file() else None
    quarantine = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    return DataArtefacts(cache_dir, index, meta, manifest, quarantine.drop_duplicates(subset=["image_id", "reason"]), duplicates)


def _of_collections(quarantine: pd.DataFrame, prefixes: set[str]) -> pd.DataFrame:
    """Quarantine rows whose image_id prefix ("nih" of "nih:000..") is one of `prefixes` (all rows
    when `prefixes` is empty or an id has no prefix)."""
    if not prefixes or quarantine.empty:
        return quarantine
    prefix = quarantine["image_id"].astype(str).str.partition(":")
    return quarantine[(prefix[1] == "") | prefix[0].isin(prefixes)]


def ensure_data(params: Params) -> DataArtefacts:
    """Import, split and cache the params' data when needed (cmtlib.data.prepare), then load it."""
    try:
        from cmtlib.data.prepare import prepare_data
    except ImportError as err:
        raise RuntimeError(f"data preparation is not available ({err}); cmtlib.data.prepare.prepare_data is needed") from err
    return load_data(prepare_data(params))


def record_facts(report_dir: str | Path, **facts: Any) -> None:
    """Merge facts (quarantine count, manifest hash, ...) into <report_dir>/facts.json for the index.
    Returns None so that a notebook cell ending with it shows nothing."""
    path = Path(report_dir) / "facts.json"
    current = _read_json(path) or {}
    current.update(facts)
    write_json(path, current)


def read_facts(report_dir: str | Path) -> dict[str, Any]:
    return _read_json(Path(report_dir) / "facts.json") or {}
